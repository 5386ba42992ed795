"""Repository for the WMS tables: snapshots, sync requests and state, outbound items.

Functions take a connection inside the caller's transaction; none opens its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from stockkeeper.domain.wms import Counted
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class OutboundRow:
    """One allocation, release or confirmation on its way to the WMS."""

    id: int
    event_id: str
    message_id: uuid.UUID
    action: str
    order_id: str
    sku: str
    location: str
    lot_number: str | None
    quantity: int
    attempts: int


@dataclass(frozen=True, slots=True)
class CallRow:
    """One try of one call to the WMS, for the audit table."""

    operation: str
    attempt: int
    status_code: int | None
    outcome: str
    duration_ms: float
    error: str | None
    items: int | None = None
    first_item: int | None = None
    last_item: int | None = None


@dataclass(frozen=True, slots=True)
class MovedBatch:
    """A batch a page of counts moved: its ADJUSTMENT, and how far short it left us."""

    id: int
    sku: str
    location: str
    lot_number: str | None
    d_on_hand: int
    d_unavailable: int
    d_oversold: int
    oversell: int


@translated
async def reconcile_page(
    conn: Conn, connector: str, request_id: int | None, rows: Sequence[Counted]
) -> list[MovedBatch]:
    """A page of counts (one per batch, in page order) into the batches, set-based.

    A constant number of statements whatever the page's size: the SKUs and locations
    made, the batches we did not know created at the count, every batch of the page
    locked in id order, then one statement that moves the batches that differ, upserts
    the snapshot rows and returns the moves (the caller writes their ledger entries).
    """
    if not rows:
        return []
    skus = [r.sku for r in rows]
    locations = [r.location for r in rows]
    lots = [r.lot_number for r in rows]
    on_hand = [r.on_hand for r in rows]
    unavailable = [r.unavailable for r in rows]
    await conn.execute(q("plan_page"))
    await conn.execute(q("ensure_locations"), sorted(set(locations)))
    await conn.execute(q("ensure_skus"), sorted(set(skus)))
    created = await conn.fetch(
        q("insert_counted_batches"),
        skus,
        locations,
        lots,
        [r.expires_at for r in rows],
        on_hand,
        unavailable,
    )
    await conn.fetchval(q("lock_page_batches"), skus, locations, lots)
    moved = await conn.fetch(
        q("reconcile_counts"),
        skus,
        locations,
        lots,
        on_hand,
        unavailable,
        [r.counted_at for r in rows],
        [r["id"] for r in created],
        connector,
        request_id,
    )
    return [MovedBatch(*r) for r in moved]


@translated
async def batch_identities(conn: Conn, batch_ids: Sequence[int]) -> dict[int, asyncpg.Record]:
    rows = await conn.fetch(q("batch_identity"), list(batch_ids))
    return {r["id"]: r for r in rows}


@translated
async def insert_request(
    conn: Conn,
    connector: str,
    kind: str,
    sku: str | None,
    batch_id: int | None,
    reason: str,
    requested_by: str,
    priority: int,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        q("insert_sync_request"), connector, kind, sku, batch_id, reason, requested_by, priority
    )
    assert row is not None
    return row


@translated
async def get_request(conn: Conn, request_id: int) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(q("get_sync_request"), request_id)
    return row


@translated
async def open_request_of_kind(conn: Conn, connector: str, kind: str) -> int | None:
    rid: int | None = await conn.fetchval(q("open_request_of_kind"), connector, kind)
    return rid


@translated
async def claim_request(
    conn: Conn, connectors: Sequence[str], stale_after_s: float
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        q("claim_sync_request"), list(connectors), stale_after_s
    )
    return row


@translated
async def record_progress(
    conn: Conn,
    request_id: int,
    *,
    cursor: str | None,
    rows: int,
    rejected: int,
    adjustments: int,
    shortfalls: int,
    start_token: str | None = None,
    total: int | None = None,
) -> None:
    await conn.execute(
        q("sync_progress"),
        request_id,
        cursor,
        start_token,
        rows,
        rejected,
        adjustments,
        shortfalls,
        total,
    )


@translated
async def set_start_token(conn: Conn, request_id: int, token: str) -> None:
    await conn.execute(q("set_start_token"), request_id, token)


@translated
async def finish_request(
    conn: Conn, request_id: int, status: str, error: str | None
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        q("finish_sync_request"), request_id, status, error
    )
    return row


@translated
async def sync_state(conn: Conn, connector: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(q("sync_state"), connector)
    return row


@translated
async def lock_sync_state(conn: Conn, connector: str) -> asyncpg.Record:
    await conn.execute(q("ensure_sync_state"), connector)
    row = await conn.fetchrow(q("lock_sync_state"), connector)
    assert row is not None
    return row


@translated
async def schedule_incremental(conn: Conn, connector: str, at: Any) -> None:
    await conn.execute(q("schedule_incremental"), connector, at)


@translated
async def save_token(conn: Conn, connector: str, token: str, kind: str) -> None:
    await conn.execute(q("save_token"), connector, token, kind)


@translated
async def insert_outbound(
    conn: Conn,
    connector: str,
    message_id: uuid.UUID,
    items: Sequence[tuple[str, str, str, str, str, str | None, int]],
) -> None:
    """``items``: (event_id, action, order_id, sku, location, lot_number, quantity)."""
    cols = list(zip(*items, strict=True)) if items else [()] * 7
    await conn.execute(q("insert_outbound_items"), connector, message_id, *map(list, cols))


@translated
async def outbound_due(conn: Conn, connector: str, limit: int) -> tuple[int, float]:
    row = await conn.fetchrow(q("outbound_due"), connector, limit)
    assert row is not None
    return int(row["due"]), float(row["oldest_s"] or 0.0)


@translated
async def claim_outbound(
    conn: Conn, connector: str, limit: int, lease_s: float
) -> list[OutboundRow]:
    rows = await conn.fetch(q("claim_outbound"), connector, limit, lease_s)
    return sorted((OutboundRow(**dict(r)) for r in rows), key=lambda r: r.id)


@translated
async def outbound_sent(conn: Conn, results: Sequence[tuple[int, str]]) -> None:
    await conn.execute(q("outbound_sent"), [i for i, _ in results], [r for _, r in results])


@translated
async def outbound_retry(conn: Conn, ids: Sequence[int], delay_s: float, error: str) -> None:
    await conn.execute(q("outbound_retry"), list(ids), delay_s, error)


@translated
async def outbound_dead(conn: Conn, ids: Sequence[int], error: str) -> None:
    await conn.execute(q("outbound_dead"), list(ids), error)


@translated
async def outbound_rearm(conn: Conn, connector: str, event_ids: Sequence[str]) -> int:
    done: str = await conn.execute(q("outbound_rearm"), connector, list(event_ids))
    return int(done.rsplit(" ", 1)[1])


@translated
async def status(conn: Conn, connectors: Sequence[str]) -> list[asyncpg.Record]:
    return list(await conn.fetch(q("wms_status"), list(connectors)))


@translated
async def insert_calls(conn: Conn, connector: str, calls: Sequence[CallRow]) -> None:
    if not calls:
        return
    await conn.execute(
        q("insert_wms_calls"),
        connector,
        [c.operation for c in calls],
        [c.attempt for c in calls],
        [c.status_code for c in calls],
        [c.outcome for c in calls],
        [c.duration_ms for c in calls],
        [c.error for c in calls],
        [c.items for c in calls],
        [c.first_item for c in calls],
        [c.last_item for c in calls],
    )
