"""FEFO allocation: which batches serve an order.

Earliest expiry first; batches without an expiry date last; ties broken by batch id so
the result is deterministic. An expired batch is never allocated, and when the order
names a location only batches there are considered. All lines are served or none, and
every short line is reported together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockkeeper.domain.errors import InsufficientStock, InvalidRequest, Shortage
from stockkeeper.domain.quantities import Figures


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class BatchStock:
    """What allocation needs to know of one batch."""

    id: int
    sku: str
    location: str
    lot_number: str | None
    expires_at: datetime | None
    figures: Figures
    version: int = 0

    def is_sellable(self, now: datetime, location: str | None) -> bool:
        if location is not None and self.location != location:
            return False
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, slots=True)
class Allocation:
    """Part of one line taken from one batch."""

    batch_id: int
    sku: str
    location: str
    lot_number: str | None
    quantity: int
    batch_version: int = 0


@dataclass(frozen=True, slots=True)
class LineAllocation:
    line: OrderLine
    allocations: tuple[Allocation, ...]


def fefo_key(batch: BatchStock) -> tuple[bool, datetime | None, int]:
    # (no expiry?, expiry, id): dated batches first, soonest first, then by id.
    return (batch.expires_at is None, batch.expires_at, batch.id)


def check_lines(lines: Sequence[OrderLine]) -> None:
    """Reject an order that names a SKU twice; its meaning would be ambiguous."""
    seen: set[str] = set()
    for line in lines:
        if line.sku in seen:
            raise InvalidRequest(f"sku {line.sku!r} appears on more than one line", "body.lines")
        seen.add(line.sku)


def same_lines(a: Iterable[OrderLine], b: Iterable[OrderLine]) -> bool:
    """Whether two requests of one order ask for the same thing: the same quantity of
    the same SKUs, in any order (an order names a SKU once, so the order of its lines
    means nothing, D-423)."""
    return sorted((li.sku, li.quantity) for li in a) == sorted((li.sku, li.quantity) for li in b)


def lines_of(doc: Iterable[Mapping[str, Any]]) -> tuple[OrderLine, ...]:
    """The lines as stored (``[{sku, quantity}]``, a reservation's or an order's)."""
    return tuple(OrderLine(li["sku"], li["quantity"]) for li in doc)


def unknown_location(location: str) -> InvalidRequest:
    """A reserve at a location no receipt, count or WMS ever named: a caller's typo or
    configuration bug, as an unknown SKU is (D-002), not a stock-out (D-424). Asked
    only once the reserve came up short, so the happy path never looks."""
    return InvalidRequest(f"unknown location: {location}", "body.location")


def sellable(
    batches: Iterable[BatchStock], sku: str, now: datetime, location: str | None
) -> list[BatchStock]:
    """The batches that may serve ``sku``, in FEFO order."""
    chosen = [b for b in batches if b.sku == sku and b.is_sellable(now, location)]
    chosen.sort(key=fefo_key)
    return chosen


def allocate(
    lines: Sequence[OrderLine],
    batches: Iterable[BatchStock],
    *,
    now: datetime,
    location: str | None = None,
) -> list[LineAllocation]:
    """Serve every line from sellable batches in FEFO order, or raise InsufficientStock."""
    check_lines(lines)
    pool = list(batches)
    result: list[LineAllocation] = []
    shortages: list[Shortage] = []
    for line in lines:
        candidates = sellable(pool, line.sku, now, location)
        total = sum(b.figures.available for b in candidates)
        if total < line.quantity:
            shortages.append(Shortage(line.sku, line.quantity, total))
            continue
        remaining = line.quantity
        taken: list[Allocation] = []
        for batch in candidates:
            if remaining == 0:
                break
            qty = min(remaining, batch.figures.available)
            if qty <= 0:
                continue
            taken.append(
                Allocation(
                    batch.id, batch.sku, batch.location, batch.lot_number, qty, batch.version
                )
            )
            remaining -= qty
        result.append(LineAllocation(line, tuple(taken)))
    if shortages:
        raise InsufficientStock(shortages)
    return result
