"""Outbox writes: domain events into ``domain_event``, in the caller's transaction."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from stockkeeper.domain.events import Event
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q

# Dispatchers LISTEN here; every transaction that writes events wakes them on commit.
NOTIFY_CHANNEL = "stockkeeper_outbox"


async def add(conn: Conn, events: Sequence[Event]) -> list[uuid.UUID]:
    if not events:
        return []
    ids = [uuid.uuid4() for _ in events]
    await conn.execute(
        q("insert_events"),
        ids,
        [e.type for e in events],
        [e.sku for e in events],
        [e.source for e in events],
        [orjson.dumps(e.payload).decode() for e in events],
        NOTIFY_CHANNEL,
    )
    return ids


async def backlog(conn: Conn) -> int:
    n: int = await conn.fetchval(q("outbox_backlog"))
    return n


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    failed: int
    oldest_pending_s: float | None


@translated
async def stats(conn: Conn) -> OutboxStats:
    """Events waiting to be published, events given up on, and the oldest wait."""
    r = await conn.fetchrow(q("outbox_stats"))
    assert r is not None
    return OutboxStats(r["pending"], r["failed"], r["oldest_pending_s"])


@translated
async def pending_ingest(conn: Conn) -> int:
    """Ingest messages (``ingest.*`` events) not yet published to the broker."""
    n: int = await conn.fetchval(q("outbox_pending_ingest"))
    return n
