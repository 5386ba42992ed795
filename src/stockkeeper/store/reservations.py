"""Repository for reservations and their per-batch allocations."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from stockkeeper.domain.allocation import BatchStock, LineAllocation
from stockkeeper.domain.quantities import Delta
from stockkeeper.domain.reservation import Status
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q
from stockkeeper.store.stock import batch_from_row


@dataclass(frozen=True, slots=True)
class ReservationRow:
    id: int
    order_id: str
    status: Status
    location: str | None
    lines: list[dict[str, Any]]
    expires_at: datetime
    reason: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class AllocationRow:
    line_no: int
    sku: str
    batch_id: int
    quantity: int
    lot_number: str | None
    location: str


def _row(r: asyncpg.Record) -> ReservationRow:
    return ReservationRow(
        r["id"],
        r["order_id"],
        Status(r["status"]),
        r["location"],
        r["lines"],
        r["expires_at"],
        r["reason"],
        r["created_at"],
        r["updated_at"],
    )


@translated
async def insert(
    conn: Conn,
    order_id: str,
    location: str | None,
    lines: list[dict[str, Any]],
    expires_at: datetime,
) -> int | None:
    """The new reservation's id, or None if the order_id already has one."""
    rid: int | None = await conn.fetchval(
        q("insert_reservation"), order_id, location, lines, expires_at
    )
    return rid


@translated
async def start(
    conn: Conn,
    order_id: str,
    location: str | None,
    lines: list[dict[str, Any]],
    expires_at: datetime,
    skus: Sequence[str],
    *,
    lock: bool = False,
) -> tuple[int | None, list[BatchStock], set[str]]:
    """``insert`` and the SKUs' batches (``stock.read_batches``, locked in id order with
    ``lock``) in one round trip: the new reservation's id (None: the order_id already
    has one, and no batch is read), the batches, and which of ``skus`` do not exist
    (none looked up for a repeat)."""
    rows = await conn.fetch(
        q("reserve_start_lock" if lock else "reserve_start_read"),
        order_id,
        location,
        lines,
        expires_at,
        list(skus),
    )
    rid: int | None = rows[0]["reservation_id"]
    unknown = set(rows[0]["unknown"])
    return rid, [batch_from_row(r) for r in rows if r["id"] is not None], unknown


@dataclass(frozen=True, slots=True)
class Locked:
    """A reservation locked for a step, its allocations, and whether it is the
    reservation of an order still to be paid (D-425)."""

    row: ReservationRow
    allocations: list[AllocationRow]
    of_order: bool


@translated
async def with_allocations(
    conn: Conn, order_id: str
) -> tuple[ReservationRow, list[AllocationRow]] | None:
    """``get`` and its ``allocations`` in one round trip."""
    rows = await conn.fetch(q("reservation_with_allocations"), order_id)
    return None if not rows else (_row(rows[0]), _allocations(rows))


@translated
async def lock_for_step(conn: Conn, order_id: str) -> Locked | None:
    """``with_allocations``, the reservation locked, in one round trip."""
    rows = await conn.fetch(q("lock_reservation_allocations"), order_id)
    return None if not rows else Locked(_row(rows[0]), _allocations(rows), rows[0]["of_order"])


def _allocations(rows: list[asyncpg.Record]) -> list[AllocationRow]:
    return [
        AllocationRow(
            r["line_no"],
            r["sku"],
            r["batch_id"],
            r["quantity"],
            r["lot_number"],
            r["batch_location"],
        )
        for r in rows
        if r["batch_id"] is not None
    ]


@translated
async def move(
    conn: Conn,
    reservation_id: int,
    status: Status,
    reason: str | None,
    deltas: Sequence[tuple[int, Delta]],
) -> None:
    """``set_status`` and the batches' deltas (``stock.apply_movements``) in one round
    trip; the batch rows are locked in id order first."""
    merged: dict[int, Delta] = {}
    for bid, d in deltas:
        merged[bid] = merged.get(bid, Delta()) + d
    args = [
        (bid, d.on_hand, d.unavailable, d.reserved, d.committed, d.oversold)
        for bid, d in sorted(merged.items())
        if not d.is_zero
    ]
    cols: list[list[int]] = [list(c) for c in zip(*args, strict=True)] if args else [[]] * 6
    await conn.execute(q("move_reservation"), *cols, reservation_id, status.value, reason)


@translated
async def get(conn: Conn, order_id: str, *, lock: bool = False) -> ReservationRow | None:
    r = await conn.fetchrow(q("lock_reservation" if lock else "get_reservation"), order_id)
    return _row(r) if r else None


@translated
async def insert_lines(conn: Conn, reservation_id: int, lines: Sequence[LineAllocation]) -> None:
    line_nos: list[int] = []
    skus: list[str] = []
    batch_ids: list[int] = []
    qtys: list[int] = []
    for no, la in enumerate(lines):
        for a in la.allocations:
            line_nos.append(no)
            skus.append(a.sku)
            batch_ids.append(a.batch_id)
            qtys.append(a.quantity)
    await conn.execute(
        q("insert_reservation_lines"), reservation_id, line_nos, skus, batch_ids, qtys
    )


@translated
async def allocations(conn: Conn, reservation_ids: Sequence[int]) -> dict[int, list[AllocationRow]]:
    out: dict[int, list[AllocationRow]] = {rid: [] for rid in reservation_ids}
    for r in await conn.fetch(q("reservation_allocations"), list(reservation_ids)):
        out[r["reservation_id"]].append(
            AllocationRow(
                r["line_no"], r["sku"], r["batch_id"], r["quantity"], r["lot_number"], r["location"]
            )
        )
    return out


@translated
async def set_status(
    conn: Conn, reservation_id: int, status: Status, reason: str | None = None
) -> None:
    await conn.execute(q("set_reservation_status"), reservation_id, status.value, reason)


@translated
async def set_statuses(
    conn: Conn, reservation_ids: Sequence[int], status: Status, reason: str | None = None
) -> None:
    """Many reservations to one status, in one statement."""
    await conn.execute(q("set_reservation_statuses"), list(reservation_ids), status.value, reason)


@translated
async def claim_overdue(conn: Conn, now: datetime, limit: int) -> list[ReservationRow]:
    return [_row(r) for r in await conn.fetch(q("claim_overdue_reservations"), now, limit)]
