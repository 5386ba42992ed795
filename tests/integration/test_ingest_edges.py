"""Ingest edges from an outside review (D-484): a price that does not fit after the
markup is left out without failing its message, and a webhook connector's
``records_per_message`` holds as a poller's does."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import build
from stockkeeper.config import Settings
from stockkeeper.connectors.signatures import generic_headers
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import InsufficientStock
from stockkeeper.services.audit import audit
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Adjustment, Receipt
from tests.integration.test_ingest import T0, deliver, ingesting, level, on_hand, sale
from tests.support import auth

__all__ = ["ingesting"]  # the fixture, used by name

SECRET = b"whsec-0123456789"


async def test_a_price_too_big_after_the_markup_is_left_out_and_the_rest_applied(
    ingesting: Any,
) -> None:
    c = ingesting  # erp-main: markup 25 %, round to 0.05
    good = level("GOOD", 5, T0, price="10.00")
    pricey = level("PRICEY", 1, T0, price="9000000000.00")  # fits; 25 % more does not
    await deliver(c, "erp-main", levels=[good, pricey])
    assert (await on_hand(c, "GOOD")).on_hand == 5
    assert (await on_hand(c, "PRICEY")).on_hand == 1
    async with c.pool.acquire() as conn:
        prices = dict(await conn.fetch("SELECT sku, price FROM sku_price ORDER BY sku"))
    assert set(prices) == {"GOOD"}


async def test_a_webhook_connectors_records_per_message_holds(
    config: dict[str, Any], clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET.decode())
    hook = {"id": "hook", "type": "webhook", "secret_env": "HOOK_SECRET", "records_per_message": 2}
    c = await build(Settings.model_validate({**config, "connectors": [hook]}), clock=clock)
    try:
        levels = [level(f"S{i}", i, T0) for i in range(6)]
        body = orjson.dumps({"event_id": "e-1", "levels": levels})
        headers = {
            **generic_headers(SECRET, body, int(time.time())),
            "Content-Type": "application/json",
        }
        transport = httpx.ASGITransport(app=create_inventory_app(c))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            r = await http.post("/webhooks/hook", content=body, headers=headers)
        assert r.status_code == 202, r.text
        async with c.pool.acquire() as conn:
            messages = await conn.fetchval(
                "SELECT count(*) FROM domain_event WHERE event_type = 'ingest.hook'"
            )
    finally:
        await c.close()
    assert messages == 3  # 6 records, 2 a message


@pytest.mark.parametrize(
    ("lot", "location"),
    [
        pytest.param("L2", "default", id="into-a-lot"),
        pytest.param(None, "wh-b", id="at-another-location"),
    ],
)
async def test_a_receipt_into_another_batch_serves_the_owed_units_first(
    ingesting: Any, lot: str | None, location: str
) -> None:
    """D-485: D-120's "a receipt does not settle it: available rises only beyond them",
    whichever batch the receipt fills: 3 units owed, 10 received, 7 available, and an
    order for 10 is refused."""
    c = ingesting
    await c.stock.receive(Receipt("JAM", 2, "po-1"))  # lotless, default location
    await deliver(c, "shop", sales=[sale("t-1", "JAM", -5)])  # 3 oversold
    assert (await on_hand(c, "JAM")).oversold == 3
    expiry = datetime(2031, 1, 1, tzinfo=UTC) if lot else None
    await c.stock.receive(Receipt("JAM", 10, "po-2", location, lot, expiry))
    after = await on_hand(c, "JAM")
    assert (after.on_hand, after.oversold, after.available, after.shortfall) == (10, 3, 7, 0)
    with pytest.raises(InsufficientStock):
        await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("JAM", 10),)))
    await c.reservations.reserve(ReserveRequest("o-2", (OrderLine("JAM", 7),)))
    async with c.pool.acquire() as conn:
        report = await audit(conn)
        rows = await conn.fetch(
            "SELECT lot_number, location, on_hand, oversold FROM sku_batch WHERE sku = 'JAM' "
            "ORDER BY id"
        )
    assert report.clean, report.render()
    assert [tuple(r) for r in rows] == [(None, "default", 0, 0), (lot, location, 10, 3)]


async def test_units_an_adjustment_brings_into_another_batch_serve_the_owed_units_first(
    ingesting: Any,
) -> None:
    """D-490: as a receipt does (D-485), an adjustment that adds units to one batch
    serves the units the SKU owes on its other batches first: 3 owed, 10 found in a
    lot, 7 available, and an order for 10 is refused."""
    c = ingesting
    lot = (await c.stock.receive(Receipt("JAM", 10, "po-1", "default", "L1", None))).result
    await c.stock.adjust(Adjustment("JAM", "on_hand", "count", "a-1", lot.batch_id, set=0))
    await c.stock.receive(Receipt("JAM", 2, "po-2"))  # lotless, default location
    await deliver(c, "shop", sales=[sale("t-1", "JAM", -5)])
    start = await on_hand(c, "JAM")
    assert (start.oversold, start.available, start.shortfall) == (3, 0, 3)
    await c.stock.adjust(Adjustment("JAM", "on_hand", "found", "a-2", lot.batch_id, delta=10))
    end = await on_hand(c, "JAM")
    assert (end.oversold, end.available, end.shortfall) == (3, 7, 0)
    with pytest.raises(InsufficientStock):
        await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("JAM", 10),)))
    async with c.pool.acquire() as conn:
        report = await audit(conn)
        rows = await conn.fetch(
            "SELECT lot_number, oversold FROM sku_batch WHERE sku = 'JAM' ORDER BY id"
        )
    assert report.clean, report.render()
    assert [tuple(r) for r in rows] == [("L1", 3), (None, 0)]


async def test_a_receipt_serves_no_more_owed_units_than_it_brings(ingesting: Any) -> None:
    c = ingesting
    await deliver(c, "shop", sales=[sale("t-1", "JAM", -5)])  # 5 owed, no stock at all
    await c.stock.receive(Receipt("JAM", 2, "po-1", "default", "L1", None))
    after = await on_hand(c, "JAM")
    assert (after.on_hand, after.oversold, after.available, after.shortfall) == (2, 5, 0, 3)
    async with c.pool.acquire() as conn:
        report = await audit(conn)
        rows = await conn.fetch("SELECT lot_number, oversold FROM sku_batch ORDER BY id")
    assert report.clean, report.render()
    assert [tuple(r) for r in rows] == [(None, 3), ("L1", 2)]


async def test_a_receipt_picked_as_a_deadlock_victim_is_run_again_not_a_500(
    ingesting: Any,
) -> None:
    """D-491: a receipt that carries owed units (D-485) locks its own batch, then the
    SKU's other batches; a transaction taking them in id order (a reservation's order)
    meanwhile deadlocks with it. PostgreSQL rolls the receipt back; the API runs it
    again and answers 201, applied once, instead of a 500."""
    c = ingesting
    await c.stock.receive(Receipt("JAM", 2, "po-1"))  # the home batch, the lower id
    lot = (await c.stock.receive(Receipt("JAM", 1, "po-2", "default", "L1", None))).result
    await deliver(c, "shop", sales=[sale("t-1", "JAM", -6)])  # 3 owed on the home batch
    async with c.pool.acquire() as conn:
        home = await conn.fetchval("SELECT id FROM sku_batch WHERE lot_number IS NULL")
    rival = await c.pool.acquire()
    transport = httpx.ASGITransport(app=create_inventory_app(c))
    try:
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://api") as http,
            rival.transaction(),
        ):
            # The rival waits long before it checks for a deadlock, so the receipt
            # (checking after the server's deadlock_timeout) is the one rolled back.
            await rival.execute("SET LOCAL deadlock_timeout = '60s'")
            await rival.execute("SELECT 1 FROM sku_batch WHERE id = $1 FOR UPDATE", home)
            body = {"sku": "JAM", "quantity": 10, "lot_number": "L1", "reference_id": "po-3"}
            receipt = asyncio.create_task(
                http.post("/inventory/receipts", json=body, headers=auth())
            )
            me = await rival.fetchval("SELECT pg_backend_pid()")
            while not await rival.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND pid <> $1",
                me,
            ):
                assert not receipt.done(), receipt.result().text
                await asyncio.sleep(0.005)
            # The receipt holds L1 and waits for the home batch; now the rival waits
            # for L1: a cycle.
            await rival.execute("SELECT 1 FROM sku_batch WHERE id = $1 FOR UPDATE", lot.batch_id)
        r = await receipt
    finally:
        await c.pool.release(rival)
    assert r.status_code == 201, r.text
    after = await on_hand(c, "JAM")
    assert (after.on_hand, after.oversold, after.available) == (10, 3, 7)
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()
