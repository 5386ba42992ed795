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
# Many SKUs' levels in one message: what a transaction that changed many SKUs (a sync
# page, a WMS snapshot) sends instead of one level_changed per SKU (D-220).
LEVELS_CHANGED = "inventory.levels_changed"
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

    def figures(self) -> dict[str, Any]:
        """The absolute figures and version, as every level message carries them."""
        f = self.level.figures
        return {
            "sku": self.sku,
            "version": self.version,
            "on_hand": f.on_hand,
            "unavailable": f.unavailable,
            "reserved": f.reserved,
            "committed": f.committed,
            "oversold": f.oversold,
            "available": self.level.available,
            "shortfall": self.level.shortfall,
        }

    def events(self) -> list[Event]:
        payload = {**self.figures(), "cause": self.cause}
        return [Event(LEVEL_CHANGED, payload, sku=self.sku, source=self.source), *self.shortfall()]

    def shortfall(self) -> list[Event]:
        """The ``inventory.shortfall`` event of this change, if it left the SKU short."""
        f = self.level.figures
        out: list[Event] = []
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


def level_events(changes: list[LevelChange], per_message: int) -> list[Event]:
    """The outbox events for the levels of one transaction.

    One SKU (or ``per_message`` 0): ``inventory.level_changed`` per SKU, as always.
    Several: ``inventory.levels_changed`` messages of up to ``per_message`` SKUs each,
    every SKU with its absolute figures and version, so a consumer applies them in any
    order against the versions it has seen; shortfalls stay one event per SKU. A bulk
    message has an ordering key of its own (its first SKU's, prefixed): the versions,
    not the order, make it safe beside single-SKU messages of the same SKUs.
    """
    if per_message <= 0 or len(changes) <= 1:
        return [e for ch in changes for e in ch.events()]
    out: list[Event] = []
    for i in range(0, len(changes), per_message):
        part = changes[i : i + per_message]
        head = part[0]
        payload = {"cause": head.cause, "levels": [ch.figures() for ch in part]}
        out.append(Event(LEVELS_CHANGED, payload, source=head.source, key=f"levels:{head.sku}"))
    out.extend(e for ch in changes for e in ch.shortfall())
    return out
