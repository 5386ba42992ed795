"""Through a real PgBouncer in transaction mode (``database.pgbouncer``): the reserve path
and the dispatcher work with two server connections shared by every transaction, and
the dispatcher's LISTEN, on ``database.direct_url``, still wakes it on commit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.wiring import connections
from stockkeeper.workers.dispatcher import Dispatcher
from tests.integration.test_broker_contract import eventually
from tests.support import REQUIRE, base_config, pgbouncer_binary, running_pgbouncer

ORDERS = 40


@pytest.fixture
def bouncer_url(db_url: str) -> Iterator[str]:
    """``db_url`` through a private PgBouncer (transaction mode, 2 server connections)."""
    if pgbouncer_binary() is None:
        if REQUIRE:
            pytest.fail("pgbouncer is required in CI (apt-get install -y pgbouncer)")
        pytest.skip("pgbouncer is not installed")
    with running_pgbouncer(db_url, pool_size=2) as url:
        yield url


@pytest.fixture
async def bounced(bouncer_url: str, db_url: str) -> AsyncIterator[Container]:
    cfg = base_config(
        bouncer_url,
        database={"pgbouncer": True, "direct_url": db_url, "pool_size": 6},
        # The embedded queue: its LISTEN and its inserts ride the same two pools.
        broker={"poll_ms": 60_000},
    )
    settings = Settings.model_validate(cfg)
    c = await build(settings, needs=connections(settings, ["dispatcher"]))
    yield c
    await c.close()


async def server_backends(c: Container) -> int:
    """Server connections to the test database, besides the one asking."""
    async with c.session_pool.acquire() as conn:
        n: int = await conn.fetchval(
            """SELECT count(*) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()"""
        )
    return n


async def all_sent(c: Container) -> bool:
    async with c.pool.acquire() as conn:
        statuses = {r["status"] for r in await conn.fetch("SELECT status FROM domain_event")}
    return statuses == {"SENT"}


async def test_reserve_and_dispatch_through_pgbouncer(bounced: Container) -> None:
    c = bounced
    assert c.session_pool is not c.pool
    await c.stock.receive(Receipt("MILK", ORDERS + 1, "r-1"))
    # More transactions in flight than PgBouncer has server connections: a statement may
    # run on a server connection where another client prepared (or not) its statements.
    views = await asyncio.gather(
        *(
            c.reservations.reserve(ReserveRequest(f"order-{i}", (OrderLine("MILK", 1),)))
            for i in range(ORDERS)
        )
    )
    assert all(v.created for v in views)
    async with c.pool.acquire() as conn:
        held = await conn.fetchval("SELECT count(*) FROM reservation")
    assert held == ORDERS

    # It polls once a minute: only a NOTIFY, heard on its direct LISTEN, wakes it in time.
    broker = await c.connected_broker()
    d = Dispatcher(c.pool, broker, c.metrics, poll_ms=60_000, listen_pool=c.session_pool)
    stop = asyncio.Event()
    worker = asyncio.ensure_future(d.run(stop))
    try:
        await eventually(lambda: all_sent(c), what="the backlog published", timeout=15)
        # A commit once the dispatcher is idle: NOTIFY through PgBouncer, LISTEN direct.
        await c.reservations.reserve(ReserveRequest("late", (OrderLine("MILK", 1),)))
        await eventually(lambda: all_sent(c), what="woken by the commit's NOTIFY", timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(worker, 10)
    # PgBouncer's two server connections, and the two direct LISTENs (dispatcher, queue).
    assert await server_backends(c) <= 4
