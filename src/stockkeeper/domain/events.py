"""Domain events: what happened, written to the outbox in the same transaction."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stockkeeper.domain.quantities import StockLevel
from stockkeeper.domain.reservation import Status

ALLOCATED = "inventory.allocated"
RELEASED = "inventory.released"
CONFIRMED = "inventory.confirmed"
EXPIRED = "inventory.expired"
FULFILLED = "inventory.fulfilled"
RECEIVED = "inventory.received"
ADJUSTED = "inventory.adjusted"
LEVEL_CHANGED = "inventory.level_changed"
SHORTFALL = "inventory.shortfall"

EVENT_FOR_STATUS: dict[Status, str] = {
    Status.PENDING: ALLOCATED,
    Status.CANCELLED: RELEASED,
    Status.CONFIRMED: CONFIRMED,
    Status.EXPIRED: EXPIRED,
    Status.FULFILLED: FULFILLED,
}


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row. ``sku`` set means it is ordered within that SKU's sequence."""

    type: str
    payload: dict[str, Any]
    sku: str | None = None
    source: str | None = None


@dataclass(slots=True)
class LevelChange:
    """The absolute figures of one SKU after a change, with its new version."""

    sku: str
    version: int
    level: StockLevel
    cause: str
    source: str | None = None

    def events(self) -> list[Event]:
        f = self.level.figures
        payload: dict[str, Any] = {
            "sku": self.sku,
            "version": self.version,
            "on_hand": f.on_hand,
            "unavailable": f.unavailable,
            "reserved": f.reserved,
            "committed": f.committed,
            "oversold": f.oversold,
            "available": self.level.available,
            "shortfall": self.level.shortfall,
            "cause": self.cause,
        }
        out = [Event(LEVEL_CHANGED, payload, sku=self.sku, source=self.source)]
        if self.level.shortfall > 0:
            out.append(
                Event(
                    SHORTFALL,
                    {
                        "sku": self.sku,
                        "version": self.version,
                        "shortfall": self.level.shortfall,
                        "oversold": f.oversold,
                        "cause": self.cause,
                    },
                    sku=self.sku,
                    source=self.source,
                )
            )
        return out
