"""Repository for ``dead_letter``: messages that could not be handled, kept with their
reason until an operator replays or discards them.

Functions take a connection inside the caller's transaction; none opens its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    queue: str
    message_id: uuid.UUID | None
    routing_key: str
    body: Any
    raw_body: bytes | None
    headers: dict[str, Any]
    error: str
    attempts: int
    status: str
    created_at: datetime
    resolved_at: datetime | None
    resolved_by: str | None


def _letter(r: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        r["id"],
        r["queue"],
        r["message_id"],
        r["routing_key"],
        r["body"],
        bytes(r["raw_body"]) if r["raw_body"] is not None else None,
        r["headers"],
        r["error"],
        r["attempts"],
        r["status"],
        r["created_at"],
        r["resolved_at"],
        r["resolved_by"],
    )


@translated
async def page(
    conn: Conn, queue: str | None, status: str | None, after: int, limit: int
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters with an id above ``after``, oldest first; a None
    queue or status matches every one."""
    rows = await conn.fetch(q("list_dead_letters"), queue, status, after, limit)
    return [_letter(r) for r in rows]


@translated
async def lock(conn: Conn, dead_letter_id: int) -> DeadLetter | None:
    """The dead letter, locked until the caller's transaction ends."""
    row = await conn.fetchrow(q("lock_dead_letter"), dead_letter_id)
    return _letter(row) if row else None


@translated
async def resolve(conn: Conn, dead_letter_id: int, status: str, who: str) -> None:
    """Mark it REPLAYED or DISCARDED, by ``who``, now."""
    await conn.execute(q("resolve_dead_letter"), dead_letter_id, status, who)


@translated
async def open_per_queue(conn: Conn) -> dict[str, int]:
    """How many dead letters wait for an operator, per queue."""
    return {r["queue"]: r["open"] for r in await conn.fetch(q("dead_letter_counts"))}


@translated
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
    """Keep a message that failed for good; return the dead letter's id.

    Any message can be kept: the body as the bytes that came, and as JSON too when it
    is JSON that PostgreSQL can hold (jsonb refuses ``\\u0000``); an id that is not a
    UUID is kept as no id; NULs in the headers and the error (text refuses them) are
    replaced by U+FFFD."""
    letter = Letter(queue, message_id, routing_key, body, headers, error, attempts)
    row_id: int = await conn.fetchval(q("insert_dead_letter"), *_values(letter))
    return row_id


@dataclass(frozen=True, slots=True)
class Letter:
    """One message to keep as a dead letter (the arguments of :func:`record`)."""

    queue: str
    message_id: str | None
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    error: str
    attempts: int


@translated
async def record_many(conn: Conn, letters: Sequence[Letter]) -> None:
    """:func:`record` for many messages at once, each its own dead letter, in one
    statement (the bad records of an ingest page)."""
    if not letters:
        return
    columns = list(zip(*(_values(letter) for letter in letters), strict=True))
    await conn.execute(q("insert_dead_letters"), *map(list, columns))


def _values(d: Letter) -> tuple[Any, ...]:
    try:
        loaded = orjson.loads(d.body)
        parsed: str | None = None if _has_nul(loaded) else orjson.dumps(loaded).decode()
    except orjson.JSONDecodeError:
        parsed = None
    try:
        mid = uuid.UUID(d.message_id) if d.message_id else None
    except ValueError:
        mid = None
    return (
        d.queue,
        mid,
        d.routing_key.replace("\x00", "\ufffd"),
        parsed,
        d.body,
        orjson.dumps(_without_nul(d.headers), default=str).decode(),
        d.error[:4000].replace("\x00", "\ufffd"),
        d.attempts,
    )


def _has_nul(value: Any) -> bool:
    return bool(_without_nul(value) != value)


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value
