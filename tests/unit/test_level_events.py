"""Level events of one transaction: one level_changed per SKU for a single SKU, bulk
levels_changed messages for many (D-220)."""

from __future__ import annotations

from stockkeeper.domain.events import (
    LEVEL_CHANGED,
    LEVELS_CHANGED,
    SHORTFALL,
    LevelChange,
    level_events,
)
from stockkeeper.domain.quantities import Figures, StockLevel


def change(sku: str, version: int, on_hand: int, shortfall: int = 0) -> LevelChange:
    figures = Figures(on_hand, 0, 0, 0, shortfall)
    level = StockLevel(figures, max(0, on_hand - shortfall), shortfall)
    return LevelChange(sku, version, level, "ADJUSTMENT", "erp")


def test_one_sku_keeps_level_changed_with_its_payload() -> None:
    (event,) = level_events([change("A", 3, 5)], per_message=500)
    assert (event.type, event.sku) == (LEVEL_CHANGED, "A")
    assert event.payload == {**change("A", 3, 5).figures(), "cause": "ADJUSTMENT"}


def test_many_skus_travel_in_bulk_messages_of_up_to_n() -> None:
    changes = [change(f"S{i:04}", i + 1, i) for i in range(1201)]
    events = level_events(changes, per_message=500)
    assert [len(e.payload["levels"]) for e in events] == [500, 500, 201]
    assert {e.type for e in events} == {LEVELS_CHANGED}
    assert all(e.sku is None and e.source == "erp" for e in events)
    # Each bulk message its own ordering key; every SKU with its figures and version.
    assert len({e.ordering_key for e in events}) == 3
    flat = [lv for e in events for lv in e.payload["levels"]]
    assert flat == [c.figures() for c in changes]


def test_shortfalls_stay_one_event_per_sku_and_zero_means_per_sku() -> None:
    changes = [change("A", 1, 5), change("B", 1, 2, shortfall=3)]
    bulk = level_events(changes, per_message=500)
    assert [e.type for e in bulk] == [LEVELS_CHANGED, SHORTFALL]
    single = level_events(changes, per_message=0)
    assert [e.type for e in single] == [LEVEL_CHANGED, LEVEL_CHANGED, SHORTFALL]
