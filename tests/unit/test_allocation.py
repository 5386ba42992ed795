"""FEFO allocation: which batches serve an order (stockkeeper.domain.allocation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockkeeper.domain.allocation import (
    BatchStock,
    LineAllocation,
    OrderLine,
    allocate,
    fefo_key,
)
from stockkeeper.domain.errors import InsufficientStock, InvalidRequest, Shortage
from stockkeeper.domain.quantities import Figures

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def at(days: float) -> datetime:
    return NOW + timedelta(days=days)


def batch(
    id: int,
    on_hand: int,
    *,
    sku: str = "SKU",
    expires: datetime | None = None,
    location: str = "default",
    lot: str | None = None,
    unavailable: int = 0,
    reserved: int = 0,
    committed: int = 0,
    version: int = 0,
) -> BatchStock:
    return BatchStock(
        id=id,
        sku=sku,
        location=location,
        lot_number=lot,
        expires_at=expires,
        figures=Figures(on_hand, unavailable, reserved, committed),
        version=version,
    )


def taken(result: list[LineAllocation]) -> list[list[tuple[int, int]]]:
    """Per line, the (batch_id, quantity) pairs in the order they were taken."""
    return [[(a.batch_id, a.quantity) for a in la.allocations] for la in result]


# -- ordering ------------------------------------------------------------------------


def test_earliest_expiry_is_served_first() -> None:
    batches = [batch(1, 5, expires=at(30)), batch(2, 5, expires=at(2)), batch(3, 5, expires=at(9))]
    result = allocate([OrderLine("SKU", 3)], batches, now=NOW)
    assert taken(result) == [[(2, 3)]]


def test_batches_without_expiry_come_last() -> None:
    # Batch 1 has the lowest id but no expiry: every dated batch goes before it.
    batches = [batch(1, 5), batch(2, 5, expires=at(400)), batch(3, 5, expires=at(100))]
    result = allocate([OrderLine("SKU", 12)], batches, now=NOW)
    assert taken(result) == [[(3, 5), (2, 5), (1, 2)]]


def test_ties_are_broken_by_batch_id() -> None:
    same = at(5)
    batches = [batch(7, 2, expires=same), batch(3, 2, expires=same), batch(5, 2, expires=same)]
    assert taken(allocate([OrderLine("SKU", 5)], batches, now=NOW)) == [[(3, 2), (5, 2), (7, 1)]]
    undated = [batch(9, 2), batch(4, 2)]
    assert taken(allocate([OrderLine("SKU", 3)], undated, now=NOW)) == [[(4, 2), (9, 1)]]


def test_fefo_key_orders_dated_then_undated_then_id() -> None:
    batches = [batch(4, 1), batch(3, 1, expires=at(2)), batch(2, 1), batch(1, 1, expires=at(3))]
    assert [b.id for b in sorted(batches, key=fefo_key)] == [3, 1, 2, 4]


def test_input_order_does_not_matter() -> None:
    batches = [batch(i, 1, expires=at(10 - i) if i % 2 else None) for i in range(1, 9)]
    forward = allocate([OrderLine("SKU", 6)], batches, now=NOW)
    backward = allocate([OrderLine("SKU", 6)], list(reversed(batches)), now=NOW)
    assert taken(forward) == taken(backward)


# -- what may be sold ----------------------------------------------------------------


def test_expired_batch_is_never_allocated() -> None:
    batches = [batch(1, 10, expires=NOW - timedelta(seconds=1)), batch(2, 4, expires=at(1))]
    assert taken(allocate([OrderLine("SKU", 4)], batches, now=NOW)) == [[(2, 4)]]
    with pytest.raises(InsufficientStock) as info:
        allocate([OrderLine("SKU", 5)], batches, now=NOW)
    assert info.value.shortages == [Shortage("SKU", 5, 4)]


def test_batch_expiring_exactly_now_is_expired() -> None:
    batches = [batch(1, 10, expires=NOW)]
    with pytest.raises(InsufficientStock) as info:
        allocate([OrderLine("SKU", 1)], batches, now=NOW)
    assert info.value.shortages == [Shortage("SKU", 1, 0)]
    # One microsecond earlier the same batch is still sellable.
    early = NOW - timedelta(microseconds=1)
    assert taken(allocate([OrderLine("SKU", 1)], batches, now=early)) == [[(1, 1)]]


def test_requested_location_is_honoured() -> None:
    batches = [
        batch(1, 5, location="east", expires=at(1)),
        batch(2, 5, location="west", expires=at(2)),
        batch(3, 5, location="west"),
    ]
    result = allocate([OrderLine("SKU", 7)], batches, now=NOW, location="west")
    assert taken(result) == [[(2, 5), (3, 2)]]
    assert {a.location for a in result[0].allocations} == {"west"}
    with pytest.raises(InsufficientStock) as info:
        allocate([OrderLine("SKU", 6)], batches, now=NOW, location="east")
    assert info.value.shortages == [Shortage("SKU", 6, 5)]
    with pytest.raises(InsufficientStock):
        allocate([OrderLine("SKU", 1)], batches, now=NOW, location="north")


def test_without_location_every_location_serves() -> None:
    batches = [batch(1, 5, location="east"), batch(2, 5, location="west")]
    assert taken(allocate([OrderLine("SKU", 8)], batches, now=NOW)) == [[(1, 5), (2, 3)]]


def test_other_skus_batches_are_ignored() -> None:
    batches = [batch(1, 50, sku="OTHER", expires=at(1)), batch(2, 3, sku="SKU")]
    assert taken(allocate([OrderLine("SKU", 3)], batches, now=NOW)) == [[(2, 3)]]


def test_available_counts_unavailable_reserved_and_committed() -> None:
    # available = 10 - 2 - 3 - 1 = 4
    b = batch(1, 10, unavailable=2, reserved=3, committed=1)
    assert taken(allocate([OrderLine("SKU", 4)], [b], now=NOW)) == [[(1, 4)]]
    with pytest.raises(InsufficientStock) as info:
        allocate([OrderLine("SKU", 5)], [b], now=NOW)
    assert info.value.shortages == [Shortage("SKU", 5, 4)]


def test_batch_with_shortfall_contributes_zero() -> None:
    # Batch 1 is short by 4 (net -4); it must not eat into batch 2's 6 sellable units.
    short = batch(1, 2, reserved=6, expires=at(1))
    good = batch(2, 6, expires=at(2))
    assert short.figures.net == -4
    result = allocate([OrderLine("SKU", 6)], [short, good], now=NOW)
    assert taken(result) == [[(2, 6)]]
    with pytest.raises(InsufficientStock) as info:
        allocate([OrderLine("SKU", 7)], [short, good], now=NOW)
    assert info.value.shortages == [Shortage("SKU", 7, 6)]


def test_empty_batches_are_skipped_not_allocated_zero() -> None:
    batches = [batch(1, 0, expires=at(1)), batch(2, 3, reserved=3, expires=at(2)), batch(3, 2)]
    result = allocate([OrderLine("SKU", 2)], batches, now=NOW)
    assert taken(result) == [[(3, 2)]]


# -- lines ---------------------------------------------------------------------------


def test_a_line_spans_several_batches() -> None:
    batches = [
        batch(1, 3, expires=at(1), lot="L1"),
        batch(2, 4, expires=at(2), lot="L2"),
        batch(3, 10, lot=None),
    ]
    result = allocate([OrderLine("SKU", 9)], batches, now=NOW)
    assert result[0].line == OrderLine("SKU", 9)
    allocs = result[0].allocations
    assert [(a.batch_id, a.lot_number, a.quantity) for a in allocs] == [
        (1, "L1", 3),
        (2, "L2", 4),
        (3, None, 2),
    ]
    assert sum(a.quantity for a in allocs) == 9


def test_allocation_carries_batch_details_and_version() -> None:
    b = batch(11, 5, sku="X", location="east", lot="LOT-7", expires=at(3), version=42)
    [la] = allocate([OrderLine("X", 2)], [b], now=NOW)
    [a] = la.allocations
    assert (a.batch_id, a.sku, a.location, a.lot_number, a.quantity, a.batch_version) == (
        11,
        "X",
        "east",
        "LOT-7",
        2,
        42,
    )


def test_several_lines_are_served_in_order() -> None:
    batches = [batch(1, 5, sku="A"), batch(2, 5, sku="B"), batch(3, 5, sku="C")]
    lines = [OrderLine("C", 1), OrderLine("A", 2), OrderLine("B", 3)]
    result = allocate(lines, batches, now=NOW)
    assert [la.line for la in result] == lines
    assert taken(result) == [[(3, 1)], [(1, 2)], [(2, 3)]]


def test_all_short_lines_are_reported_together() -> None:
    batches = [batch(1, 5, sku="A"), batch(2, 1, sku="B"), batch(3, 2, sku="C", expires=NOW)]
    lines = [OrderLine("A", 6), OrderLine("B", 1), OrderLine("C", 2), OrderLine("D", 4)]
    with pytest.raises(InsufficientStock) as info:
        allocate(lines, batches, now=NOW)
    err = info.value
    assert err.shortages == [Shortage("A", 6, 5), Shortage("C", 2, 0), Shortage("D", 4, 0)]
    assert err.slug == "insufficient-stock"
    assert err.extensions() == {
        "shortages": [
            {"sku": "A", "requested": 6, "available": 5},
            {"sku": "C", "requested": 2, "available": 0},
            {"sku": "D", "requested": 4, "available": 0},
        ]
    }
    for sku in ("A", "C", "D"):
        assert sku in err.detail


def test_all_or_nothing_one_short_line_fails_the_order() -> None:
    batches = [batch(1, 100, sku="A"), batch(2, 1, sku="B")]
    with pytest.raises(InsufficientStock) as info:
        allocate([OrderLine("A", 1), OrderLine("B", 2)], batches, now=NOW)
    assert info.value.shortages == [Shortage("B", 2, 1)]


def test_duplicate_sku_lines_are_rejected() -> None:
    batches = [batch(1, 100, sku="A")]
    with pytest.raises(InvalidRequest, match="'A'") as info:
        allocate([OrderLine("A", 1), OrderLine("B", 1), OrderLine("A", 2)], batches, now=NOW)
    assert info.value.slug == "validation"


def test_duplicate_lines_are_rejected_before_stock_is_checked() -> None:
    # No stock at all: the ambiguity is still what is reported.
    with pytest.raises(InvalidRequest):
        allocate([OrderLine("A", 1), OrderLine("A", 1)], [], now=NOW)


def test_exact_fit_uses_every_unit() -> None:
    batches = [batch(1, 2, expires=at(1)), batch(2, 3)]
    assert taken(allocate([OrderLine("SKU", 5)], batches, now=NOW)) == [[(1, 2), (2, 3)]]


def test_allocate_does_not_mutate_input() -> None:
    batches = [batch(1, 5, expires=at(2)), batch(2, 5, expires=at(1))]
    before = list(batches)
    allocate([OrderLine("SKU", 7)], batches, now=NOW)
    assert batches == before


# -- property ------------------------------------------------------------------------

SKUS = ("A", "B", "C")
LOCATIONS = ("east", "west")


@st.composite
def stock_and_order(
    draw: st.DrawFn,
) -> tuple[list[BatchStock], list[OrderLine], str | None]:
    n = draw(st.integers(0, 8))
    ids = draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n, unique=True))
    batches = []
    for i in ids:
        expires = draw(st.one_of(st.none(), st.integers(-3, 5).map(lambda d: at(d))))
        batches.append(
            batch(
                i,
                draw(st.integers(0, 20)),
                sku=draw(st.sampled_from(SKUS)),
                location=draw(st.sampled_from(LOCATIONS)),
                expires=expires,
                unavailable=draw(st.integers(0, 8)),
                reserved=draw(st.integers(0, 8)),
                committed=draw(st.integers(0, 8)),
            )
        )
    skus = draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True))
    lines = [OrderLine(s, draw(st.integers(1, 25))) for s in skus]
    location = draw(st.one_of(st.none(), st.sampled_from(LOCATIONS)))
    return batches, lines, location


def sellable_total(batches: list[BatchStock], sku: str, location: str | None) -> int:
    """Independent of allocate: what may be sold of ``sku``, counted by hand."""
    total = 0
    for b in batches:
        if b.sku != sku or (location is not None and b.location != location):
            continue
        if b.expires_at is not None and b.expires_at <= NOW:
            continue
        net = b.figures.on_hand - b.figures.unavailable - b.figures.reserved - b.figures.committed
        total += max(net, 0)
    return total


@settings(max_examples=300, deadline=None)
@given(stock_and_order())
def test_allocation_is_exact_or_reports_exactly_the_short_lines(
    case: tuple[list[BatchStock], list[OrderLine], str | None],
) -> None:
    batches, lines, location = case
    by_id = {b.id: b for b in batches}
    short = [
        Shortage(li.sku, li.quantity, sellable_total(batches, li.sku, location))
        for li in lines
        if sellable_total(batches, li.sku, location) < li.quantity
    ]
    if short:
        with pytest.raises(InsufficientStock) as info:
            allocate(lines, batches, now=NOW, location=location)
        assert info.value.shortages == short
        return
    result = allocate(lines, batches, now=NOW, location=location)
    assert [la.line for la in result] == lines
    used: dict[int, int] = {}
    for la in result:
        assert sum(a.quantity for a in la.allocations) == la.line.quantity
        for a in la.allocations:
            assert a.quantity > 0
            b = by_id[a.batch_id]
            assert b.sku == la.line.sku
            assert location is None or b.location == location
            assert b.expires_at is None or b.expires_at > NOW
            used[a.batch_id] = used.get(a.batch_id, 0) + a.quantity
        # FEFO: the batches used are a prefix of the sellable ones in FEFO order, and
        # every batch but the last one used is drained.
        ids = [a.batch_id for a in la.allocations]
        assert ids == sorted(ids, key=lambda i: fefo_key(by_id[i]))
        for a in la.allocations[:-1]:
            assert a.quantity == by_id[a.batch_id].figures.available
        last = fefo_key(by_id[ids[-1]])
        skipped = [
            b.id
            for b in batches
            if b.sku == la.line.sku
            and (location is None or b.location == location)
            and (b.expires_at is None or b.expires_at > NOW)
            and b.figures.available > 0
            and fefo_key(b) < last
            and b.id not in ids
        ]
        assert not skipped, f"FEFO skipped batches {skipped}"
    for batch_id, qty in used.items():
        assert qty <= by_id[batch_id].figures.available
