"""What each consumer has applied: ``processed_message`` (one row per message, so a
redelivery has no second effect) and ``consumer_position`` (the newest sequence per SKU,
for consumers that drop stale events).

Functions take a connection inside the transaction of the consumer's effect, so the
record and the effect commit or vanish together; none opens its own.
"""

from __future__ import annotations

import uuid

from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


async def mark_processed(conn: Conn, consumer: str, message_id: uuid.UUID) -> bool:
    """Record that ``consumer`` applies ``message_id``: False if it already did."""
    return await conn.fetchval(q("mark_processed"), consumer, message_id) is not None


async def advance_position(conn: Conn, consumer: str, sku: str, sequence: int) -> bool:
    """Move ``consumer``'s position on ``sku`` to ``sequence``: False, and no move, when
    it is already there or past it (the event is stale)."""
    return await conn.fetchval(q("advance_position"), consumer, sku, sequence) is not None


async def mark_processed_many(
    conn: Conn, consumer: str, message_ids: list[uuid.UUID]
) -> set[uuid.UUID]:
    """Record a batch at once: the ids ``consumer`` had not applied yet."""
    rows = await conn.fetch(q("mark_processed_many"), consumer, message_ids)
    return {r["message_id"] for r in rows}


async def unmark_processed(conn: Conn, consumer: str, message_id: uuid.UUID) -> None:
    """Take back a mark of :func:`mark_processed_many` whose effect did not happen."""
    await conn.execute(q("unmark_processed"), consumer, message_id)
