"""Ingestion rules, pure: newest per key, levels across lots, sales, prices."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from stockkeeper.domain.allocation import BatchStock
from stockkeeper.domain.ingest import (
    Level,
    PricingRule,
    home_batch,
    level_moves,
    newest_per_key,
    sale_moves,
    sale_return_moves,
)
from stockkeeper.domain.quantities import Delta, Figures, oversell

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def batch(
    bid: int,
    on_hand: int,
    *,
    lot: str | None = None,
    days: int | None = None,
    reserved: int = 0,
    oversold: int = 0,
) -> BatchStock:
    expires = NOW + timedelta(days=days) if days is not None else None
    figures = Figures(on_hand, 0, reserved, 0, oversold)
    return BatchStock(bid, "S", "default", lot, expires, figures)


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


def test_oversold_units_are_owed_so_they_count_as_shortfall_not_as_available() -> None:
    f = Figures(on_hand=0, oversold=2)
    assert (f.available, f.shortfall, f.is_valid) == (0, 2, True)
    after_receipt = f.apply(Delta(on_hand=5))
    assert (after_receipt.available, after_receipt.shortfall) == (3, 0)
    assert not Figures(oversold=-1).is_valid


def test_oversell_is_the_shortfall_a_report_added() -> None:
    before = Figures(on_hand=5, reserved=4)
    assert oversell(before, before.apply(Delta(on_hand=-3))) == 2
    assert oversell(before, before.apply(Delta(on_hand=-5, oversold=3))) == 7
    assert oversell(Figures(oversold=2), Figures(on_hand=4)) == 0  # a count settled it


def test_an_absolute_level_settles_what_was_oversold_at_the_place() -> None:
    moves = level_moves([batch(1, 0, oversold=2), batch(2, 1, lot="L", days=5)], 4)
    assert moves == [(1, Delta(on_hand=3, oversold=-2))]
    assert level_moves([batch(1, 0, oversold=2)], 0) == [(1, Delta(oversold=-2))]


def test_a_return_first_cancels_oversold_units_then_goes_on_the_shelf() -> None:
    lots = [batch(1, 0, oversold=2), batch(2, 1, lot="L", days=5)]
    assert sale_return_moves(lots, 1) == [(1, Delta(oversold=-1))]
    assert sale_return_moves(lots, 5) == [(1, Delta(on_hand=3, oversold=-2))]


def test_the_home_batch_is_the_lotless_one_at_the_default_location() -> None:
    assert home_batch([batch(2, 0, lot="L", days=5), batch(3, 0)]).id == 3
    assert home_batch([batch(2, 0, lot="L", days=5), batch(4, 0, lot="M")]).id == 2
