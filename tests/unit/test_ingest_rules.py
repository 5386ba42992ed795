"""Ingestion rules, pure: newest per key, levels across lots, sales, prices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from stockkeeper.domain.allocation import BatchStock
from stockkeeper.domain.ingest import (
    Level,
    PricingRule,
    level_moves,
    newest_per_key,
    sale_moves,
)
from stockkeeper.domain.quantities import Delta, Figures

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def batch(
    bid: int,
    on_hand: int,
    *,
    lot: str | None = None,
    days: int | None = None,
    reserved: int = 0,
) -> BatchStock:
    expires = NOW + timedelta(days=days) if days is not None else None
    return BatchStock(bid, "S", "default", lot, expires, Figures(on_hand, 0, reserved, 0))


def lv(on_hand: int, seconds: int, location: str = "default") -> Level:
    return Level("erp", "S", location, on_hand, NOW + timedelta(seconds=seconds))


def test_newest_per_key_keeps_the_latest_and_the_last_of_a_tie() -> None:
    got = newest_per_key([lv(1, 5), lv(2, 9), lv(3, 1), lv(4, 9), lv(7, 0, "WH-2")])
    assert [(x.location, x.on_hand) for x in got] == [("WH-2", 7), ("default", 4)]


def test_more_units_go_to_the_unlotted_batch() -> None:
    assert level_moves([batch(1, 2), batch(2, 5, lot="L")], 10) == [(1, Delta(on_hand=3))]
    assert level_moves([batch(1, 2), batch(2, 5, lot="L")], 7) == []


def test_fewer_units_come_from_unlotted_then_the_latest_expiring_lots() -> None:
    batches = [batch(1, 1), batch(2, 5, lot="SOON", days=5), batch(3, 5, lot="LATE", days=50)]
    assert level_moves(batches, 4) == [
        (1, Delta(on_hand=-1)),
        (3, Delta(on_hand=-5)),
        (2, Delta(on_hand=-1)),
    ]


def test_a_sale_takes_sellable_units_first_earliest_expiry_first() -> None:
    batches = [
        batch(1, 3, reserved=3),
        batch(2, 2, lot="LATE", days=50),
        batch(3, 2, lot="SOON", days=5),
    ]
    moves, left = sale_moves(batches, 3, NOW)
    assert moves == [(2, Delta(on_hand=-1)), (3, Delta(on_hand=-2))]
    assert left == 0


def test_a_sale_beyond_the_sellable_takes_held_units_then_reports_the_rest() -> None:
    batches = [batch(1, 3, reserved=3), batch(2, 1, lot="X", days=5)]
    moves, left = sale_moves(batches, 6, NOW)
    assert moves == [(1, Delta(on_hand=-3)), (2, Delta(on_hand=-1))]
    assert left == 2


def test_an_expired_lot_is_sold_last() -> None:
    batches = [batch(1, 2, lot="OLD", days=-1), batch(2, 2, lot="NEW", days=9)]
    moves, _ = sale_moves(batches, 3, NOW)
    assert moves == [(1, Delta(on_hand=-1)), (2, Delta(on_hand=-2))]


def test_pricing_marks_up_and_rounds_to_the_step() -> None:
    rule = PricingRule(Decimal(25), Decimal("0.05"))
    assert rule.price(Decimal("10.00")) == Decimal("12.50")
    assert rule.price(Decimal("9.99")) == Decimal("12.50")
    assert PricingRule().price(Decimal("3.333")) == Decimal("3.33")
