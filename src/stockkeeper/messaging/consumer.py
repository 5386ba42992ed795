"""The consumer runner, used by every consumer.

For each message: parse the envelope; in one transaction record the message id in
``processed_message`` and apply the handler's effect; commit; then ack. A redelivered
message finds its id and has no second effect. A failure is retried with exponential
backoff through a delayed re-send (the messages behind it are not held up), and after
the last attempt lands in ``dead_letter`` with its error, where the admin API can show,
replay or discard it. A failure that cannot even be recorded leaves the message with
the broker; after ``max_attempts`` deliveries it is rejected to the broker's own
dead-letter handling, so nothing loops forever.

A database that cannot be reached is not the message's fault: the consumer holds the
message, waits for the database with growing pauses and tries again, without spending
an attempt (so an outage of any length dead-letters nothing). Stopping while it waits
hands the message back to the broker, uncounted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from stockkeeper.domain.backoff import Backoff
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.broker import Broker, Delivery, OutgoingMessage, Subscription
from stockkeeper.messaging.envelope import (
    ATTEMPT_HEADER,
    BROKER_HEADER_PREFIXES,
    Envelope,
    InvalidEnvelope,
)
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import consumer_log, dead_letters
from stockkeeper.store.errors import StoreError, is_unavailable
from stockkeeper.store.pool import Conn, Pool, connection, ping
from stockkeeper.waiting import wait_any

log = get_logger("stockkeeper.consumer")

EffectHandler = Callable[[Conn, Envelope], Awaitable[None]]

# Where the other workers and services wrote their dead letters before the table got its
# repository; new code calls store.dead_letters.record.
dead_letter = dead_letters.record

# The pauses while the database cannot be reached: short at first (a failover is over in
# seconds), then every few seconds, for as long as it takes.
DATABASE_OUTAGE = Backoff(0.2, 5.0)
# Connection errors in a row, each while the database answered a ping, after which the
# error is the message's failure after all (a bug that looks like a lost connection).
HEALTHY_BUT_FAILING = 3

T = TypeVar("T")


class PermanentError(Exception):
    """A message that can never succeed (bad content): dead-letter it at once."""


class ConsumerStopped(Exception):
    """The consumer was stopped while it waited for the database; the message goes
    back to the broker without an attempt counted."""


class _StoppingSubscription:
    """The broker's subscription, which first tells the consumer to stop waiting."""

    def __init__(self, stopping: asyncio.Event, inner: Subscription) -> None:
        self._stopping = stopping
        self._inner = inner

    async def cancel(self) -> None:
        self._stopping.set()
        await self._inner.cancel()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_ms: int = 1000
    max_ms: int = 30_000
    max_attempts: int = 10

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.base_ms / 1000, self.max_ms / 1000)

    def delay_ms(self, attempt: int) -> int:
        """Wait before attempt ``attempt + 1``: base, doubling, capped (no jitter: the
        redelivery window is derived from it)."""
        return self.backoff.delay_ms(attempt)


def carried_headers(headers: dict[str, Any]) -> dict[str, Any]:
    """The headers a retry or a replay keeps: ours, not the broker's bookkeeping."""
    return {k: v for k, v in headers.items() if not k.startswith(BROKER_HEADER_PREFIXES)}


def attempt_of(headers: dict[str, Any]) -> int:
    try:
        return max(1, int(headers.get(ATTEMPT_HEADER, 1)))
    except (TypeError, ValueError):
        return 1


async def database_answers(pool: Pool) -> bool:
    """Whether the database takes a round trip on a pooled connection right now."""
    try:
        async with connection(pool) as conn:
            await ping(conn)
    except StoreError:
        return False
    return True


async def through_outages(
    work: Callable[[], Awaitable[T]],
    pool: Pool,
    stopping: asyncio.Event,
    *,
    consumer: str,
    message_id: str,
    metrics: Metrics,
) -> T:
    """``work()``, run again after a pause for as long as the database cannot be
    reached (each pause counted in ``consumer_outage_waits``); any other failure is
    raised. So is a connection error that keeps coming while the database answers
    (``HEALTHY_BUT_FAILING`` times in a row): that is no outage, and counts as a failure.
    Raises :class:`ConsumerStopped` when ``stopping`` is set while waiting."""
    waits = healthy_but_failing = 0
    while True:
        try:
            return await work()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if await database_answers(pool):
                healthy_but_failing += 1
                if healthy_but_failing >= HEALTHY_BUT_FAILING:
                    raise
            else:
                healthy_but_failing = 0
            waits += 1
            pause = DATABASE_OUTAGE.delay(waits)
            metrics.consumer_outage_waits.labels(consumer=consumer).inc()
            log.warning(
                "consumer.database_unavailable",
                consumer=consumer,
                message_id=message_id,
                waits=waits,
                retry_in_s=pause,
                error=f"{type(exc).__name__}: {exc}",
            )
        await wait_any(stopping, at_most=pause)
        if stopping.is_set():
            raise ConsumerStopped(message_id)


class Consumer:
    """Runs one handler on one queue with idempotency, retries and dead letters."""

    def __init__(
        self,
        name: str,
        queue: str,
        handle: EffectHandler,
        *,
        pool: Pool,
        broker: Broker,
        metrics: Metrics,
        policy: RetryPolicy = RetryPolicy(),
        drop_stale: bool = False,
        failpoints: Failpoints | None = None,
    ) -> None:
        self.name = name
        self.queue = queue
        self.handle = handle
        self.pool = pool
        self.broker = broker
        self.metrics = metrics
        self.policy = policy
        self.drop_stale = drop_stale
        self.failpoints = failpoints or Failpoints()
        self._stopping = asyncio.Event()

    async def start(self, prefetch: int = 32) -> Subscription:
        """Consume until the returned subscription is cancelled."""
        self._stopping.clear()
        sub = await self.broker.consume(self.queue, self.on_delivery, prefetch)
        return _StoppingSubscription(self._stopping, sub)

    async def on_delivery(self, d: Delivery) -> None:
        try:
            await self._process(d)
        except ConsumerStopped:
            log.info("consumer.stopped_waiting", consumer=self.name, message_id=d.message_id)
            await d.requeue()
        except Exception:
            await self._unrecorded(d)

    async def _unrecorded(self, d: Delivery) -> None:
        """We could not even record the failure: leave the message with the broker and
        let it come back, at most ``max_attempts`` times."""
        where = {
            "consumer": self.name,
            "message_id": d.message_id,
            "routing_key": d.routing_key,
            "deliveries": d.deliveries,
        }
        if d.deliveries >= self.policy.max_attempts:
            log.exception("consumer.rejected_unrecorded", **where)
            self.metrics.consumer_messages.labels(consumer=self.name, outcome="rejected").inc()
            await d.reject()
            return
        log.exception("consumer.unrecorded_failure", **where)
        await wait_any(self._stopping, at_most=self.policy.backoff.delay(d.deliveries))
        await d.requeue()

    async def _through_outages(self, work: Callable[[], Awaitable[T]], message_id: str) -> T:
        return await through_outages(
            work,
            self.pool,
            self._stopping,
            consumer=self.name,
            message_id=message_id,
            metrics=self.metrics,
        )

    async def _process(self, d: Delivery) -> None:
        # The consumer span continues the publisher's traceparent (D-241); the events
        # the handler writes to the outbox carry it on.
        with tracing.consuming(
            f"consume {d.routing_key}",
            d.headers,
            **{
                "messaging.consumer.group.name": self.name,
                "messaging.destination.name": self.queue,
            },
        ):
            await self._process_traced(d)

    async def _process_traced(self, d: Delivery) -> None:
        attempt = attempt_of(d.headers)
        try:
            env = Envelope.parse(d.body)
        except InvalidEnvelope as exc:
            await self._dead(d, str(exc), attempt)
            return
        try:
            outcome = await self._through_outages(lambda: self._apply(env), str(env.id))
        except ConsumerStopped:
            raise
        except PermanentError as exc:
            await self._dead(d, f"{type(exc).__name__}: {exc}", attempt)
            return
        except Exception as exc:
            if attempt >= self.policy.max_attempts:
                await self._dead(d, f"{type(exc).__name__}: {exc}", attempt)
                return
            delay = self.policy.delay_ms(attempt)
            log.warning(
                "consumer.retry",
                consumer=self.name,
                message_id=str(env.id),
                attempt=attempt,
                delay_ms=delay,
                error=repr(exc),
            )
            retry = OutgoingMessage(
                "",
                d.routing_key,
                d.body,
                str(env.id),
                {**carried_headers(d.headers), ATTEMPT_HEADER: attempt + 1},
            )
            await self.broker.send_to_queue(self.queue, retry, delay)
            self.metrics.consumer_retries.labels(consumer=self.name).inc()
            await d.ack()
            return
        self.metrics.consumer_messages.labels(consumer=self.name, outcome=outcome).inc()
        self.failpoints.hit("consumer.before_ack")
        await d.ack()

    async def _apply(self, env: Envelope) -> str:
        async with self.pool.acquire() as conn, conn.transaction():
            if not await consumer_log.mark_processed(conn, self.name, env.id):
                return "duplicate"
            if (
                self.drop_stale
                and env.sku is not None
                and env.sequence is not None
                and not await consumer_log.advance_position(conn, self.name, env.sku, env.sequence)
            ):
                return "stale"
            await self.handle(conn, env)
            self.failpoints.hit("consumer.before_commit")
        return "applied"

    async def _dead(self, d: Delivery, error: str, attempt: int) -> None:
        self.failpoints.hit("consumer.before_dead_letter")

        async def record() -> int:
            async with self.pool.acquire() as conn:
                return await dead_letters.record(
                    conn,
                    queue=self.queue,
                    message_id=d.message_id,
                    routing_key=d.routing_key,
                    body=d.body,
                    headers=carried_headers(d.headers),
                    error=error,
                    attempts=attempt,
                )

        row = await self._through_outages(record, str(d.message_id))
        log.error(
            "consumer.dead_letter",
            consumer=self.name,
            dead_letter_id=row,
            message_id=d.message_id,
            error=error,
            attempts=attempt,
        )
        self.metrics.dead_letters.labels(queue=self.queue).inc()
        await d.ack()
