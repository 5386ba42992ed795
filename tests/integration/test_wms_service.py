"""The WMS use cases on a real database: force-sync requests, reconciling pages,
shortfalls, refused rows, the schedule, job claims and outbound items."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.connectors.records import SaleRecord
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import InsufficientStock, InvalidRequest, NotFound
from stockkeeper.domain.wms import Counted, SyncKind, SyncStatus, outbound_lines
from stockkeeper.services.audit import audit
from stockkeeper.services.listing import Listing
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.services.wms import Rejected, SyncJob

WMS = {"id": "wms-main", "type": "wms", "url": "http://127.0.0.1:1", "incremental_interval_s": 60}


@pytest.fixture
async def wms_container(config: dict[str, Any], clock: Any) -> AsyncIterator[Container]:
    c = await build(Settings.model_validate({**config, "connectors": [WMS]}), clock=clock)
    yield c
    await c.close()


def count(sku: str, on_hand: int, lot: str | None = None, unavailable: int = 0) -> Counted:
    return Counted(sku, "default", lot, None, on_hand, unavailable)


async def rows(c: Container, sql: str, *args: Any) -> list[dict[str, Any]]:
    async with c.pool.acquire() as conn:
        return [dict(r) for r in await conn.fetch(sql, *args)]


async def job_for(c: Container, **kw: Any) -> SyncJob:
    await c.wms.request_sync(reason="test", requested_by="tests", **kw)
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    return job


async def assert_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.summary()


async def test_force_sync_writes_the_request_and_its_command_in_one_transaction(
    wms_container: Container,
) -> None:
    c = wms_container
    doc = await c.wms.request_sync(reason="count day", requested_by="ops", sku="A")
    assert (doc.status, doc.kind, doc.sku) == ("PENDING", "sku", "A")
    (cmd,) = await rows(
        c,
        "SELECT event_type, payload, xmin::text AS x FROM domain_event "
        "WHERE event_type LIKE 'wms.%'",
    )
    (req,) = await rows(c, "SELECT xmin::text AS x FROM wms_sync_request")
    assert cmd["event_type"] == "wms.sync.force"
    assert cmd["payload"]["sync_request_id"] == doc.id
    assert cmd["x"] == req["x"]  # one transaction
    assert (await c.wms.get_request(doc.id)).status == "PENDING"


async def test_force_sync_refuses_what_it_cannot_do(wms_container: Container) -> None:
    c = wms_container
    with pytest.raises(NotFound):
        await c.wms.request_sync(reason="r", requested_by="o", sku_batch_id=999)
    with pytest.raises(InvalidRequest, match="no WMS connector 'other'"):
        await c.wms.request_sync(reason="r", requested_by="o", connector="other")
    done = await c.stock.receive(Receipt("A", 1, "r-1", None, None, None))
    with pytest.raises(InvalidRequest, match="not a batch of sku B"):
        await c.wms.request_sync(
            reason="r", requested_by="o", sku="B", sku_batch_id=done.result.batch_id
        )
    with pytest.raises(NotFound):
        await c.wms.get_request(12345)
    assert await rows(c, "SELECT id FROM wms_sync_request") == []


async def test_without_a_wms_connector_force_sync_says_so(container: Container) -> None:
    with pytest.raises(InvalidRequest, match="no WMS connector is configured"):
        await container.wms.request_sync(reason="r", requested_by="o")


async def test_a_page_creates_batches_and_adjusts_every_difference_once(
    wms_container: Container,
) -> None:
    c = wms_container
    await c.stock.receive(Receipt("A", 10, "r-1", None, "L1", None))
    job = await job_for(c)
    page = [count("A", 7, "L1"), count("A", 4, "L2", unavailable=1), count("B", 3)]
    result = await c.wms.apply_page(job, page, cursor="after-B")
    assert (result.rows, result.adjustments, result.rejected) == (3, 3, 0)
    a, b = await c.stock.get_many(["A", "B"])
    assert (a.on_hand, a.unavailable, a.available) == (11, 1, 10)
    assert b.on_hand == 3
    ledger = await rows(
        c,
        "SELECT sku, entry_type, d_on_hand, d_unavailable, reference_id, source "
        "FROM inventory_ledger WHERE entry_type = 'ADJUSTMENT' ORDER BY id",
    )
    assert [(r["sku"], r["d_on_hand"], r["d_unavailable"]) for r in ledger] == [
        ("A", -3, 0),
        ("A", 4, 1),
        ("B", 3, 0),
    ]
    assert {r["reference_id"] for r in ledger} == {f"wms-sync:{job.id}"}
    assert {r["source"] for r in ledger} == {"wms:wms-main"}
    snaps = await rows(c, "SELECT on_hand, unavailable FROM wms_inventory_snapshot ORDER BY 1")
    assert [(s["on_hand"], s["unavailable"]) for s in snaps] == [(3, 0), (4, 1), (7, 0)]
    req = await c.wms.get_request(job.id)
    assert (req.pages, req.rows_seen, req.adjustments) == (1, 3, 3)
    # The same counts again: nothing left to explain.
    again = await c.wms.apply_page(job, page, cursor=None)
    assert again.adjustments == 0
    assert len(await rows(c, "SELECT id FROM inventory_ledger WHERE entry_type='ADJUSTMENT'")) == 3
    await assert_clean(c)


async def test_a_count_below_what_is_promised_is_a_shortfall_and_keeps_the_promise(
    wms_container: Container,
) -> None:
    c = wms_container
    await c.stock.receive(Receipt("A", 10, "r-1", None, None, None))
    await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("A", 8),)))
    job = await job_for(c, sku="A")
    result = await c.wms.apply_page(job, [count("A", 5)], cursor=None)
    assert result.shortfall_skus == 1
    shortfalls = c.metrics.registry.get_sample_value(
        "stockkeeper_wms_shortfalls_total", {"connector": "wms-main"}
    )
    assert shortfalls == 1
    oversell = c.metrics.registry.get_sample_value(
        "stockkeeper_oversell_total", {"source": "wms:wms-main"}
    )
    assert oversell == 3
    (a,) = await c.stock.get_many(["A"])
    assert (a.on_hand, a.reserved, a.available, a.shortfall) == (5, 8, 0, 3)
    events = await rows(
        c, "SELECT payload FROM domain_event WHERE event_type = 'inventory.shortfall'"
    )
    assert [e["payload"]["shortfall"] for e in events] == [3]
    view = await c.reservations.get("o-1")
    assert view.status.value == "PENDING"
    with pytest.raises(InsufficientStock):
        await c.reservations.reserve(ReserveRequest("o-2", (OrderLine("A", 1),)))
    await assert_clean(c)


async def test_a_count_holding_back_more_than_is_on_hand_is_no_shortfall_unless_promised(
    wms_container: Container,
) -> None:
    c = wms_container
    # Q: nothing promised. P: 2 of its 3 reserved. The WMS counts 3 of each with 5 held
    # back (quarantine, safety stock): nothing sellable, but only P owes anyone (D-475).
    await c.stock.receive(Receipt("Q", 3, "r-q", None, None, None))
    await c.stock.receive(Receipt("P", 3, "r-p", None, None, None))
    await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("P", 2),)))
    job = await job_for(c)
    page = [count("P", 3, unavailable=5), count("Q", 3, unavailable=5)]
    result = await c.wms.apply_page(job, page, cursor=None)
    assert (result.adjustments, result.shortfall_skus) == (2, 1)
    m = c.metrics.registry.get_sample_value
    assert m("stockkeeper_oversell_total", {"source": "wms:wms-main"}) == 2
    assert m("stockkeeper_wms_shortfalls_total", {"connector": "wms-main"}) == 1
    p, q = await c.stock.get_many(["P", "Q"])
    assert (q.on_hand, q.unavailable, q.available, q.shortfall) == (3, 5, 0, 0)
    assert (p.on_hand, p.unavailable, p.reserved, p.available, p.shortfall) == (3, 5, 2, 0, 2)
    # Each batch's figures (the domain's rule) agree with the SKU's (the SQL's).
    assert [(b.available, b.shortfall) for b in (*p.batches, *q.batches)] == [(0, 2), (0, 0)]
    events = await rows(
        c, "SELECT sku, payload FROM domain_event WHERE event_type = 'inventory.shortfall'"
    )
    assert [(e["sku"], e["payload"]["shortfall"]) for e in events] == [("P", 2)]
    listing = Listing(c.pool, c.settings, c.clock)
    short = await listing.skus(shortfall_only=True)
    assert [(s.sku, s.shortfall) for s in short.items] == [("P", 2)]
    sold_out = await listing.skus(unavailable_only=True)
    assert [(s.sku, s.available, s.shortfall) for s in sold_out.items] == [
        ("P", 0, 2),
        ("Q", 0, 0),
    ]
    # The same count again: nothing grew, nothing counted.
    await c.wms.apply_page(job, page, cursor=None)
    assert m("stockkeeper_oversell_total", {"source": "wms:wms-main"}) == 2
    await assert_clean(c)


async def test_an_older_count_applied_after_a_newer_one_is_dropped(
    wms_container: Container,
) -> None:
    c = wms_container
    at = datetime(2030, 1, 1, tzinfo=UTC)
    full = await job_for(c)
    force = await job_for(c, sku="A")
    # The full sync read A's page (10, counted at 10:00) before a force sync of A read
    # and applied 15 (counted at 10:01); the full sync's page is applied after it.
    newer = Counted("A", "default", None, None, 15, 0, at + timedelta(minutes=1))
    await c.wms.apply_page(force, [newer], cursor=None)
    older = [Counted("A", "default", None, None, 10, 0, at), count("B", 3)]
    result = await c.wms.apply_page(full, older, cursor="after-B")
    a, b = await c.stock.get_many(["A", "B"])
    assert (a.on_hand, b.on_hand) == (15, 3)  # the rest of the page applies
    assert result.adjustments == 1
    snaps = await rows(c, "SELECT sku, on_hand, wms_updated_at FROM wms_inventory_snapshot")
    assert sorted((s["sku"], s["on_hand"]) for s in snaps) == [("A", 15), ("B", 3)]
    # The same count again, or a newer one, still applies.
    await c.wms.apply_page(full, [newer], cursor=None)
    later = Counted("A", "default", None, None, 12, 0, at + timedelta(minutes=2))
    await c.wms.apply_page(full, [later], cursor=None)
    (a,) = await c.stock.get_many(["A"])
    assert a.on_hand == 12
    await assert_clean(c)


async def test_a_count_settles_what_a_channel_oversold(wms_container: Container) -> None:
    c = wms_container
    await c.stock.receive(Receipt("A", 1, "r-1", None, None, None))
    sold = SaleRecord(transaction_id="t-1", sku="A", delta=-3, source="shop")
    async with c.pool.acquire() as conn, conn.transaction():
        await c.ingest.apply(conn, "shop", [], [sold], reference="m-1")
    (a,) = await c.stock.get_many(["A"])
    assert (a.on_hand, a.oversold, a.shortfall) == (0, 2, 2)
    job = await job_for(c, sku="A")
    await c.wms.apply_page(job, [count("A", 4)], cursor=None)
    (a,) = await c.stock.get_many(["A"])
    assert (a.on_hand, a.oversold, a.available, a.shortfall) == (4, 0, 4, 0)
    await assert_clean(c)


async def test_refused_rows_become_dead_letters_and_the_rest_applies(
    wms_container: Container,
) -> None:
    c = wms_container
    job = await job_for(c)
    bad_location = Counted("A", "no spaces allowed", None, None, 5, 0)
    too_long = Counted("x" * 200, "default", None, None, 5, 0)
    result = await c.wms.apply_page(
        job,
        [count("OK", 2), bad_location, too_long],
        [Rejected({"sku": "N", "on_hand": -1}, "on_hand: must be >= 0")],
        cursor=None,
    )
    assert (result.rows, result.rejected, result.adjustments) == (4, 3, 1)
    dead = await rows(c, "SELECT queue, error, body FROM dead_letter ORDER BY id")
    assert [d["queue"] for d in dead] == ["wms.sync"] * 3
    assert dead[0]["body"] == {"sku": "N", "on_hand": -1}
    assert "not a valid location code" in dead[1]["error"]
    assert "sku must be" in dead[2]["error"]
    (ok,) = await c.stock.get_many(["OK"])
    assert ok.on_hand == 2
    assert await c.stock.get_many(["A"]) == []
    await assert_clean(c)


async def test_a_page_racing_reservations_loses_no_update_and_never_oversells(
    wms_container: Container,
) -> None:
    c = wms_container
    skus = [f"S{i}" for i in range(5)]
    for s in skus:
        await c.stock.receive(Receipt(s, 20, f"r-{s}", None, None, None))
    job = await job_for(c)

    async def buy(i: int) -> bool:
        try:
            await c.reservations.reserve(
                ReserveRequest(
                    f"o-{i}", (OrderLine(skus[i % 5], 1), OrderLine(skus[(i + 2) % 5], 1))
                )
            )
        except InsufficientStock:
            return False
        return True

    counts = [count(s, 12) for s in skus]
    outcome = await asyncio.gather(
        *(buy(i) for i in range(60)), c.wms.apply_page(job, counts, cursor=None)
    )
    granted = sum(1 for x in outcome[:-1] if x)
    levels = await c.stock.get_many(skus)
    for lv in levels:
        assert lv.on_hand == 12  # the count, not lost under the reservations
    assert sum(lv.reserved for lv in levels) == 2 * granted
    for lv in levels:
        assert lv.reserved <= 20  # never more than there ever was
        # Whatever was promised beyond the count shows as shortfall, not as stock.
        assert lv.shortfall == max(0, lv.reserved - 12)
        assert lv.available == max(0, 12 - lv.reserved)
    await assert_clean(c)


async def test_the_schedule_queues_one_incremental_sync_per_interval(
    wms_container: Container, clock: Any
) -> None:
    c = wms_container
    first = await c.wms.schedule_incremental("wms-main", 60)
    assert first is not None
    assert await c.wms.schedule_incremental("wms-main", 60) is None  # not due yet
    clock.advance(61)
    assert await c.wms.schedule_incremental("wms-main", 60) is None  # one still open
    job = await c.wms.claim(stale_after_s=60)
    assert job is not None
    assert job.kind is SyncKind.INCREMENTAL
    await c.wms.finish(job, SyncStatus.DONE, token="t-9")
    assert await c.wms.sync_token("wms-main") == "t-9"
    clock.advance(61)
    assert await c.wms.schedule_incremental("wms-main", 60) is not None


async def test_claims_go_by_priority_and_a_silent_job_is_taken_over(
    wms_container: Container,
) -> None:
    c = wms_container
    low = await c.wms.request_sync(reason="r", requested_by="o", priority="low")
    high = await c.wms.request_sync(reason="r", requested_by="o", priority="high")
    first = await c.wms.claim(stale_after_s=60)
    assert first is not None
    assert first.id == high.id
    second = await c.wms.claim(stale_after_s=60)
    assert second is not None
    assert second.id == low.id
    assert await c.wms.claim(stale_after_s=60) is None
    # The worker running `first` died: once it is silent long enough, it is resumed
    # from the cursor its last page saved.
    await c.wms.apply_page(first, [count("A", 1)], cursor="page-2")
    async with c.pool.acquire() as conn:
        await conn.execute(
            "UPDATE wms_sync_request SET heartbeat_at = now() - interval '2 minutes' WHERE id = $1",
            first.id,
        )
    again = await c.wms.claim(stale_after_s=60)
    assert again is not None
    assert (again.id, again.cursor, again.attempts) == (first.id, "page-2", 2)
    await c.wms.finish(again, SyncStatus.FAILED, "WMS unavailable: 503")
    doc = await c.wms.get_request(first.id)
    assert (doc.status, doc.error) == ("FAILED", "WMS unavailable: 503")


async def test_outbound_items_are_recorded_once_per_event_and_batch(
    wms_container: Container,
) -> None:
    c = wms_container
    a = await c.stock.receive(Receipt("A", 5, "r-a", None, "LOT-1", None))
    message = uuid.uuid4()
    payload = {
        "order_id": "o-1",
        "lines": [
            {"sku": "A", "batch_id": a.result.batch_id, "quantity": 2},
            {"sku": "A", "batch_id": a.result.batch_id, "quantity": 1},
        ],
    }
    lines = outbound_lines(str(message), "inventory.allocated", payload)
    assert [(li.action.value, li.quantity) for li in lines] == [("allocate", 3)]
    for _ in range(2):  # a redelivery records nothing new
        async with c.pool.acquire() as conn, conn.transaction():
            await c.wms.record_outbound(conn, message, lines)
    items = await rows(
        c, "SELECT event_id, action, location, lot_number, quantity FROM wms_outbound_item"
    )
    assert items == [
        {
            "event_id": f"{message}:{a.result.batch_id}",
            "action": "allocate",
            "location": "default",
            "lot_number": "LOT-1",
            "quantity": 3,
        }
    ]
