"""The WMS rules, pure: reconciliation, identities, outbound lines."""

from __future__ import annotations

import pytest

from stockkeeper.domain.quantities import Delta, Figures
from stockkeeper.domain.wms import (
    Counted,
    SyncKind,
    identity_problem,
    latest_per_batch,
    outbound_lines,
    reconcile,
    sync_kind,
)


def count(
    sku: str = "A",
    on_hand: int = 1,
    lot: str | None = None,
    *,
    location: str = "default",
    unavailable: int = 0,
) -> Counted:
    return Counted(sku, location, lot, None, on_hand, unavailable)


def test_reconcile_moves_only_what_the_wms_counts() -> None:
    ours = Figures(on_hand=10, unavailable=2, reserved=4, committed=1)
    assert reconcile(ours, count(on_hand=7, unavailable=3)) == Delta(on_hand=-3, unavailable=1)
    assert reconcile(ours, count(on_hand=10, unavailable=2)).is_zero


def test_a_batch_without_lot_is_one_identity() -> None:
    assert count(on_hand=1).key == count(on_hand=2).key
    assert count(lot="L").key != count().key
    rows = [count("B"), count("A", 1), count("A", 5)]
    assert [(r.sku, r.on_hand) for r in latest_per_batch(rows)] == [("A", 5), ("B", 1)]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (count(""), "sku must be"),
        (count("x" * 129), "sku must be"),
        (count("."), "dot-segment"),  # D-470: no URL path can name it
        (count(".."), "dot-segment"),
        (count("A\u200bB"), "U+200B"),  # D-473: invisible, a second SKU beside "AB"
        (count(" AB"), "whitespace"),
        (count("AB\x00"), "U+0000"),
        (count(lot="L\u2028X"), "U+2028"),
        (count(lot=".."), "dot-segment"),
        (count(location="has space"), "not a valid location code"),
        (count(lot=""), "lot_number must be"),
        (count(on_hand=-1), "on_hand -1 is outside"),
        (count(unavailable=2**31), "unavailable"),
    ],
)
def test_rows_we_cannot_book_are_named(row: Counted, problem: str) -> None:
    found = identity_problem(row)
    assert found is not None
    assert problem in found


def test_a_good_row_has_no_problem() -> None:
    assert identity_problem(count("SKU-1", 5, "LOT/7", location="WH-1")) is None


def test_force_sync_kind_follows_what_is_named() -> None:
    assert sync_kind(None, None) is SyncKind.FULL
    assert sync_kind("A", None) is SyncKind.SKU
    assert sync_kind("A", 3) is SyncKind.BATCH


def test_outbound_lines_map_reservation_events_to_wms_actions() -> None:
    p = {"order_id": "o", "lines": [{"sku": "A", "batch_id": 2, "quantity": 1}]}
    assert outbound_lines("m", "inventory.allocated", p)[0].action.value == "allocate"
    assert outbound_lines("m", "inventory.expired", p)[0].action.value == "release"
    assert outbound_lines("m", "inventory.released", p)[0].action.value == "release"
    assert outbound_lines("m", "inventory.confirmed", p)[0].action.value == "confirm"
    assert outbound_lines("m", "inventory.fulfilled", p) == []


def test_outbound_event_ids_are_stable_and_unique_per_batch() -> None:
    p = {
        "order_id": "o",
        "lines": [
            {"sku": "B", "batch_id": 9, "quantity": 1},
            {"sku": "A", "batch_id": 2, "quantity": 1},
            {"sku": "A", "batch_id": 2, "quantity": 2},
        ],
    }
    lines = outbound_lines("msg", "inventory.allocated", p)
    assert [(li.event_id, li.quantity) for li in lines] == [("msg:2", 3), ("msg:9", 1)]
    assert lines == outbound_lines("msg", "inventory.allocated", p)
