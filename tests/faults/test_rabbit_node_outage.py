"""The RabbitMQ node goes away under running processes and comes back.

Real ``stockkeeper run dispatcher`` and ``stockkeeper consume`` processes on a
PostgreSQL and a RabbitMQ node of the test's own. The node is stopped (a shutdown: the
clients get Connection.Close) or killed with SIGKILL (their sockets reset), outbox rows
are written while it is away, then it is started again. Without a restart of either
process, every event reaches the consumer once, in sequence per SKU; neither process
exits; and while the broker is away the dispatcher does not sit on an open transaction
holding its claimed rows (D-434): it rolls back and waits the outage out. An admin's
replay of a dead letter meanwhile is 503 ``unavailable`` with ``Retry-After`` at once
(it waited for the broker, the request hanging and the row locked), and goes through
once the node is back.
(tests/e2e/test_messaging_crash.py closes the connections from the broker's side, with
the node up; this is the node itself going down.)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from stockkeeper.store import dead_letters
from tests.e2e.messaging_helpers import (
    Child,
    Children,
    add_level_changes,
    assert_exactly_once,
    create_effect_table,
    create_skus,
    effect_count,
    level_changed_ids,
    outbox_status,
    wait_until,
)
from tests.faults.servers import PrivatePostgres, PrivateRabbit
from tests.support import ADMIN_TOKEN, base_config, free_port

pytestmark = pytest.mark.slow

SKUS = [f"SKU-{i}" for i in range(8)]
OUTAGE_S = 12.0  # the node away: longer than every pause the processes could hide in
# The longest the dispatcher may keep a transaction open while the node is away (it was
# the whole outage): a batch whose confirms were outstanding when the node went.
HELD_AT_MOST_S = 5.0
# aio-pika's and aiormq's lines in one process over the outage: a few when it starts
# (it was three a second per connection for as long as it lasted, D-436).
CHATTER_AT_MOST = 10
CHATTY = ("aiormq.connection", "aio_pika.robust_connection")
# From the node answering again to the last event applied.
RESUMED_WITHIN_S = 8.0


def library_lines(child: Child) -> int:
    """Lines the RabbitMQ client libraries logged in ``child``."""
    n = 0
    for line in child.log_path.read_text(errors="replace").splitlines():
        try:
            n += json.loads(line).get("logger") in CHATTY
        except ValueError:
            continue
    return n


@pytest.fixture
async def db(private_pg: PrivatePostgres) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(private_pg.url, server_settings={"application_name": "test"})
    try:
        await create_effect_table(conn)
        await create_skus(conn, SKUS)
        yield conn
    finally:
        await conn.close()


async def longest_open_transaction(db: asyncpg.Connection) -> float:
    """Seconds the oldest open transaction of a stockkeeper process has been open."""
    age = await db.fetchval(
        "SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0)::float8 "
        "FROM pg_stat_activity WHERE application_name = 'stockkeeper' "
        "AND xact_start IS NOT NULL"
    )
    return float(age)


async def in_sequence_per_sku(db: asyncpg.Connection) -> list[asyncpg.Record]:
    """Effects that came after a later event of their SKU."""
    rows: list[asyncpg.Record] = await db.fetch(
        "SELECT sku, sequence, previous FROM ("
        " SELECT sku, sequence, lag(sequence) OVER (PARTITION BY sku ORDER BY id) AS previous"
        " FROM test_effect) e WHERE previous IS NOT NULL AND sequence <= previous"
    )
    return rows


@pytest.mark.parametrize("how", ["stopped", "killed"])
async def test_dispatcher_and_consumer_resume_after_the_node_comes_back(
    how: str,
    private_rabbit: PrivateRabbit,
    private_pg: PrivatePostgres,
    db: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    prefix = f"{how}{int(time.time() * 1000) % 10**8}."
    cfg = base_config(
        private_pg.url,
        database={"pool_size": 4},
        broker={"url": private_rabbit.url, "prefix": prefix},
        dispatcher={"poll_interval_ms": 200},
        logging={"level": "info"},
    )
    admin_port = free_port()
    cfg["api"] = {**cfg["api"], "admin_port": admin_port}
    letter = await dead_letters.record(
        db, queue="wms.outbound", message_id=None, routing_key="inventory.allocated",
        body=b"{}", headers={}, error="a test's", attempts=1,
    )  # fmt: skip
    rng = random.Random(how)
    with Children(tmp_path) as children:
        dispatcher = children.dispatcher(cfg)
        consumer = children.consumer(cfg, name="outage")
        admin = children._start(Child(["run", "admin-api"], cfg, tmp_path, label="admin"))
        api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{admin_port}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=15,
        )
        replay = f"/admin/dead-letters/{letter}/replay"
        written = await add_level_changes(db, rng.choices(SKUS, k=40), rng)

        async def all_applied() -> bool:
            return await effect_count(db) >= written

        await wait_until(all_applied, timeout=45, what="the events before", children=children)

        async def admin_ready() -> bool:  # it connects the broker before it serves
            try:
                return (await api.get("/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_until(admin_ready, timeout=45, what="the admin API", children=children)

        await asyncio.to_thread(private_rabbit.stop if how == "stopped" else private_rabbit.kill)
        held = 0.0
        away_since = time.monotonic()
        while time.monotonic() - away_since < OUTAGE_S:  # the outage: rows keep coming
            written += await add_level_changes(db, rng.choices(SKUS, k=5), rng)
            held = max(held, await longest_open_transaction(db))
            children.check_alive()
            await asyncio.sleep(0.5)
        assert held <= HELD_AT_MOST_S, f"a transaction stayed open {held:.1f}s, node away"
        started = time.monotonic()
        refused = await api.post(replay)
        assert refused.status_code == 503, refused.text
        assert refused.json()["type"].endswith("unavailable")
        assert refused.headers["retry-after"]
        assert time.monotonic() - started < HELD_AT_MOST_S
        assert (await outbox_status(db)).get("PENDING"), "the outage left nothing to send"
        assert dispatcher.logged("dispatcher.broker_unavailable")
        await asyncio.to_thread(private_rabbit.start)
        back = time.monotonic()

        await wait_until(all_applied, timeout=45, what="the events after", children=children)
        # The dispatcher tried again once the broker said it was back, not at the end
        # of its backoff's pause (the next try was 10 s or more away by then).
        assert time.monotonic() - back < RESUMED_WITHIN_S, children.logs()

        async def admin_reconnected() -> bool:  # its own connection, back on its own
            return admin.logged("rabbitmq.reconnected")

        await wait_until(admin_reconnected, timeout=30, what="the admin's reconnection")
        replayed = await api.post(replay)
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["status"] == "REPLAYED"
        await api.aclose()
        await wait_until(
            lambda: _all_sent(db), timeout=15, what="every row SENT", children=children
        )
        children.check_alive()
        for child in (dispatcher, consumer, admin):
            assert child.logged("rabbitmq.connection_lost"), child.log_tail()
            assert child.logged("rabbitmq.reconnected"), child.log_tail()
            assert library_lines(child) <= CHATTER_AT_MOST, child.log_tail()

    await assert_exactly_once(db, await level_changed_ids(db))
    assert not await in_sequence_per_sku(db)


async def _all_sent(db: asyncpg.Connection) -> bool:
    return set(await outbox_status(db)) == {"SENT"}
