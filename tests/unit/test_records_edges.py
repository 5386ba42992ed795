"""Source records that used to sink their page (D-484): a value JSON cannot carry is
refused as its own record, and a price with more than four decimals is rounded, not a
refusal of the level it comes with."""

from __future__ import annotations

from decimal import Decimal

from stockkeeper.connectors.records import parse_levels, parse_sales

AT = "2030-01-01T00:00:00Z"


def test_an_integer_past_64_bits_is_one_refused_record() -> None:
    raw = [
        {"sku": "A", "on_hand": 1, "source_updated_at": AT},
        {"sku": "HUGE", "on_hand": 10**20, "source_updated_at": AT},  # numeric(38,10)
        {"sku": "Z", "on_hand": 3, "source_updated_at": AT},
    ]
    good, bad = parse_levels(raw)
    assert [r.sku for r in good] == ["A", "Z"]
    (refused,) = bad
    assert refused.raw["sku"] == "HUGE"
    assert "64-bit" in refused.error


def test_a_negated_u64_quantity_is_one_refused_sale() -> None:
    raw = [
        {"transaction_id": "t-1", "sku": "A", "delta": -1, "source": "mp"},
        {"transaction_id": "t-2", "sku": "B", "delta": -(2**64 - 1), "source": "mp"},
    ]
    good, bad = parse_sales(raw)
    assert [s.transaction_id for s in good] == ["t-1"]
    assert [r.raw["transaction_id"] for r in bad] == ["t-2"]


def test_a_price_with_five_decimals_is_rounded_and_its_level_kept() -> None:
    raw = [
        {"sku": "SCREW", "on_hand": 9000, "source_updated_at": AT, "price": "0.00125"},
        {"sku": "NUT", "on_hand": 5, "source_updated_at": AT, "price": 0.00004},
        {"sku": "BOLT", "on_hand": 5, "source_updated_at": AT, "price": "1.5"},
    ]
    good, bad = parse_levels(raw)
    assert bad == []
    assert [(r.sku, r.price) for r in good] == [
        ("SCREW", Decimal("0.0013")),
        ("NUT", Decimal("0.0000")),
        ("BOLT", Decimal("1.5")),
    ]
