"""Dead letters, ``dead_letter``: messages that cannot be applied, kept with their error
until someone replays or discards them.

Functions take a connection inside the caller's transaction; none opens its own.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import orjson

from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


async def record(
    conn: Conn,
    *,
    queue: str,
    message_id: str | None,
    routing_key: str,
    body: bytes,
    headers: dict[str, Any],
    error: str,
    attempts: int,
) -> int:
    """Keep a message that failed for good; return the dead letter's id. A body that is
    not JSON, or an id that is not a UUID, is kept as it came (raw body, no id)."""
    try:
        parsed: str | None = orjson.dumps(orjson.loads(body)).decode()
    except orjson.JSONDecodeError:
        parsed = None
    try:
        mid = uuid.UUID(message_id) if message_id else None
    except ValueError:
        mid = None
    row_id: int = await conn.fetchval(
        q("insert_dead_letter"),
        queue,
        mid,
        routing_key,
        parsed,
        body.decode("utf-8", errors="replace"),
        orjson.dumps(headers, default=str).decode(),
        error[:4000],
        attempts,
    )
    return row_id


async def page(
    conn: Conn, queue: str | None, status: str | None, after: int, limit: int
) -> list[asyncpg.Record]:
    """Dead letters with an id above ``after``, oldest first, optionally of one queue or
    status."""
    return list(await conn.fetch(q("list_dead_letters"), queue, status, after, limit))


async def lock(conn: Conn, dead_letter_id: int) -> asyncpg.Record | None:
    """The dead letter, locked until the transaction ends; None if there is none."""
    row: asyncpg.Record | None = await conn.fetchrow(q("lock_dead_letter"), dead_letter_id)
    return row


async def resolve(conn: Conn, dead_letter_id: int, status: str, who: str) -> None:
    """Mark the dead letter REPLAYED or DISCARDED, by ``who``."""
    await conn.execute(q("resolve_dead_letter"), dead_letter_id, status, who)


async def open_counts(conn: Conn) -> dict[str, int]:
    """Dead letters still DEAD, per queue (queues with none are left out)."""
    return {r["queue"]: r["open"] for r in await conn.fetch(q("dead_letter_counts"))}
