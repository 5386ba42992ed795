"""The embedded broker's table, ``queue_message``: per-queue FIFO with leases.

Functions take a connection (and, where it matters, the caller's transaction); none
opens its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q

# Consumers LISTEN here; the payload is the name of the queue that has new messages.
NOTIFY_CHANNEL = "stockkeeper_queue"


@dataclass(frozen=True, slots=True)
class NewMessage:
    queue: str
    message_id: uuid.UUID
    exchange: str
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    delay_ms: int = 0


@dataclass(frozen=True, slots=True)
class LeasedMessage:
    """A message claimed by one consumer until its lease runs out or it is acked."""

    id: int
    message_id: uuid.UUID
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    deliveries: int


async def insert(conn: Conn, messages: Sequence[NewMessage]) -> None:
    """Add ``messages`` and wake the consumers of their queues when the caller's
    transaction commits."""
    if not messages:
        return
    await conn.execute(
        q("queue_insert"),
        [m.queue for m in messages],
        [m.message_id for m in messages],
        [m.exchange for m in messages],
        [m.routing_key for m in messages],
        [m.body for m in messages],
        [orjson.dumps(m.headers).decode() for m in messages],
        [m.delay_ms for m in messages],
    )
    await conn.execute(q("queue_notify"), NOTIFY_CHANNEL, [m.queue for m in messages])


async def claim(conn: Conn, queue: str, limit: int, lease_ms: int) -> list[LeasedMessage]:
    """Up to ``limit`` of the oldest ready messages of ``queue``, leased for
    ``lease_ms``, oldest first."""
    rows = await conn.fetch(q("queue_claim"), queue, limit, lease_ms)
    return [
        LeasedMessage(
            r["id"],
            r["message_id"],
            r["routing_key"],
            bytes(r["body"]),
            r["headers"],
            r["deliveries"],
        )
        for r in sorted(rows, key=lambda r: r["id"])
    ]


async def ack(conn: Conn, row_id: int) -> None:
    """The message is done with: delete it."""
    await conn.execute(q("queue_ack"), row_id)


async def ack_many(conn: Conn, row_ids: list[int]) -> None:
    """A batch of messages done with: deleted in one statement."""
    await conn.execute(q("queue_ack_many"), row_ids)


async def requeue(conn: Conn, row_id: int) -> None:
    """Give the message back at once, not after its lease."""
    await conn.execute(q("queue_requeue"), row_id)


async def reject(conn: Conn, row_id: int) -> None:
    """Mark the message dead: it stays in the table and is never delivered again."""
    await conn.execute(q("queue_reject"), row_id)


async def depths(conn: Conn) -> dict[str, int]:
    """Messages waiting or leased (not dead), per queue, of every queue in the table."""
    return {r["queue"]: r["depth"] for r in await conn.fetch(q("queue_depths"))}
