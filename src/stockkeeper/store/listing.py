"""Repository for the admin lists (issue 16): SKUs, reservations, orders, sync requests
and a channel's unsettled SKUs, each one keyset page on an index (queries/listing.sql).

Functions take a connection; none opens a transaction. Each returns at most ``limit``
rows; the caller asks for one more than it shows to know whether a next page exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q

# Above every character a SKU can hold: the end of a prefix's range in byte order.
PREFIX_END = chr(0x10FFFF)

Rows = Sequence[asyncpg.Record]


@translated
async def skus(
    conn: Conn,
    *,
    prefix: str,
    after: str,
    unavailable_only: bool,
    shortfall_only: bool,
    now: datetime,
    limit: int,
) -> Rows:
    upper = prefix + PREFIX_END if prefix else PREFIX_END * 2
    return await conn.fetch(
        q("list_skus"), prefix, upper, after, unavailable_only, shortfall_only, now, limit
    )


@translated
async def reservations(
    conn: Conn, *, status: str | None, sku: str | None, after: int, limit: int
) -> Rows:
    if sku is not None:
        return await conn.fetch(q("list_reservations_of_sku"), sku, after, limit, status)
    if status is None:
        return await conn.fetch(q("list_reservations"), after, limit)
    return await conn.fetch(q("list_reservations_by_status"), status, after, limit)


@translated
async def expiring_reservations(
    conn: Conn, *, before: datetime, sku: str | None, after: tuple[datetime, int], limit: int
) -> Rows:
    return await conn.fetch(q("list_reservations_expiring"), before, after[0], after[1], limit, sku)


@translated
async def orders(
    conn: Conn,
    *,
    status: str | None,
    placed_before: datetime,
    after: tuple[datetime, int],
    limit: int,
) -> Rows:
    if status is None:
        return await conn.fetch(q("list_orders"), placed_before, after[0], after[1], limit)
    return await conn.fetch(
        q("list_orders_by_status"), status, placed_before, after[0], after[1], limit
    )


@translated
async def sync_requests(conn: Conn, *, status: str | None, below: int, limit: int) -> Rows:
    if status is None:
        return await conn.fetch(q("list_sync_requests"), below, limit)
    return await conn.fetch(q("list_sync_requests_by_status"), status, below, limit)


@translated
async def channel_skus(conn: Conn, *, channel: str, state: str, after: str, limit: int) -> Rows:
    return await conn.fetch(q("list_channel_skus"), channel, state, after, limit)


@translated
async def lag_series(conn: Conn, *, since: datetime, bucket_s: int) -> Rows:
    return await conn.fetch(q("channel_lag_series"), since, float(bucket_s))
