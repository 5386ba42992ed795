"""PostgreSQL goes away under ``run expiry`` and ``run dispatcher`` and comes back.

Real processes on a private cluster (the embedded queue, so the dispatcher's broker is
the same database): reservations fall due and outbox rows wait while the server is
stopped; once it is back, without a restart, each reservation is expired once (the
audit is clean, the stock is back) and every row is SENT. Meanwhile neither loop logs
a traceback per try: each says ``*.database_unavailable`` once per try, with growing
pauses, and expiry says when the database is back (D-433).
(tests/faults/test_database_outage.py covers a consumer in-process; ``up``'s embedded
restart is covered by its own tests.)
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.audit import audit
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.faults.servers import PrivatePostgres
from tests.support import base_config, free_port

pytestmark = pytest.mark.slow

OUTAGE_S = 6.0  # the server away: 30 sweeps at the interval below
INTERVAL_MS = 200
ORDERS = 3
# Tries during the outage with pauses of 0.5 s doubling: five or so (it was one sweep,
# and one traceback, every interval: about 30).
TRIES_AT_MOST = 8


def events(child: Child, name: str) -> list[dict[str, object]]:
    found = []
    for line in child.log_path.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if doc.get("event") == name:
            found.append(doc)
    return found


@pytest.fixture
def cfg(private_pg: PrivatePostgres) -> dict[str, object]:
    return base_config(
        private_pg.url,
        database={"pool_size": 3},
        broker={"poll_ms": 200},
        reservations={"expiry_interval_ms": INTERVAL_MS},
        logging={"level": "info"},
    )


@pytest.fixture
async def container(cfg: dict[str, object]) -> AsyncIterator[Container]:
    c = await build(Settings.model_validate(cfg))
    yield c
    await c.close()


async def test_expiry_and_dispatcher_wait_out_a_database_outage_quietly(
    private_pg: PrivatePostgres, cfg: dict[str, object], container: Container, tmp_path: Path
) -> None:
    c = container
    await c.stock.receive(Receipt("LAMP", 10, "rcpt-1"))
    with Children(tmp_path) as children:
        expiry = children._start(Child(["run", "expiry"], cfg, tmp_path, label="expiry"))
        dispatcher = children.dispatcher(cfg)

        async def started() -> bool:
            return expiry.logged("expiry.started") and dispatcher.logged("dispatcher.started")

        await wait_until(started, timeout=30, what="both started", children=children)
        # Due in the middle of the outage: expired once it is over.
        for i in range(ORDERS):
            await c.reservations.reserve(
                ReserveRequest(f"order-{i}", (OrderLine("LAMP", 2),), ttl_seconds=2)
            )

        await asyncio.to_thread(private_pg.stop)
        await asyncio.sleep(OUTAGE_S)  # the outage itself: both loops must ride it out
        children.check_alive()
        await asyncio.to_thread(private_pg.start)

        async def all_expired() -> bool:
            try:
                views = [await c.reservations.get(f"order-{i}") for i in range(ORDERS)]
            except Exception:
                return False  # the test's own pool is still reconnecting
            return all(v.status.value == "EXPIRED" for v in views)

        async def all_sent() -> bool:
            try:
                left = await c.pool.fetchval(
                    "SELECT count(*) FROM domain_event WHERE status <> 'SENT'"
                )
            except Exception:
                return False
            return left == 0

        await wait_until(
            all_expired, timeout=40, what="every reservation expired", children=children
        )
        await wait_until(all_sent, timeout=40, what="every outbox row SENT", children=children)
        children.check_alive()

    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()
    stock = await c.pool.fetchrow(
        "SELECT sum(on_hand) AS on_hand, sum(reserved) AS reserved FROM sku_batch "
        "WHERE sku = 'LAMP'"
    )
    assert (stock["on_hand"], stock["reserved"]) == (10, 0)
    expired = await c.pool.fetchval(
        "SELECT count(*) FROM inventory_ledger WHERE entry_type = 'ORDER_EXPIRE'"
    )
    assert expired == ORDERS  # once each

    assert not events(expiry, "expiry.failed"), expiry.log_tail()
    waits = events(expiry, "expiry.database_unavailable")
    assert 1 <= len(waits) <= TRIES_AT_MOST, expiry.log_tail()
    assert events(expiry, "expiry.database_back"), expiry.log_tail()
    assert not events(dispatcher, "dispatcher.error"), dispatcher.log_tail()
    assert events(dispatcher, "dispatcher.database_unavailable"), dispatcher.log_tail()


async def test_the_wms_workers_wait_out_a_database_outage_quietly(
    private_pg: PrivatePostgres, cfg: dict[str, object], tmp_path: Path
) -> None:
    """``run wms-outbound`` and ``run wms-sync`` with a WMS configured: their loops went
    round every second, each round a traceback while the server was away."""
    cfg = {
        **cfg,
        "connectors": [
            {
                "id": "wms-main",
                "type": "wms",
                "url": f"http://127.0.0.1:{free_port()}",  # never called: nothing is due
                "token_env": "FAULT_TOKEN",
                "incremental_interval_s": 1,
            }
        ],
    }
    env = {"FAULT_TOKEN": "t"}
    with Children(tmp_path) as children:
        outbound, sync = (
            children._start(Child(["run", s], cfg, tmp_path, label=s, extra_env=env))
            for s in ("wms-outbound", "wms-sync")
        )

        async def started() -> bool:
            return outbound.logged("wms_outbound.started") and sync.logged("wms_sync.started")

        await wait_until(started, timeout=30, what="both started", children=children)
        await asyncio.sleep(1.0)  # a round or two of each with the database there

        await asyncio.to_thread(private_pg.stop)
        await asyncio.sleep(OUTAGE_S)  # the outage itself
        children.check_alive()
        await asyncio.to_thread(private_pg.start)

        async def both_back() -> bool:
            return outbound.logged("wms_outbound.database_back") and sync.logged(
                "wms_sync.database_back"
            )

        await wait_until(both_back, timeout=40, what="both back", children=children)
        children.check_alive()

    for child, failed in (
        (outbound, ["wms_outbound.flush_failed"]),
        (sync, ["wms_sync.loop_failed", "wms_sync.schedule_failed"]),
    ):
        for name in failed:
            assert not events(child, name), child.log_tail()
    assert 1 <= len(events(outbound, "wms_outbound.database_unavailable")) <= TRIES_AT_MOST
    assert 1 <= len(events(sync, "wms_sync.database_unavailable")) <= TRIES_AT_MOST
    # Their consumers, on the embedded queue: a line per poll (every 200 ms here) before.
    for child in (outbound, sync):
        assert not events(child, "pgqueue.claim_failed"), child.log_tail()
        assert len(events(child, "pgqueue.database_unavailable")) <= TRIES_AT_MOST
