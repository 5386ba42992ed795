"""Receipts, adjustments, stock reads and the ledger, through the real Stock service."""

from __future__ import annotations

import asyncio
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import Conflict, InvalidRequest, NotFound
from stockkeeper.services.audit import audit
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Adjustment, LedgerPage, Receipt

SOON = datetime(2030, 2, 1, tzinfo=UTC)
LATE = datetime(2030, 6, 1, tzinfo=UTC)


async def fetch(c: Container, sql: str, *args: Any) -> list[asyncpg.Record]:
    async with c.pool.acquire() as conn:
        return list(await conn.fetch(sql, *args))


async def counts(c: Container) -> tuple[int, ...]:
    (row,) = await fetch(
        c,
        """SELECT (SELECT count(*) FROM inventory_ledger), (SELECT count(*) FROM domain_event),
                  (SELECT count(*) FROM applied_reference), (SELECT count(*) FROM sku_batch),
                  (SELECT coalesce(sum(version), 0) FROM sku)""",
    )
    return tuple(row)


async def assert_audit_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()


# -- receipts --------------------------------------------------------------------------


async def test_receipt_of_a_new_lot(container: Container) -> None:
    done = await container.stock.receive(Receipt("MILK", 12, "r-1", None, "L-1", SOON))
    assert done.created
    body = done.result.model_dump()
    assert {k: v for k, v in body.items() if k != "level"} == {
        "reference_id": "r-1",
        "batch_id": body["batch_id"],
        "sku": "MILK",
        "quantity": 12,
        "location": "default",
        "lot_number": "L-1",
        "expires_at": SOON,
    }
    level = body["level"]
    assert {k: level[k] for k in ("sku", "on_hand", "available", "reserved", "version")} == {
        "sku": "MILK",
        "on_hand": 12,
        "available": 12,
        "reserved": 0,
        "version": 1,
    }
    (batch,) = (await container.stock.get("MILK")).batches
    assert batch.batch_id == body["batch_id"]
    assert (batch.lot_number, batch.location, batch.on_hand) == ("L-1", "default", 12)
    assert batch.expires_at == SOON
    (entry,) = (await container.stock.ledger("MILK", 0, 10)).entries
    assert (entry.entry_type, entry.on_hand, entry.reference_id, entry.source) == (
        "RECEIPT",
        12,
        "r-1",
        "api",
    )
    assert entry.batch_id == body["batch_id"]


async def test_receipt_into_an_existing_lot_adds_to_its_batch(container: Container) -> None:
    first = await container.stock.receive(Receipt("MILK", 5, "r-1", None, "L-1", SOON))
    same_expiry = await container.stock.receive(Receipt("MILK", 3, "r-2", None, "L-1", SOON))
    # Without an expiry the receipt does not contradict the lot's, and its answer
    # shows the lot's expiry, not the none it was sent with.
    no_expiry = await container.stock.receive(Receipt("MILK", 2, "r-3", None, "L-1"))
    assert no_expiry.result.expires_at == SOON
    other_lot = await container.stock.receive(Receipt("MILK", 1, "r-4", None, "L-2", LATE))
    ids = {d.result.batch_id for d in (first, same_expiry, no_expiry)}
    assert ids == {first.result.batch_id}
    assert other_lot.result.batch_id != first.result.batch_id
    level = await container.stock.get("MILK")
    assert level.on_hand == 11
    assert [(b.lot_number, b.on_hand) for b in level.batches] == [("L-1", 10), ("L-2", 1)]
    assert level.version == 4
    await assert_audit_clean(container)


async def test_receipts_without_a_lot_share_one_batch_per_location(container: Container) -> None:
    a = await container.stock.receive(Receipt("TEA", 5, "r-1"))
    b = await container.stock.receive(Receipt("TEA", 5, "r-2"))
    c = await container.stock.receive(Receipt("TEA", 5, "r-3", "wh-2"))
    assert a.result.batch_id == b.result.batch_id != c.result.batch_id
    assert (await container.stock.get("TEA")).on_hand == 15


async def test_receipt_with_another_expiry_for_an_existing_lot_conflicts(
    container: Container,
) -> None:
    await container.stock.receive(Receipt("MILK", 5, "r-1", None, "L-1", SOON))
    await container.stock.receive(Receipt("MILK", 5, "r-2", None, "L-0"))
    before = await counts(container)
    with pytest.raises(Conflict, match="lot 'L-1' of MILK at default has expiry 2030-02-01"):
        await container.stock.receive(Receipt("MILK", 5, "r-3", None, "L-1", LATE))
    with pytest.raises(Conflict, match=r"lot 'L-0' of MILK at default has no expiry$"):
        await container.stock.receive(Receipt("MILK", 5, "r-4", None, "L-0", LATE))
    assert await counts(container) == before
    assert (await container.stock.get("MILK")).on_hand == 10
    # The same lot at another location is another batch and may carry its own expiry.
    done = await container.stock.receive(Receipt("MILK", 5, "r-3", "wh-2", "L-1", LATE))
    assert done.created


async def test_same_reference_again_is_applied_once_with_the_first_answer(
    container: Container,
) -> None:
    first = await container.stock.receive(Receipt("MILK", 5, "r-1", None, "L-1", SOON))
    await container.stock.receive(Receipt("MILK", 7, "r-2", None, "L-1", SOON))
    before = await counts(container)

    again = await container.stock.receive(Receipt("MILK", 5, "r-1", None, "L-1", SOON))

    assert not again.created
    assert again.result == first.result  # the first answer, not the stock as it stands now
    assert again.result.level.on_hand == 5
    assert await counts(container) == before
    assert (await container.stock.get("MILK")).on_hand == 12


async def test_same_reference_with_other_content_conflicts(container: Container) -> None:
    await container.stock.receive(Receipt("MILK", 5, "r-1", None, "L-1", SOON))
    before = await counts(container)
    for other in (
        Receipt("MILK", 6, "r-1", None, "L-1", SOON),
        Receipt("MILK", 5, "r-1", None, "L-2", SOON),
        Receipt("MILK", 5, "r-1", "wh-2", "L-1", SOON),
        Receipt("CREAM", 5, "r-1", None, "L-1", SOON),
    ):
        with pytest.raises(Conflict):
            await container.stock.receive(other)
    assert await counts(container) == before
    # References are per kind: an adjustment may carry the same one.
    adj = await container.stock.adjust(Adjustment("MILK", "on_hand", "count", "r-1", delta=1))
    assert adj.created


async def test_concurrent_repeats_of_one_receipt_apply_it_once(container: Container) -> None:
    results = await asyncio.gather(
        *(container.stock.receive(Receipt("MILK", 4, "r-1")) for _ in range(20))
    )
    assert sum(r.created for r in results) == 1
    assert all(r.result == results[0].result for r in results)
    assert (await container.stock.get("MILK")).on_hand == 4
    await assert_audit_clean(container)


async def test_receipt_at_an_unknown_location_creates_it(container: Container) -> None:
    assert await fetch(container, "SELECT code FROM location WHERE code = 'wh-north'") == []
    done = await container.stock.receive(Receipt("MILK", 5, "r-1", "wh-north", "L-1", SOON))
    assert done.result.location == "wh-north"
    assert len(await fetch(container, "SELECT code FROM location WHERE code = 'wh-north'")) == 1
    (batch,) = (await container.stock.get("MILK")).batches
    assert batch.location == "wh-north"
    # A second receipt there reuses the location.
    await container.stock.receive(Receipt("MILK", 5, "r-2", "wh-north", "L-2", SOON))
    assert len(await fetch(container, "SELECT code FROM location WHERE code = 'wh-north'")) == 1


# -- adjustments -----------------------------------------------------------------------


async def test_adjustments_by_delta_and_to_a_value(container: Container) -> None:
    s = container.stock
    await s.receive(Receipt("JAM", 10, "r-1"))

    done = await s.adjust(Adjustment("JAM", "on_hand", "found", "a-1", delta=3))
    assert done.created
    assert done.result.applied_delta == 3
    assert done.result.level.on_hand == 13

    done = await s.adjust(Adjustment("JAM", "on_hand", "lost", "a-2", delta=-5))
    assert (done.result.applied_delta, done.result.level.on_hand) == (-5, 8)

    done = await s.adjust(Adjustment("JAM", "on_hand", "recount", "a-3", set=20))
    assert (done.result.applied_delta, done.result.level.on_hand) == (12, 20)

    done = await s.adjust(Adjustment("JAM", "unavailable", "damaged", "a-4", set=4))
    assert done.result.applied_delta == 4
    assert (done.result.level.unavailable, done.result.level.available) == (4, 16)

    done = await s.adjust(Adjustment("JAM", "unavailable", "repaired", "a-5", delta=-1))
    assert (done.result.level.unavailable, done.result.level.available) == (3, 17)

    page = await s.ledger("JAM", 0, 100)
    assert [
        (e.entry_type, e.on_hand, e.unavailable, e.reason, e.reference_id) for e in page.entries
    ] == [
        ("RECEIPT", 10, 0, None, "r-1"),
        ("ADJUSTMENT", 3, 0, "found", "a-1"),
        ("ADJUSTMENT", -5, 0, "lost", "a-2"),
        ("ADJUSTMENT", 12, 0, "recount", "a-3"),
        ("ADJUSTMENT", 0, 4, "damaged", "a-4"),
        ("ADJUSTMENT", 0, -1, "repaired", "a-5"),
    ]
    events = await fetch(
        container,
        "SELECT payload FROM domain_event WHERE event_type = 'inventory.adjusted' ORDER BY id",
    )
    assert [e["payload"]["applied_delta"] for e in events] == [3, -5, 12, 4, -1]
    assert [e["payload"]["reference_id"] for e in events] == ["a-1", "a-2", "a-3", "a-4", "a-5"]

    again = await s.adjust(Adjustment("JAM", "on_hand", "found", "a-1", delta=3))
    assert not again.created
    assert again.result.level.on_hand == 13  # the first answer
    with pytest.raises(Conflict):
        await s.adjust(Adjustment("JAM", "on_hand", "found", "a-1", delta=4))
    assert (await s.get("JAM")).on_hand == 20
    await assert_audit_clean(container)


async def test_adjustment_needs_the_batch_when_the_sku_has_several(container: Container) -> None:
    s = container.stock
    one = (await s.receive(Receipt("JAM", 10, "r-1", None, "L-1", SOON))).result.batch_id
    two = (await s.receive(Receipt("JAM", 10, "r-2", None, "L-2", LATE))).result.batch_id
    other = (await s.receive(Receipt("TEA", 10, "r-3"))).result.batch_id
    before = await counts(container)

    with pytest.raises(InvalidRequest):
        await s.adjust(Adjustment("JAM", "on_hand", "count", "a-1", delta=1))
    with pytest.raises(NotFound):  # a batch of another SKU
        await s.adjust(Adjustment("JAM", "on_hand", "count", "a-2", batch_id=other, delta=1))
    with pytest.raises(NotFound):  # no such batch
        await s.adjust(Adjustment("JAM", "on_hand", "count", "a-3", batch_id=10**9, delta=1))
    with pytest.raises(NotFound):
        await s.adjust(Adjustment("NOPE", "on_hand", "count", "a-4", delta=1))
    assert await counts(container) == before

    done = await s.adjust(Adjustment("JAM", "on_hand", "count", "a-1", batch_id=two, delta=-4))
    assert done.result.batch_id == two
    by_id = {b.batch_id: b.on_hand for b in (await s.get("JAM")).batches}
    assert by_id == {one: 10, two: 6}
    # With a single batch the batch_id may be left out.
    done = await s.adjust(Adjustment("TEA", "on_hand", "count", "a-5", delta=-1))
    assert done.created
    (entry,) = [e for e in (await s.ledger("TEA", 0, 10)).entries if e.entry_type == "ADJUSTMENT"]
    assert (entry.batch_id, entry.on_hand) == (other, -1)


async def test_adjustment_answer_names_the_batch_it_adjusted(container: Container) -> None:
    s = container.stock
    batch = (await s.receive(Receipt("TEA", 10, "r-1"))).result.batch_id
    done = await s.adjust(Adjustment("TEA", "on_hand", "count", "a-1", delta=-1))
    (event,) = await fetch(
        container, "SELECT payload FROM domain_event WHERE event_type = 'inventory.adjusted'"
    )
    assert (done.result.batch_id, event["payload"]["batch_id"]) == (batch, batch)


async def test_adjustment_below_zero_is_refused(container: Container) -> None:
    s = container.stock
    batch = (await s.receive(Receipt("JAM", 5, "r-1"))).result.batch_id
    before = await counts(container)
    refused = [
        Adjustment("JAM", "on_hand", "x", "a-1", delta=-6),
        Adjustment("JAM", "on_hand", "x", "a-2", batch_id=batch, set=-1),
        Adjustment("JAM", "unavailable", "x", "a-3", delta=-1),
        Adjustment("JAM", "on_hand", "x", "a-4", delta=1, set=6),  # both
        Adjustment("JAM", "on_hand", "x", "a-5"),  # neither
    ]
    for adj in refused:
        with pytest.raises(InvalidRequest):
            await s.adjust(adj)
    assert await counts(container) == before
    # Exactly to zero is fine.
    done = await s.adjust(Adjustment("JAM", "on_hand", "x", "a-1", delta=-5))
    assert done.result.level.on_hand == 0


async def test_adjustment_below_what_is_promised_records_a_shortfall(
    container: Container,
) -> None:
    s = container.stock
    await s.receive(Receipt("JAM", 10, "r-1"))
    await container.reservations.reserve(ReserveRequest("o-1", (OrderLine("JAM", 6),)))
    done = await s.adjust(Adjustment("JAM", "unavailable", "quarantine", "a-1", set=7))
    level = done.result.level
    assert (level.available, level.shortfall, level.reserved) == (0, 3, 6)
    await assert_audit_clean(container)


# -- reads -----------------------------------------------------------------------------


async def test_get_many_keeps_the_asked_order_and_skips_unknown(container: Container) -> None:
    s = container.stock
    for sku in ("A", "B", "C"):
        await s.receive(Receipt(sku, 1, f"r-{sku}"))
    undated = (await s.receive(Receipt("C", 1, "r-C2", None, "L-9"))).result.batch_id
    late = (await s.receive(Receipt("C", 1, "r-C3", None, "L-8", LATE))).result.batch_id
    soon = (await s.receive(Receipt("C", 1, "r-C4", None, "L-7", SOON))).result.batch_id

    items = await s.get_many(["C", "NOPE", "A", "B"])

    assert [i.sku for i in items] == ["C", "A", "B"]
    c = items[0]
    assert c.on_hand == 4
    # Batches: soonest expiry first, undated last (by id among themselves).
    first_c = c.batches[2].batch_id
    assert [b.batch_id for b in c.batches] == [soon, late, first_c, undated]
    assert first_c < undated
    assert {f.name for f in fields(c)} >= {
        "on_hand",
        "unavailable",
        "reserved",
        "committed",
        "available",
        "shortfall",
        "version",
        "updated_at",
        "batches",
    }
    assert await s.get_many(["NOPE"]) == []
    with pytest.raises(NotFound):
        await s.get("NOPE")


async def test_ledger_pages(container: Container) -> None:
    s = container.stock
    for i in range(7):
        await s.receive(Receipt("P", i + 1, f"r-{i}"))
        await s.receive(Receipt("Q", 1, f"q-{i}"))  # interleaved entries of another SKU

    pages: list[LedgerPage] = []
    after = 0
    while True:
        page = await s.ledger("P", after, 3)
        pages.append(page)
        if page.next is None:
            break
        after = page.next
    assert [len(p.entries) for p in pages] == [3, 3, 1]
    entries = [e for p in pages for e in p.entries]
    assert [e.on_hand for e in entries] == [1, 2, 3, 4, 5, 6, 7]
    ids = [e.id for e in entries]
    assert ids == sorted(ids)
    assert [p.next for p in pages] == [ids[2], ids[5], None]
    assert {p.sku for p in pages} == {"P"}

    # A last page that is exactly full has no next.
    full = await s.ledger("P", ids[3], 3)
    assert [e.id for e in full.entries] == ids[4:]
    assert full.next is None
    assert (await s.ledger("P", ids[-1], 3)) == LedgerPage("P", [], None)
    assert [e.id for e in (await s.ledger("P", 0, 100)).entries] == ids
    with pytest.raises(NotFound):
        await s.ledger("NOPE", 0, 10)


async def test_ledger_is_append_only(container: Container) -> None:
    await container.stock.receive(Receipt("P", 5, "r-1"))
    async with container.pool.acquire() as conn:
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("UPDATE inventory_ledger SET d_on_hand = 500")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("DELETE FROM inventory_ledger")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError, match="append-only"):
            await conn.execute("TRUNCATE inventory_ledger CASCADE")
        rows = await conn.fetch("SELECT d_on_hand FROM inventory_ledger")
    assert [r["d_on_hand"] for r in rows] == [5]
