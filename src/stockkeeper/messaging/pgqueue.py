"""The embedded broker: queues in a PostgreSQL table, used when no ``broker.url`` is set.

It mirrors the RabbitMQ topology (exchanges route by topic pattern to queues), and the
same contract holds: a message is confirmed once its row is committed, it is delivered
until acked, and a consumer that dies without acking loses its lease, so the message
is delivered again. ``LISTEN/NOTIFY`` wakes consumers; a short poll is the fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from stockkeeper.messaging.broker import Handler, OutgoingMessage
from stockkeeper.messaging.topology import QUEUES, QueueSpec, queues_for
from stockkeeper.observability.logging import get_logger
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.store.sql import q
from stockkeeper.waiting import wait_any

CHANNEL = "stockkeeper_queue"
log = get_logger("stockkeeper.pgqueue")


@dataclass(slots=True)
class PgDelivery:
    queue: str
    row_id: int
    message_id: str | None
    routing_key: str
    body: bytes
    headers: dict[str, Any]
    redelivered: bool
    _broker: PgQueueBroker = field(repr=False)

    async def ack(self) -> None:
        async with self._broker.pool.acquire() as conn:
            await conn.execute(q("queue_ack"), self.row_id)

    async def requeue(self) -> None:
        async with self._broker.pool.acquire() as conn:
            await conn.execute(q("queue_requeue"), self.row_id)


class PgSubscription:
    def __init__(self, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        self._task = task
        self._stop = stop

    async def cancel(self) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class PgQueueBroker:
    """Broker port on PostgreSQL."""

    name = "pgqueue"

    def __init__(
        self,
        pool: Pool,
        *,
        prefix: str = "",
        lease_ms: int = 30_000,
        poll_ms: int = 500,
        queues: tuple[QueueSpec, ...] = QUEUES,
        listen_pool: Pool | None = None,
    ) -> None:
        self.pool = pool
        # The LISTEN connection's pool: straight to PostgreSQL behind PgBouncer.
        self.listen_pool = listen_pool or pool
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.poll_ms = poll_ms
        self.queues = queues
        self._listener: PoolConnectionProxy[asyncpg.Record] | None = None
        self._wakeups: dict[str, list[asyncio.Event]] = {}

    def _q(self, name: str) -> str:
        return self.prefix + name

    async def connect(self) -> None:
        # The topology lives in code (topology.QUEUES); the table is made by migrations.
        if self._listener is None:
            self._listener = await self.listen_pool.acquire()
            await self._listener.add_listener(CHANNEL, self._on_notify)

    def _on_notify(self, _conn: Conn, _pid: int, _channel: str, payload: object) -> None:
        for event in self._wakeups.get(str(payload), ()):
            event.set()

    async def close(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(CHANNEL, self._on_notify)
            await self.listen_pool.release(self._listener)
            self._listener = None

    async def _insert(self, rows: list[tuple[str, OutgoingMessage, int]]) -> None:
        if not rows:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                q("queue_insert"),
                [r[0] for r in rows],
                [uuid.UUID(r[1].message_id) for r in rows],
                [r[1].exchange for r in rows],
                [r[1].routing_key for r in rows],
                [r[1].body for r in rows],
                [orjson.dumps(r[1].headers).decode() for r in rows],
                [r[2] for r in rows],
            )
            for queue in sorted({r[0] for r in rows}):
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, queue)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        rows: list[tuple[str, OutgoingMessage, int]] = []
        for m in messages:
            for queue in queues_for(m.exchange, m.routing_key, self.queues):
                rows.append((self._q(queue), m, 0))
        await self._insert(rows)

    async def send_to_queue(self, queue: str, message: OutgoingMessage, delay_ms: int = 0) -> None:
        await self._insert([(self._q(queue), message, delay_ms)])

    async def consume(self, queue: str, handler: Handler, prefetch: int) -> PgSubscription:
        await self.connect()
        name = self._q(queue)
        wake = asyncio.Event()
        self._wakeups.setdefault(name, []).append(wake)
        stop = asyncio.Event()
        task = asyncio.create_task(self._consume_loop(name, queue, handler, prefetch, wake, stop))
        return PgSubscription(task, stop)

    async def _consume_loop(
        self,
        name: str,
        queue: str,
        handler: Handler,
        prefetch: int,
        wake: asyncio.Event,
        stop: asyncio.Event,
    ) -> None:
        try:
            while not stop.is_set():
                wake.clear()
                try:
                    async with self.pool.acquire() as conn:
                        rows = await conn.fetch(q("queue_claim"), name, prefetch, self.lease_ms)
                except (OSError, asyncpg.PostgresError) as exc:
                    log.warning("pgqueue.claim_failed", queue=name, error=str(exc))
                    rows = []
                for r in sorted(rows, key=lambda r: r["id"]):
                    if stop.is_set():
                        # Give the rest of the claim back at once, not after the lease.
                        async with self.pool.acquire() as conn:
                            await conn.execute(q("queue_requeue"), r["id"])
                        continue
                    await handler(
                        PgDelivery(
                            queue=queue,
                            row_id=r["id"],
                            message_id=str(r["message_id"]),
                            routing_key=r["routing_key"],
                            body=bytes(r["body"]),
                            headers=r["headers"],
                            redelivered=r["deliveries"] > 1,
                            _broker=self,
                        )
                    )
                if len(rows) < prefetch:
                    await wait_any(wake, stop, at_most=self.poll_ms / 1000)
        finally:
            waiters = self._wakeups.get(name, [])
            if wake in waiters:
                waiters.remove(wake)

    async def queue_depths(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(q("queue_depths"))
        depths = {self._q(spec.name): 0 for spec in self.queues}
        # The table may hold other installations' queues (another prefix): leave them out.
        depths.update({r["queue"]: r["depth"] for r in rows if r["queue"] in depths})
        return depths
