"""The outbox, ``domain_event``: services add events in their own transaction; the
dispatcher claims them, publishes them and marks them SENT (or spends an attempt).

Functions take a connection inside the caller's transaction; none opens its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from stockkeeper.domain.events import Event
from stockkeeper.observability.tracing import current_traceparent
from stockkeeper.store.errors import translated
from stockkeeper.store.idempotency import NO_KEY, KeyRecord
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q

# Dispatchers LISTEN here; every transaction that writes events wakes them on commit.
NOTIFY_CHANNEL = "stockkeeper_outbox"


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """One outbox row on its way to the broker."""

    id: int
    event_id: uuid.UUID
    event_type: str
    sku: str | None
    sequence: int | None
    source: str | None
    payload: Any
    occurred_at: datetime
    attempts: int
    ordering_key: str
    # The W3C traceparent of the span that wrote the event (tracing on), D-241.
    trace_context: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> PendingEvent:
        """From a row with the columns of ``outbox_claim``."""
        return cls(
            row["id"],
            row["event_id"],
            row["event_type"],
            row["sku"],
            row["sequence"],
            row["source"],
            row["payload"],
            row["occurred_at"],
            row["attempts"],
            row["ordering_key"],
            row["trace_context"],
        )


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    failed: int
    oldest_pending_s: float | None


async def add(conn: Conn, events: Sequence[Event]) -> list[uuid.UUID]:
    if not events:
        return []
    ids = [uuid.uuid4() for _ in events]
    await conn.execute(q("insert_events"), *_event_columns(ids, events), *NO_KEY)
    return ids


@translated
async def add_with_key(conn: Conn, events: Sequence[Event], key: KeyRecord) -> bool:
    """``events`` (at least one) and the Idempotency-Key row ``key`` in one round trip
    (D-365); False when another request holds the key (nothing of it written, the
    events are: the caller rolls its transaction back)."""
    assert events, "a key alone is idempotency.record_key"
    ids = [uuid.uuid4() for _ in events]
    row = await conn.fetchrow(q("insert_events"), *_event_columns(ids, events), *key.params())
    assert row is not None  # one row: the aggregate's
    keyed: bool = row["keyed"]
    return keyed


def _event_columns(ids: Sequence[uuid.UUID], events: Sequence[Event]) -> tuple[Any, ...]:
    """``insert_events``' parameters $1 to $8."""
    return (
        list(ids),
        [e.type for e in events],
        [e.sku for e in events],
        [e.source for e in events],
        [orjson.dumps(e.payload).decode() for e in events],
        NOTIFY_CHANNEL,
        [e.ordering_key for e in events],
        current_traceparent(),
    )


async def claim(conn: Conn, limit: int, ahead_of: Sequence[int] = ()) -> list[PendingEvent]:
    """Up to ``limit`` of the oldest PENDING events, locked until the transaction ends,
    that may go out now: an event waits while another dispatcher holds an earlier event
    of its ordering key, or it could reach the broker first.

    ``ahead_of``: rows this dispatcher holds in an earlier transaction, still open, and
    has already handed to the broker ahead of whatever this claim publishes (its batch
    in flight, D-375); they do not hold back their keys' later rows. Its other rows (not
    published) do, as another dispatcher's would."""
    rows = [PendingEvent.from_row(r) for r in await conn.fetch(q("outbox_claim"), limit)]
    if not rows:
        return []
    ids = [r.id for r in rows]
    keys = sorted({r.ordering_key for r in rows})
    ours = [*ids, *ahead_of]
    held: dict[str, int] = {
        b["ordering_key"]: b["first_held"]
        for b in await conn.fetch(q("outbox_blocked_keys"), keys, max(ids), ours)
    }
    return [r for r in rows if r.id < held.get(r.ordering_key, r.id + 1)]


async def mark_sent(conn: Conn, ids: Sequence[int]) -> None:
    await conn.execute(q("outbox_mark_sent"), list(ids))


async def fail_attempt(conn: Conn, ids: Sequence[int], error: str, max_attempts: int) -> list[int]:
    """Spend one attempt of each event in ``ids``; return those that are now FAILED (the
    attempt was their last)."""
    rows = await conn.fetch(q("outbox_mark_failed_attempt"), list(ids), error[:2000], max_attempts)
    return [r["id"] for r in rows if r["status"] == "FAILED"]


async def backlog(conn: Conn) -> int:
    n: int = await conn.fetchval(q("outbox_backlog"))
    return n


@translated
async def stats(conn: Conn) -> OutboxStats:
    """PENDING and FAILED counts, and how long the oldest PENDING event has waited."""
    row = await conn.fetchrow(q("outbox_stats"))
    assert row is not None  # an aggregate without GROUP BY always has its one row
    return OutboxStats(row["pending"], row["failed"], row["oldest_pending_s"])


@translated
async def pending_ingest(conn: Conn) -> int:
    """Ingest messages (``ingest.*`` events) not yet published to the broker."""
    n: int = await conn.fetchval(q("outbox_pending_ingest"))
    return n
