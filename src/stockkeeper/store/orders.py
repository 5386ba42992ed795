"""Repository for orders (the saga's state). Functions run in the caller's transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import asyncpg
import orjson

from stockkeeper.domain.events import Event
from stockkeeper.domain.orders import OrderStatus
from stockkeeper.observability.tracing import current_traceparent
from stockkeeper.store.errors import translated
from stockkeeper.store.idempotency import NO_KEY, KeyRecord
from stockkeeper.store.outbox import NOTIFY_CHANNEL
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


@dataclass(frozen=True, slots=True)
class Placed:
    """What :func:`place` did: the new order's id, or None and the checks' findings."""

    id: int | None
    unknown: list[str]
    reserved: bool
    keyed: bool = False  # the Idempotency-Key went in with the order


@translated
async def place(
    conn: Conn,
    order_id: str,
    lines: list[dict[str, Any]],
    ship_to: dict[str, Any],
    required_delivery_date: date | None,
    now: datetime,
    *,
    date_ok: bool,
    event: Event,
    key: KeyRecord | None = None,
) -> Placed:
    """A new order and its saga's first command ``event``, in one statement, if every
    check passes (its SKUs known, its id holding no reservation, ``date_ok``) and its
    order_id is free; else nothing is written. Atomic on its own: no transaction needed.

    ``key``: an Idempotency-Key row, written with the order (only if it goes in); when
    another request holds the key nothing is written and ``UniqueViolated`` (on
    ``idempotency.KEY_CONSTRAINT``) is raised (D-366)."""
    r = await conn.fetchrow(
        q("place_order"),
        order_id,
        lines,
        ship_to,
        required_delivery_date,
        now,
        [li["sku"] for li in lines],
        date_ok,
        uuid.uuid4(),
        event.type,
        orjson.dumps(event.payload).decode(),
        event.ordering_key,
        current_traceparent(),
        NOTIFY_CHANNEL,
        *(key.params() if key is not None else NO_KEY),
    )
    assert r is not None  # one row: the checks'
    return Placed(r["id"], list(r["unknown"]), bool(r["reserved"]), bool(r["keyed"]))


@dataclass(frozen=True, slots=True)
class ReserveStart:
    """The order as the saga's reserve step found it: ``moved`` to AWAITING_PAYMENT (the
    step goes on, with its lines), or not (it had left PENDING: nothing to do)."""

    id: int
    moved: bool
    created_at: datetime
    lines: list[tuple[str, int]]
    reserved_before: bool  # its order_id held a reservation before the step


@translated
async def start_reserve(
    conn: Conn, order_id: str, payment_due_at: datetime, now: datetime
) -> ReserveStart | None:
    """Lock the order and, if PENDING, move it to AWAITING_PAYMENT, due at
    ``payment_due_at``, decided ``now``; None: no such order."""
    rows = await conn.fetch(q("start_reserve_order"), order_id, payment_due_at, now)
    if not rows:
        return None
    r = rows[0]
    if not r["moved"]:
        return ReserveStart(r["id"], False, r["created_at"], [], False)
    return ReserveStart(
        r["id"],
        True,
        r["created_at"],
        list(zip(r["skus"], r["quantities"], strict=True)),
        bool(r["reserved"]),
    )


@translated
async def start_reserve_many(
    conn: Conn, order_ids: list[str], payment_due_at: datetime, now: datetime
) -> dict[str, ReserveStart]:
    """``start_reserve`` for several orders in one statement (D-371), the orders locked in
    order_id order; an order_id missing from the answer is no order."""
    rows = await conn.fetch(q("start_reserve_orders"), order_ids, payment_due_at, now)
    return {
        r["order_id"]: ReserveStart(
            r["id"],
            r["moved"],
            r["created_at"],
            list(zip(r["skus"], r["quantities"], strict=True)) if r["moved"] else [],
            bool(r["reserved"]),
        )
        for r in rows
    }


@dataclass(frozen=True, slots=True)
class Refusal:
    """An order the reserve step refused, and why."""

    id: int
    reason: str
    shortages: list[dict[str, Any]] | None


@translated
async def refuse_many(conn: Conn, refusals: list[Refusal], now: datetime) -> None:
    """``refuse`` for several orders in one statement, their reservation rows already
    taken back (the batch reserve drops the rows of the requests it refused)."""
    if not refusals:
        return
    await conn.execute(
        q("refuse_orders"),
        [r.id for r in refusals],
        [r.reason for r in refusals],
        [None if r.shortages is None else orjson.dumps(r.shortages).decode() for r in refusals],
        now,
    )


@translated
async def refuse(
    conn: Conn,
    order_id: str,
    oid: int,
    reason: str,
    shortages: list[dict[str, Any]] | None,
    now: datetime,
) -> None:
    """The reserve step refused: FAILED, the refused reserve's reservation row dropped."""
    await conn.execute(q("refuse_order"), order_id, oid, reason, shortages, now)


@translated
async def set_payment_due(conn: Conn, oid: int, payment_due_at: datetime) -> None:
    await conn.execute(q("set_payment_due"), oid, payment_due_at)


@translated
async def move_from(
    conn: Conn,
    order_id: str,
    sources: frozenset[OrderStatus],
    target: OrderStatus,
    now: datetime,
    *,
    reason: str | None = None,
    set_reason: bool = False,
    carrier: dict[str, Any] | None = None,
) -> bool:
    """Move the order to ``target`` if it is in one of ``sources``; whether it was.
    ``set_reason``: its reason becomes ``reason`` (None clears it); ``carrier`` when given."""
    oid = await conn.fetchval(
        q("move_order_from"),
        order_id,
        sorted(s.value for s in sources),
        target.value,
        reason,
        carrier,
        now,
        set_reason,
    )
    return oid is not None
