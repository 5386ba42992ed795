"""The embedded broker: queues in a PostgreSQL table, used when no ``broker.url`` is set.

It mirrors the RabbitMQ topology (exchanges route by topic pattern to queues), and the
same contract holds: a message is confirmed once its row is committed, it is delivered
until acked, and a consumer that dies without acking loses its lease, so the message
is delivered again. ``LISTEN/NOTIFY`` wakes consumers; a short poll is the fallback.

Its delivery limit is RabbitMQ's (``DELIVERY_LIMIT``, D-160): a message already handed
out more than ``delivery_limit`` times without an ack (a consumer that dies on it each
time, or hands it back) is not leased again. The claim that would have leased it moves
it into ``dead_letter`` instead, in the same statement, under the queue it came from,
with the bytes, the headers, the deliveries as attempts and the words RabbitMQ's drain
uses; counted in ``stockkeeper_dead_letters_total`` and logged (D-458).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from stockkeeper.messaging.broker import Delivery, Handler, OutgoingMessage
from stockkeeper.messaging.outages import DATABASE_OUTAGE
from stockkeeper.messaging.topology import (
    DELIVERY_LIMIT,
    DELIVERY_LIMIT_REASON,
    QUEUES,
    REJECTED_REASON,
    QueueSpec,
    past_delivery_limit,
    queues_for,
    rejected_unrecorded,
)
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import queue as store_queue
from stockkeeper.store.errors import StoreError, is_unavailable
from stockkeeper.store.listener import Listener, listen_then_poll
from stockkeeper.store.pool import Conn, Pool, connection
from stockkeeper.store.queue import GivenUp, NewMessage

CHANNEL = store_queue.NOTIFY_CHANNEL
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
    deliveries: int
    _broker: PgQueueBroker = field(repr=False)

    async def ack(self) -> None:
        async with self._broker.pool.acquire() as conn:
            await store_queue.ack(conn, self.row_id)

    async def requeue(self) -> None:
        async with self._broker.pool.acquire() as conn:
            await store_queue.requeue(conn, self.row_id)

    async def reject(self) -> None:
        """Give the message to the queue's dead-lettering: into ``dead_letter``, where
        the admin API shows it, as RabbitMQ's drain would put it (D-476)."""
        async with self._broker.pool.acquire() as conn:
            dead_id = await store_queue.reject(
                conn,
                self.row_id,
                dead_letter_queue=self.queue,
                error=rejected_unrecorded("The embedded queue", self.queue),
            )
        if dead_id is None:
            return  # already gone (acked or moved by another consumer meanwhile)
        log.error(
            "pgqueue.dead_letter",
            dead_letter_id=dead_id,
            message_id=self.message_id,
            queue=self.queue,
            reason=REJECTED_REASON,
            deliveries=self.deliveries,
        )
        if self._broker.metrics is not None:
            self._broker.metrics.dead_letters.labels(queue=self.queue).inc()


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
        metrics: Metrics | None = None,
        delivery_limit: int = DELIVERY_LIMIT,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.delivery_limit = delivery_limit
        # The LISTEN connection's pool: straight to PostgreSQL behind PgBouncer.
        self.listen_pool = listen_pool or pool
        self.prefix = prefix
        self.lease_ms = lease_ms
        self.poll_ms = poll_ms
        self.queues = queues
        self._listener: Listener | None = None
        self._wakeups: dict[str, asyncio.Event] = {}

    def _q(self, name: str) -> str:
        return self.prefix + name

    async def connect(self) -> None:
        # The topology lives in code (topology.QUEUES); the table is made by migrations.
        if self._listener is None:
            reconnected = None
            if self.metrics is not None:
                reconnected = self.metrics.listener_reconnects.labels(listener="pgqueue").inc
            listener = Listener(self.listen_pool, "pgqueue", on_reconnect=reconnected)
            # One wake-up per queue, set by a NOTIFY whose payload is the queue's name;
            # every consumer of that queue in this process waits on it.
            wakeups = {
                self._q(spec.name): listener.subscribe(CHANNEL, self._q(spec.name))
                for spec in self.queues
            }
            await listener.start()
            self._listener, self._wakeups = listener, wakeups

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    async def _insert(self, messages: list[NewMessage]) -> None:
        if not messages:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            await store_queue.insert(conn, messages)

    def _row(self, queue: str, m: OutgoingMessage, delay_ms: int) -> NewMessage:
        return NewMessage(
            self._q(queue),
            uuid.UUID(m.message_id),
            m.exchange,
            m.routing_key,
            m.body,
            m.headers,
            delay_ms,
        )

    def _routed(self, messages: Sequence[OutgoingMessage]) -> list[NewMessage]:
        return [
            self._row(queue, m, 0)
            for m in messages
            for queue in queues_for(m.exchange, m.routing_key, self.queues)
        ]

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        await self._insert(self._routed(messages))

    async def publish_in(self, conn: Conn, messages: Sequence[OutgoingMessage]) -> None:
        """Route ``messages`` into their queues' rows in the caller's transaction: the
        dispatcher's claim, so the hand-off from the outbox is exactly once."""
        await store_queue.insert(conn, self._routed(messages))

    async def send_to_queue(self, queue: str, message: OutgoingMessage, delay_ms: int = 0) -> None:
        await self._insert([self._row(queue, message, delay_ms)])

    async def consume(self, queue: str, handler: Handler, prefetch: int) -> PgSubscription:
        await self.connect()
        name = self._q(queue)
        # A queue outside the topology has no NOTIFY subscription: it is polled.
        wake = self._wakeups.get(name) or asyncio.Event()
        stop = asyncio.Event()
        task = asyncio.create_task(
            listen_then_poll(
                partial(self._claim_and_handle, name, queue, handler, prefetch, stop),
                wake,
                stop,
                poll_s=self.poll_ms / 1000,
                on_error=partial(self._on_error, name),
                # A consumer's pauses while the database is away (D-161): back within
                # 5 s of its return.
                errors=DATABASE_OUTAGE,
            )
        )
        return PgSubscription(task, stop)

    async def _claim_and_handle(
        self, name: str, queue: str, handler: Handler, prefetch: int, stop: asyncio.Event
    ) -> bool:
        """One claim, handed to ``handler`` in order; True when it was full (more may be
        waiting)."""
        try:
            async with connection(self.pool) as conn:
                claim = await store_queue.claim(
                    conn,
                    name,
                    prefetch,
                    self.lease_ms,
                    delivery_limit=self.delivery_limit,
                    dead_letter_queue=queue,
                    given_up_error=self._given_up_error(queue),
                )
        except StoreError as exc:
            if is_unavailable(exc):
                # The database is away: waited out with growing pauses (D-433).
                raise
            log.warning("pgqueue.claim_failed", queue=name, error=str(exc))
            return False
        if claim.given_up:
            self._gave_up(queue, claim.given_up)
        for r in claim.leased:
            if stop.is_set():
                # Give the rest of the claim back at once, not after the lease.
                async with self.pool.acquire() as conn:
                    await store_queue.requeue(conn, r.id)
                continue
            await handler(
                PgDelivery(
                    queue=queue,
                    row_id=r.id,
                    message_id=str(r.message_id),
                    routing_key=r.routing_key,
                    body=r.body,
                    headers=r.headers,
                    redelivered=r.deliveries > 1,
                    deliveries=r.deliveries,
                    _broker=self,
                )
            )
        return claim.size >= prefetch

    def _given_up_error(self, queue: str) -> str:
        """The error of a message past the delivery limit, as a format string for the
        claim (its ``%s``: the deliveries)."""
        limit = f"delivery limit {self.delivery_limit}"
        return past_delivery_limit("The embedded queue", queue.replace("%", "%%"), "%s", limit)

    def _gave_up(self, queue: str, given_up: list[GivenUp]) -> None:
        for g in given_up:
            log.error(
                "pgqueue.dead_letter",
                dead_letter_id=g.dead_letter_id,
                message_id=str(g.message_id),
                queue=queue,
                reason=DELIVERY_LIMIT_REASON,
                deliveries=g.deliveries,
            )
        if self.metrics is not None:
            self.metrics.dead_letters.labels(queue=queue).inc(len(given_up))

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """The rows of ``deliveries`` deleted in one statement."""
        ids = []
        for d in deliveries:
            assert isinstance(d, PgDelivery)
            ids.append(d.row_id)
        async with self.pool.acquire() as conn:
            await store_queue.ack_many(conn, ids)

    def _on_error(self, name: str, exc: Exception) -> None:
        # A handler that raised (the consumer runner catches its own failures, so this
        # is an ack or requeue that could not reach the database): what it held comes
        # back when its lease lapses; the loop carries on after a pause.
        if is_unavailable(exc):  # an outage: one line per try, no traceback (D-433)
            error = f"{type(exc).__name__}: {exc}"
            log.warning("pgqueue.database_unavailable", queue=name, error=error)
            return
        log.exception("pgqueue.consume_failed", queue=name, error=str(exc))

    async def queue_depths(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            found = await store_queue.depths(conn)
        depths = {self._q(spec.name): 0 for spec in self.queues}
        # The table may hold other installations' queues (another prefix): leave them out.
        depths.update({q: n for q, n in found.items() if q in depths})
        return depths
