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


def sku_key(sku: str) -> str:
    """The ordering key of the events of one SKU."""
    return f"sku:{sku}"


def order_key(order_id: str) -> str:
    """The ordering key of one order's events: its reservation's and its saga's."""
    return f"order:{order_id}"


@dataclass(frozen=True, slots=True)
class Event:
    """One outbox row. ``sku`` set means it is numbered in that SKU's sequence.

    Events of one ordering key reach the broker in the order they were written, with
    any number of dispatchers (D-130): ``key`` when given (``order_key`` for an order's
    events), else the SKU's key, else the event type.
    """

    type: str
    payload: dict[str, Any]
    sku: str | None = None
    source: str | None = None
    key: str | None = None

    @property
    def ordering_key(self) -> str:
        if self.key is not None:
            return self.key
        if self.sku is not None:
            return sku_key(self.sku)
        return self.type


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
