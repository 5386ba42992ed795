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
dead-lettered alone, exactly as without batches; the others commit once. A handler
that can apply a whole batch set-based (``handle_many``, D-320) is called once instead,
in one savepoint; should it fail, the batch goes the savepoint-per-message way. After
the commit the failures are settled one by one, then one ack covers the rest (D-321).
A batch that fails as a whole is applied again one message at a time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from stockkeeper.domain.backoff import Backoff
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.batches import Batcher
from stockkeeper.messaging.broker import (
    AcksMany,
    Broker,
    Delivery,
    OutgoingMessage,
    Subscription,
)
from stockkeeper.messaging.envelope import (
    ATTEMPT_HEADER,
    BROKER_HEADER_PREFIXES,
    Envelope,
    InvalidEnvelope,
)
from stockkeeper.messaging.outages import DATABASE_OUTAGE as DATABASE_OUTAGE
from stockkeeper.messaging.outages import HEALTHY_BUT_FAILING as HEALTHY_BUT_FAILING
from stockkeeper.messaging.outages import ConsumerStopped as ConsumerStopped
from stockkeeper.messaging.outages import database_answers as database_answers
from stockkeeper.messaging.outages import through_outages as through_outages
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import bound_to_logs, get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import consumer_log, dead_letters
from stockkeeper.store.errors import is_unavailable
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.store.transactions import owned, retried
from stockkeeper.waiting import wait_any

log = get_logger("stockkeeper.consumer")

EffectHandler = Callable[[Conn, Envelope], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message of a batch: its envelope, and the ``traceparent`` of its consumer span
    (tracing on) to store with what it makes due."""

    env: Envelope
    traceparent: str | None = None


BatchEffectHandler = Callable[[Conn, Sequence[Incoming]], Awaitable[None]]
"""The effect of a whole batch at once (set-based), in delivery order; all or none. If
it raises, the runner applies the batch's messages one by one with the per-message
handler instead, each in its own savepoint (D-320)."""

# Where the other workers and services wrote their dead letters before the table got its
# repository; new code calls store.dead_letters.record.
dead_letter = dead_letters.record

T = TypeVar("T")


class PermanentError(Exception):
    """A message that can never succeed (bad content): dead-letter it at once."""


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
        handle_many: BatchEffectHandler | None = None,
        one_as_single: bool = False,
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
        # Set-based batches need no per-message position moves: not with drop_stale.
        self.handle_many = None if drop_stale else handle_many
        # A batch of one message is applied as without batches (its effect alone in the
        # transaction, no savepoint): for a handler whose one-message path is the
        # cheaper one for a lone message (the saga's, D-371).
        self.one_as_single = one_as_single
        self._stopping = asyncio.Event()

    def prefetch_for(self, prefetch: int) -> int:
        """What the broker may hand out at once: in batch mode two batches, so that one
        gathers while the other is applied (its acks only follow its commit), D-321."""
        return max(prefetch, 2 * self.batch_size) if self.batch_size > 1 else prefetch

    async def start(self, prefetch: int = 32) -> Subscription:
        """Consume until the returned subscription is cancelled."""
        self._stopping.clear()
        if self.batch_size > 1:
            window = self.prefetch_for(prefetch)
            batcher = Batcher(self, window)
            try:
                sub = await self.broker.consume(self.queue, batcher.put, window)
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
        # the handler writes to the outbox carry it on. Every log line of the handling
        # names the message (D-406).
        with (
            bound_to_logs(message_id=d.message_id),
            tracing.consuming(
                f"consume {d.routing_key}",
                d.headers,
                **{
                    "messaging.consumer.group.name": self.name,
                    "messaging.destination.name": self.queue,
                },
            ),
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
        message: failures first (retry or dead letter, one by one), then one ack for all
        the others."""
        if self.one_as_single and len(batch) == 1:
            await self.on_delivery(batch[0])
            return
        parsed: list[tuple[Delivery, Envelope]] = []
        for d in batch:
            try:
                parsed.append((d, Envelope.parse(d.body)))
            except InvalidEnvelope as exc:
                await self._dead(d, str(exc), attempt_of(d.headers))
        if not parsed:
            return
        spans = [
            tracing.consumer_span(
                f"consume {d.routing_key}",
                d.headers,
                **{
                    "messaging.consumer.group.name": self.name,
                    "messaging.destination.name": self.queue,
                },
            )
            for d, _ in parsed
        ]
        items = [
            Incoming(env, tracing.traceparent_of(span) if span is not None else None)
            for (_, env), span in zip(parsed, spans, strict=True)
        ]
        try:
            results = await self._through_outages(
                lambda: self._apply_batch(items), str(items[0].env.id)
            )
        except ConsumerStopped:
            raise
        except Exception:
            # The batch failed as a whole (its commit, say): one message at a time.
            log.warning("consumer.batch_failed", consumer=self.name, size=len(parsed))
            for d, _ in parsed:
                await self.on_delivery(d)
            return
        finally:
            for span in spans:
                if span is not None:
                    span.end()
        done: list[Delivery] = []
        counts: Counter[str] = Counter()
        for (d, env), result in zip(parsed, results, strict=True):
            if isinstance(result, str):
                done.append(d)
                counts[result] += 1
                continue
            try:
                await self._failed(d, env, attempt_of(d.headers), result)
            except ConsumerStopped:
                await d.requeue()
            except Exception:
                await self._unrecorded(d)
        await self._done_many(done, counts)

    async def _done_many(self, done: list[Delivery], counts: Counter[str]) -> None:
        for outcome, n in counts.items():
            self.metrics.consumer_messages.labels(consumer=self.name, outcome=outcome).inc(n)
        if not done:
            return
        self.failpoints.hit("consumer.before_ack")
        if isinstance(self.broker, AcksMany):
            await self.broker.ack_many(done)
            return
        for d in done:
            await d.ack()

    async def _apply_batch(self, items: list[Incoming]) -> list[str | Exception]:
        results: list[str | Exception] = []
        async with self.pool.acquire() as conn, conn.transaction():
            fresh = await consumer_log.mark_processed_many(
                conn, self.name, [it.env.id for it in items]
            )
            todo: list[int] = []
            for i, it in enumerate(items):
                if it.env.id in fresh:
                    fresh.discard(it.env.id)  # a second copy in the same batch is a duplicate
                    todo.append(i)
                    results.append("applied")
                else:
                    results.append("duplicate")
            if todo and self.handle_many is not None:
                try:
                    async with conn.transaction():
                        await self.handle_many(conn, [items[i] for i in todo])
                    todo = []
                except Exception as exc:
                    if is_unavailable(exc):
                        raise
                    log.warning(
                        "consumer.batch_effect_failed",
                        consumer=self.name,
                        size=len(todo),
                        error=f"{type(exc).__name__}: {exc}",
                    )
            for i in todo:  # one message at a time, each all-or-none in its savepoint
                env = items[i].env
                try:
                    async with conn.transaction():
                        results[i] = await self._effect(conn, env)
                except Exception as exc:
                    if is_unavailable(exc):
                        raise
                    await consumer_log.unmark_processed(conn, self.name, env.id)
                    results[i] = exc
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
        # The effect has the transaction to itself, the mark aside (D-370): a use case
        # in it may write without a savepoint and ask for the whole transaction, mark
        # included, to be run again once (RetryTransaction), as a direct one does.
        return await retried(lambda: self._apply_once(env))

    async def _apply_once(self, env: Envelope) -> str:
        async with self.pool.acquire() as conn, conn.transaction(), owned(conn):
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
