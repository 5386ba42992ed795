"""Repository for orders (the saga's state). Functions run in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg

from stockkeeper.domain.orders import OrderStatus
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class OrderRow:
    id: int
    order_id: str
    status: OrderStatus
    lines: list[dict[str, Any]]
    ship_to: dict[str, Any]
    required_delivery_date: date | None
    reason: str | None
    shortages: list[dict[str, Any]] | None
    carrier: dict[str, Any] | None
    payment_reference: str | None
    payment_due_at: datetime | None
    created_at: datetime
    decided_at: datetime | None
    updated_at: datetime


def _row(r: asyncpg.Record) -> OrderRow:
    return OrderRow(
        r["id"],
        r["order_id"],
        OrderStatus(r["status"]),
        r["lines"],
        r["ship_to"],
        r["required_delivery_date"],
        r["reason"],
        r["shortages"],
        r["carrier"],
        r["payment_reference"],
        r["payment_due_at"],
        r["created_at"],
        r["decided_at"],
        r["updated_at"],
    )


@translated
async def insert(
    conn: Conn,
    order_id: str,
    lines: list[dict[str, Any]],
    ship_to: dict[str, Any],
    required_delivery_date: date | None,
    now: datetime,
) -> int | None:
    """The new order's id, or None if the order_id is taken."""
    oid: int | None = await conn.fetchval(
        q("insert_order"), order_id, lines, ship_to, required_delivery_date, now
    )
    return oid


@translated
async def check_new(conn: Conn, order_id: str, skus: list[str]) -> tuple[list[str], bool]:
    """For a new order: its SKUs we do not know, and whether its id holds a reservation."""
    r = await conn.fetchrow(q("check_new_order"), skus, order_id)
    assert r is not None
    return list(r["unknown"]), bool(r["reserved"])


@translated
async def get(conn: Conn, order_id: str, *, lock: bool = False) -> OrderRow | None:
    r = await conn.fetchrow(q("lock_order" if lock else "get_order"), order_id)
    return _row(r) if r else None


@translated
async def save(conn: Conn, row: OrderRow) -> None:
    """Write the saga's part of ``row``: status, reason, shortages, carrier, payment."""
    await conn.execute(
        q("save_order"),
        row.id,
        row.status.value,
        row.reason,
        row.shortages,
        row.carrier,
        row.payment_reference,
        row.payment_due_at,
        row.decided_at,
        row.updated_at,
    )
