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


@dataclass(frozen=True, slots=True)
class GivenUp:
    """A message the claim moved into ``dead_letter`` instead of leasing it: delivered
    more often than the delivery limit without an ack."""

    dead_letter_id: int
    message_id: uuid.UUID
    deliveries: int


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim took: the messages leased, oldest first, and those given up."""

    leased: list[LeasedMessage]
    given_up: list[GivenUp]

    @property
    def size(self) -> int:
        """How many ready messages the claim took, of either kind."""
        return len(self.leased) + len(self.given_up)


async def claim(
    conn: Conn,
    queue: str,
    limit: int,
    lease_ms: int,
    *,
    delivery_limit: int,
    dead_letter_queue: str,
    given_up_error: str,
) -> Claim:
    """Up to ``limit`` of the oldest ready messages of ``queue``, leased for
    ``lease_ms``, oldest first; in the same statement, each of them already handed out
    more than ``delivery_limit`` times is moved into ``dead_letter`` instead, under
    ``dead_letter_queue``, with the error ``given_up_error`` (a ``format`` string whose
    one ``%s`` is the count of deliveries) and that count as its attempts."""
    rows = await conn.fetch(
        q("queue_claim"), queue, limit, lease_ms, delivery_limit, dead_letter_queue,
        given_up_error,
    )  # fmt: skip
    leased = [
        LeasedMessage(
            r["id"],
            r["message_id"],
            r["routing_key"],
            bytes(r["body"]),
            r["headers"],
            r["deliveries"],
        )
        for r in rows
        if r["dead_letter_id"] is None
    ]
    leased.sort(key=lambda m: m.id)
    given_up = [
        GivenUp(r["dead_letter_id"], r["message_id"], r["deliveries"])
        for r in rows
        if r["dead_letter_id"] is not None
    ]
    return Claim(leased, given_up)


async def ack(conn: Conn, row_id: int) -> None:
    """The message is done with: delete it."""
    await conn.execute(q("queue_ack"), row_id)


async def ack_many(conn: Conn, row_ids: list[int]) -> None:
    """A batch of messages done with: deleted in one statement."""
    await conn.execute(q("queue_ack_many"), row_ids)


async def requeue(conn: Conn, row_id: int) -> None:
    """Give the message back at once, not after its lease."""
    await conn.execute(q("queue_requeue"), row_id)


async def reject(conn: Conn, row_id: int, *, dead_letter_queue: str, error: str) -> int | None:
    """Move the message into ``dead_letter`` (under ``dead_letter_queue``, with
    ``error``); never delivered again. The dead letter's id (None: it was gone)."""
    dead_id: int | None = await conn.fetchval(q("queue_reject"), row_id, dead_letter_queue, error)
    return dead_id


async def depths(conn: Conn) -> dict[str, int]:
    """Messages waiting or leased (not dead), per queue, of every queue in the table."""
    return {r["queue"]: r["depth"] for r in await conn.fetch(q("queue_depths"))}
