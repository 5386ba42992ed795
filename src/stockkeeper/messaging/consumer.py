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

Batches (``batch_size`` > 1, for handlers that can share a transaction): the messages
the broker has already handed out (its prefetch) are applied in ONE transaction: the
marks in ``processed_message`` in one statement, then each message's effect in its own
savepoint, in delivery order (so the order per key holds). A message whose effect fails
is rolled back to its savepoint (its mark taken back) and, after the commit, retried or
dead-lettered alone, exactly as without batches; the others commit once. Acks follow
the commit. A batch that fails as a whole is applied again one message at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        batch_size: int = 1,
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
        self.batch_size = max(1, batch_size)
        self._stopping = asyncio.Event()

    async def start(self, prefetch: int = 32) -> Subscription:
        """Consume until the returned subscription is cancelled."""
        self._stopping.clear()
        if self.batch_size > 1:
            batcher = _Batcher(self, max(prefetch, self.batch_size))
            try:
                sub = await self.broker.consume(self.queue, batcher.put, prefetch)
            except BaseException:
                batcher.abandon()
                raise
            return batcher.subscription(sub)
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
        except Exception as exc:
            await self._failed(d, env, attempt, exc)
            return
        await self._done(d, outcome)

    async def _done(self, d: Delivery, outcome: str) -> None:
        self.metrics.consumer_messages.labels(consumer=self.name, outcome=outcome).inc()
        self.failpoints.hit("consumer.before_ack")
        await d.ack()

    async def _failed(self, d: Delivery, env: Envelope, attempt: int, exc: Exception) -> None:
        """The effect failed (and was rolled back): retry later or dead-letter."""
        if isinstance(exc, PermanentError) or attempt >= self.policy.max_attempts:
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

    async def process_batch(self, batch: list[Delivery]) -> None:
        """Apply ``batch`` in one transaction (see the module's notes), then settle each
        message: ack, retry or dead letter."""
        parsed: list[tuple[Delivery, Envelope]] = []
        for d in batch:
            try:
                parsed.append((d, Envelope.parse(d.body)))
            except InvalidEnvelope as exc:
                await self._dead(d, str(exc), attempt_of(d.headers))
        if not parsed:
            return
        envs = [env for _, env in parsed]
        try:
            results = await self._through_outages(lambda: self._apply_batch(envs), str(envs[0].id))
        except ConsumerStopped:
            raise
        except Exception:
            # The batch failed as a whole (its commit, say): one message at a time.
            log.warning("consumer.batch_failed", consumer=self.name, size=len(parsed))
            for d, _ in parsed:
                await self.on_delivery(d)
            return
        for (d, env), result in zip(parsed, results, strict=True):
            if isinstance(result, Exception):
                await self._failed(d, env, attempt_of(d.headers), result)
            else:
                await self._done(d, result)

    async def _apply_batch(self, envs: list[Envelope]) -> list[str | Exception]:
        results: list[str | Exception] = []
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await consumer_log.mark_processed_many(
                conn, self.name, [env.id for env in envs]
            )
            for env in envs:
                if env.id not in fresh:
                    results.append("duplicate")
                    continue
                fresh.discard(env.id)  # a second copy in the same batch is a duplicate
                try:
                    async with conn.transaction():
                        results.append(await self._effect(conn, env))
                except Exception as exc:
                    if is_unavailable(exc):
                        raise
                    await consumer_log.unmark_processed(conn, self.name, env.id)
                    results.append(exc)
            self.failpoints.hit("consumer.before_commit")
        return results

    async def _effect(self, conn: Conn, env: Envelope) -> str:
        if (
            self.drop_stale
            and env.sku is not None
            and env.sequence is not None
            and not await consumer_log.advance_position(conn, self.name, env.sku, env.sequence)
        ):
            return "stale"
        await self.handle(conn, env)
        return "applied"

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


class _Batcher:
    """Takes the broker's deliveries at once (they stay unacked) and hands what has
    gathered to :meth:`Consumer.process_batch`, one batch at a time, in order. The
    buffer is bounded, so the broker's prefetch (or the embedded queue's claim) waits
    when it is full."""

    def __init__(self, consumer: Consumer, bound: int) -> None:
        self._consumer = consumer
        self._buffer: asyncio.Queue[Delivery] = asyncio.Queue(bound)
        self._closing = False
        self._task = asyncio.create_task(self._run())

    async def put(self, d: Delivery) -> None:
        if self._closing:
            await d.requeue()
            return
        await self._buffer.put(d)

    async def _run(self) -> None:
        c = self._consumer
        while True:
            batch = [await self._buffer.get()]
            while len(batch) < c.batch_size and not self._buffer.empty():
                batch.append(self._buffer.get_nowait())
            try:
                await c.process_batch(batch)
            except ConsumerStopped:
                for d in batch:
                    await d.requeue()
            except Exception:
                for d in batch:
                    await c._unrecorded(d)
            finally:
                for _ in batch:
                    self._buffer.task_done()

    def abandon(self) -> None:
        """The broker never subscribed: nothing was handed out, stop the task."""
        self._task.cancel()

    def subscription(self, inner: Subscription) -> Subscription:
        return _BatchSubscription(self, inner)

    async def close(self, inner: Subscription) -> None:
        self._closing = True
        self._consumer._stopping.set()
        await self._buffer.join()  # what was handed out is settled first
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await inner.cancel()


class _BatchSubscription:
    def __init__(self, batcher: _Batcher, inner: Subscription) -> None:
        self._batcher = batcher
        self._inner = inner

    async def cancel(self) -> None:
        await self._batcher.close(self._inner)
