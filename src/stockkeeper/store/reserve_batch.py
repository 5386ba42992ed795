"""Repository for a coalesced batch of reservations: one statement per table.

Functions take a connection inside the caller's transaction; none opens its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from stockkeeper.domain.reservation import EntryType
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.reservations import AllocationRow, ReservationRow
from stockkeeper.store.reservations import _row as reservation_row
from stockkeeper.store.reservations import allocations as reservation_allocations
from stockkeeper.store.sql import q
from stockkeeper.store.stock import Movement, ledger_columns


@dataclass(frozen=True, slots=True)
class NewReservation:
    order_id: str
    location: str | None
    lines: list[dict[str, Any]]
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class NewLine:
    reservation_id: int
    line_no: int
    sku: str
    batch_id: int
    quantity: int


def _json(doc: Any) -> str:
    return orjson.dumps(doc).decode()


@translated
async def insert_reservations(conn: Conn, rows: Sequence[NewReservation]) -> dict[str, int]:
    """Order id -> new reservation id; an order id that already had one is left out."""
    if not rows:
        return {}
    found = await conn.fetch(
        q("batch_insert_reservations"),
        [r.order_id for r in rows],
        [r.location for r in rows],
        [_json(r.lines) for r in rows],
        [r.expires_at for r in rows],
    )
    return {r["order_id"]: r["id"] for r in found}


@translated
async def stored(
    conn: Conn, order_ids: Sequence[str]
) -> dict[str, tuple[ReservationRow, list[AllocationRow]]]:
    """The reservations of ``order_ids`` with their allocations (two statements)."""
    if not order_ids:
        return {}
    rows = [
        reservation_row(r) for r in await conn.fetch(q("batch_get_reservations"), list(order_ids))
    ]
    if not rows:
        return {}
    allocs = await reservation_allocations(conn, [r.id for r in rows])
    return {r.order_id: (r, allocs[r.id]) for r in rows}


@translated
async def drop_reservations(conn: Conn, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(q("batch_drop_reservations"), list(ids))


@translated
async def rewrite_reservations(conn: Conn, rows: Mapping[int, NewReservation]) -> None:
    if not rows:
        return
    ids = sorted(rows)
    await conn.execute(
        q("batch_rewrite_reservations"),
        ids,
        [rows[i].location for i in ids],
        [_json(rows[i].lines) for i in ids],
        [rows[i].expires_at for i in ids],
    )


@translated
async def write_reserved(
    conn: Conn,
    lines: Sequence[NewLine],
    movements: Sequence[Movement],
    *,
    source: str,
) -> bool:
    """The lines, the guarded write of each batch row's summed ``reserved`` delta, the
    ledger rows and the SKU bump, in one statement; whether every batch row took its
    part. The caller holds the batch rows' locks."""
    taken: dict[int, int] = {}
    for m in movements:
        taken[m.batch_id] = taken.get(m.batch_id, 0) + m.delta.reserved
    ids = sorted(taken)
    row = await conn.fetchrow(
        q("batch_reserve_write"),
        *ledger_columns(movements, EntryType.ORDER_ALLOCATE, source, None, None),
        sorted({m.sku for m in movements}),
        [li.reservation_id for li in lines],
        [li.line_no for li in lines],
        [li.sku for li in lines],
        [li.batch_id for li in lines],
        [li.quantity for li in lines],
        ids,
        [taken[i] for i in ids],
    )
    assert row is not None
    moved: int = row["moved"]
    return moved == len(ids)
