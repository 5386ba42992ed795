"""Issue 14.9: LISTEN connections come back.

On a private PostgreSQL, with polls far longer than the test waits (so only NOTIFY can
be quick): measure the commit-to-consumer lag through the dispatcher and the embedded
queue, ``pg_terminate_backend`` every stockkeeper backend (the LISTEN connections of the
dispatcher, the embedded queue and the propagator among them), and show each listener
reconnects (``stockkeeper_listener_reconnects_total``) and the lag is back where it was.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.events import Event
from stockkeeper.messaging.consumer import Consumer
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.store import outbox
from stockkeeper.store.pool import Conn
from stockkeeper.workers.dispatcher import Dispatcher
from stockkeeper.workers.propagator import Propagator
from tests.faults.conftest import eventually
from tests.faults.servers import PrivatePostgres
from tests.support import base_config

pytestmark = pytest.mark.slow

POLL_MS = 60_000  # a fallback poll the test never waits for: only NOTIFY is quick
QUICK_S = 2.0  # what "NOTIFY works" looks like; a poll-only path would take a minute
LISTENERS = ("dispatcher", "pgqueue", "propagator")


@pytest.fixture
async def container(private_pg: PrivatePostgres) -> AsyncIterator[Container]:
    cfg = base_config(private_pg.url, broker={"poll_ms": POLL_MS})
    cfg["database"]["pool_size"] = 6
    c = await build(Settings.model_validate(cfg))
    yield c
    await c.close()


class Arrivals:
    """When each marked event reached the consumer."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def handle(self, _conn: Conn, env: Envelope) -> None:
        self.at[str(env.payload["marker"])] = time.monotonic()


async def lag(c: Container, arrivals: Arrivals) -> float:
    """Seconds from the commit of one event to its consumer."""
    marker = uuid.uuid4().hex
    async with c.pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, [Event("inventory.allocated", {"marker": marker})])
    committed = time.monotonic()
    await eventually(lambda: marker in arrivals.at, timeout=QUICK_S * 3, what="the event")
    return arrivals.at[marker] - committed


def reconnects(c: Container, listener: str) -> float:
    value = c.metrics.registry.get_sample_value(
        "stockkeeper_listener_reconnects_total", {"listener": listener}
    )
    return value or 0.0


async def test_lag_returns_after_the_listen_backends_are_terminated(
    private_pg: PrivatePostgres, container: Container
) -> None:
    c = container
    arrivals = Arrivals()
    broker = await c.connected_broker()
    dispatcher = Dispatcher(c.pool, broker, c.metrics, poll_ms=POLL_MS)
    propagator = Propagator(c.propagation, {}, c.pool)
    consumer = Consumer("lag", "wms.outbound", arrivals.handle, pool=c.pool, broker=broker,
                        metrics=c.metrics)  # fmt: skip
    stop = asyncio.Event()
    loops = [asyncio.ensure_future(w.run(stop)) for w in (dispatcher, propagator)]
    sub = await consumer.start(prefetch=4)
    try:
        before = [await lag(c, arrivals) for _ in range(3)]
        assert max(before) < QUICK_S

        admin = await asyncpg.connect(private_pg.url, server_settings={"application_name": "t"})
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'stockkeeper' AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        assert killed >= len(LISTENERS)

        # Each listener notices on its next health check (every 5 s) and comes back.
        for name in LISTENERS:
            await eventually(lambda n=name: reconnects(c, n) >= 1, timeout=20, what=name)

        after = [await lag(c, arrivals) for _ in range(3)]
        assert max(after) < QUICK_S, (before, after)
    finally:
        await sub.cancel()
        stop.set()
        await asyncio.gather(*loops)
