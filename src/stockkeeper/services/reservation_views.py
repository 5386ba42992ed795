"""What a reservation looks like to its callers: the request, the lines held with
their batches, and the view every use case answers with (built from the stored rows,
as the rules see them at a moment)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.reservation import Status, is_overdue
from stockkeeper.store.reservations import AllocationRow, ReservationRow


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    order_id: str
    lines: tuple[OrderLine, ...]
    ttl_seconds: int | None = None
    location: str | None = None

    def lines_doc(self) -> list[dict[str, Any]]:
        return [{"sku": li.sku, "quantity": li.quantity} for li in self.lines]


@dataclass(frozen=True, slots=True)
class Allocation:
    """Units of one batch held for a line."""

    batch_id: int
    lot_number: str | None
    location: str
    quantity: int


@dataclass(frozen=True, slots=True)
class HeldLine:
    """A line of the order as asked, and the batches that hold it (FEFO when reserved)."""

    sku: str
    quantity: int
    allocations: list[Allocation]


@dataclass(slots=True)
class ReservationView:
    order_id: str
    status: Status
    expires_at: datetime
    lines: list[HeldLine]
    created: bool = False
    location: str | None = None
    reason: str | None = None


def event_lines(allocs: Sequence[AllocationRow]) -> list[dict[str, Any]]:
    """The lines every reservation event carries: one per batch the order holds."""
    return [
        {
            "sku": a.sku,
            "batch_id": a.batch_id,
            "location": a.location,
            "lot_number": a.lot_number,
            "quantity": a.quantity,
        }
        for a in allocs
    ]


def view_of(row: ReservationRow, allocs: Sequence[AllocationRow], created: bool) -> ReservationView:
    lines = [
        HeldLine(
            asked["sku"],
            asked["quantity"],
            [
                Allocation(a.batch_id, a.lot_number, a.location, a.quantity)
                for a in allocs
                if a.line_no == no
            ],
        )
        for no, asked in enumerate(row.lines)
    ]
    return ReservationView(
        row.order_id, row.status, row.expires_at, lines, created, row.location, row.reason
    )


def as_of(row: ReservationRow, now: datetime) -> ReservationRow:
    """The reservation as the rules see it at ``now``: a PENDING one past its expiry is
    EXPIRED (D-006) whether or not the expiry worker has swept it yet, so a repeated
    reserve never answers "PENDING" for stock it no longer holds (D-426)."""
    if is_overdue(row.status, row.expires_at, now):
        return replace(row, status=Status.EXPIRED, reason=row.reason or "expired")
    return row
