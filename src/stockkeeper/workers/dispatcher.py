"""The dispatcher: outbox rows to the broker, at least once, in order per ordering key.

It claims PENDING ``domain_event`` rows in batches (``FOR UPDATE SKIP LOCKED``, so
several dispatchers can run), holds back any row whose ordering key (its SKU, its
order, D-130) has an earlier event held by another dispatcher, publishes with confirms
and marks the rows SENT in the same transaction. A row that does not go out (the broker
refused it, or it has no exchange) holds back the rows behind it with the same key. A
crash between publish and commit leaves the rows PENDING: they are published again and
the consumers' idempotency absorbs the duplicate; on the embedded queue the messages
are written in the claiming transaction itself, so there is no duplicate (D-132).
On RabbitMQ one batch stays in flight: the next is claimed and sent while its confirms
come in, and a row it could not send holds back its key's rows in the next (D-376).
Woken by ``LISTEN/NOTIFY`` on new events, with a poll as fallback (``store/listener``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.trace import Span, StatusCode

from stockkeeper.domain.backoff import Backoff
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.broker import (
    Broker,
    BrokerUnavailable,
    OutgoingMessage,
    PublishesInTransaction,
    PublishRejected,
    Reconnects,
)
from stockkeeper.messaging.envelope import (
    ATTEMPT_HEADER,
    ORDERING_KEY_HEADER,
    TRACEPARENT_HEADER,
    Envelope,
)
from stockkeeper.messaging.topology import exchange_for
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import outbox
from stockkeeper.store.errors import is_unavailable
from stockkeeper.store.listener import Listener, listen_then_poll
from stockkeeper.store.outbox import NOTIFY_CHANNEL, PendingEvent
from stockkeeper.store.pool import Conn, Pool

log = get_logger("stockkeeper.dispatcher")
STATS_EVERY_S = 5.0
OUTAGE_BASE_MS = 500


def to_message(row: PendingEvent, traceparent: str | None = None) -> OutgoingMessage:
    """The message for ``row``; ``traceparent`` (the publish span's, else the row's
    stored context, else a new one) goes in the headers, so the consumer continues the
    trace."""
    body = Envelope.dump(
        row.event_id,
        row.event_type,
        row.payload,
        occurred_at=row.occurred_at,
        sku=row.sku,
        sequence=row.sequence,
        source=row.source,
        key=row.ordering_key,
    )
    # Every message carries a trace context: tracing off, a row written outside any
    # request or message gets a new one (D-406).
    traceparent = traceparent or row.trace_context or tracing.new_traceparent()
    headers: dict[str, object] = {ATTEMPT_HEADER: 1, TRACEPARENT_HEADER: traceparent}
    if row.ordering_key:  # (rows SENT before migration 0008 have none, D-130)
        headers[ORDERING_KEY_HEADER] = row.ordering_key
    return OutgoingMessage(
        exchange_for(row.event_type),
        row.event_type,
        body,
        str(row.event_id),
        headers,
    )


def held_behind(rows: Sequence[PendingEvent], stopped: Collection[int]) -> set[int]:
    """The ids of ``rows`` that come after a ``stopped`` row of their ordering key: they
    must not be marked SENT before it, whatever the broker said about them."""
    blocked: set[str] = set()
    held: set[int] = set()
    for r in sorted(rows, key=lambda r: r.id):
        if r.id in stopped:
            blocked.add(r.ordering_key)
        elif r.ordering_key in blocked:
            held.add(r.id)
    return held


def first_unsent(published: Sequence[PendingEvent], sent: Collection[int]) -> dict[str, int]:
    """Per ordering key, the lowest id among ``published`` rows not in ``sent``: the
    rows after it of its key must wait for it, in this batch and the next (D-375)."""
    first: dict[str, int] = {}
    for r in published:
        if r.id not in sent and r.id < first.get(r.ordering_key, r.id + 1):
            first[r.ordering_key] = r.id
    return first


class _PublishSpans:
    """One ``publish <type>`` producer span per outbox row, child of the context stored
    with the row, open from the claim until the broker's confirm (D-241). Nothing at all
    when tracing is off."""

    def __init__(self) -> None:
        self._spans: dict[str, Span] = {}

    def start(self, row: PendingEvent) -> str | None:
        span = tracing.producer_span(
            f"publish {row.event_type}",
            row.trace_context,
            **{
                "messaging.message.id": str(row.event_id),
                "messaging.destination.name": row.event_type,
            },
        )
        if span is None:
            return None
        self._spans[str(row.event_id)] = span
        return tracing.traceparent_of(span)

    def held(self, published: Collection[str]) -> None:
        """End the spans of rows that are not published this time (held behind an
        earlier row of their key, or not publishable), saying so."""
        for message_id in [m for m in self._spans if m not in published]:
            span = self._spans.pop(message_id)
            span.set_attribute("stockkeeper.held_back", True)
            span.end()

    def failed(self, message_ids: set[str] | None, reason: str) -> None:
        for message_id, span in self._spans.items():
            if message_ids is None or message_id in message_ids:
                span.set_status(StatusCode.ERROR, reason)

    def end(self) -> None:
        for span in self._spans.values():
            span.end()
        self._spans.clear()


@dataclass(eq=False, slots=True)
class _Batch:
    """A claimed batch whose messages are with the broker: its transaction stays open
    (the rows locked and PENDING) until it is settled, committed or rolled back."""

    txn: contextlib.AsyncExitStack
    conn: Conn
    good: list[PendingEvent]  # published, in id order
    spans: _PublishSpans
    confirms: asyncio.Future[None]
    # The batch before this one's rows not SENT, by key (the lowest id): this batch's
    # later rows of those keys are not marked SENT either.
    stopped: dict[str, int] = field(default_factory=dict)

    @property
    def published(self) -> list[int]:
        return [r.id for r in self.good]

    async def abort(self, exc: BaseException) -> None:
        """Roll back: the rows stay PENDING, no attempt spent, and go out again (at
        least once; the consumers drop what they already had)."""
        self.confirms.cancel()
        await asyncio.gather(self.confirms, return_exceptions=True)
        self.spans.failed(None, repr(exc))
        self.spans.end()
        await self.txn.__aexit__(type(exc), exc, exc.__traceback__)


class Dispatcher:
    def __init__(
        self,
        pool: Pool,
        broker: Broker,
        metrics: Metrics,
        *,
        batch_size: int = 500,
        poll_ms: int = 1000,
        max_attempts: int = 10,
        backoff_max_ms: int = 30_000,
        failpoints: Failpoints | None = None,
        listen_pool: Pool | None = None,
    ) -> None:
        self.pool = pool
        # The LISTEN connection's pool: straight to PostgreSQL behind PgBouncer.
        self.listen_pool = listen_pool or pool
        self.broker = broker
        self.metrics = metrics
        self.batch_size = batch_size
        self.poll = poll_ms / 1000
        self.max_attempts = max_attempts
        # An outage (broker or database away) is waited out, not spent from the events'
        # attempts: 0.5 s, doubling, capped.
        self.outage = Backoff.from_ms(OUTAGE_BASE_MS, backoff_max_ms)
        self.failpoints = failpoints or Failpoints()
        self._failures = 0
        self._last_stats = 0.0
        # A broker outside our database confirms while we claim the next batch: one
        # batch stays in flight between steps (D-376), on a second connection (a pool of
        # one would wait for itself). The embedded queue writes in the claiming
        # transaction, its confirm is the commit: nothing to overlap.
        self.pipelined = not isinstance(broker, PublishesInTransaction) and pool.get_max_size() >= 2
        self._in_flight: _Batch | None = None

    async def dispatch_once(self) -> int:
        """Publish one batch; return how many events were marked SENT."""
        batch = await self._send()
        return 0 if batch is None else (await self._settle(batch))[0]

    async def _send(self, ahead: _Batch | None = None) -> _Batch | None:
        """Claim a batch and hand its messages to the broker (confirms not awaited);
        None when nothing went out (a row that cannot be sent has spent its attempt,
        committed). ``ahead``: our batch still in flight, whose published rows do not
        hold back their keys here (they are on the channel before these)."""
        txn = contextlib.AsyncExitStack()
        conn = await txn.enter_async_context(self.pool.acquire())
        spans = _PublishSpans()
        try:
            await txn.enter_async_context(conn.transaction())
            ready = await outbox.claim(conn, self.batch_size, ahead.published if ahead else ())
            messages: dict[int, OutgoingMessage] = {}
            bad: dict[int, str] = {}
            for r in ready:
                try:
                    messages[r.id] = to_message(r, spans.start(r))
                except ValueError as exc:
                    bad[r.id] = str(exc)
            for row_id, error in bad.items():
                await self._failed_attempt(conn, [row_id], error)
            # A row that cannot go out keeps its key's later rows back until it is sent
            # or FAILED; they are not even published.
            held = held_behind(ready, bad)
            good = [r for r in ready if r.id in messages and r.id not in held]
            spans.held({str(r.event_id) for r in good})
            if not good:
                spans.end()
                await txn.aclose()
                return None
            for event_type in sorted({r.event_type for r in good}):
                await self.failpoints.pause(f"dispatcher.before_publish.{event_type}")
            confirms = asyncio.ensure_future(self._publish(conn, [messages[r.id] for r in good]))
        except BaseException as exc:
            spans.failed(None, repr(exc))
            spans.end()
            await txn.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return _Batch(txn, conn, good, spans, confirms)

    async def _settle(
        self, batch: _Batch, stopped: Mapping[str, int] | None = None
    ) -> tuple[int, dict[str, int]]:
        """Wait for ``batch``'s confirms, mark SENT what may be and commit. ``stopped``:
        the rows of the batch before (published ahead of this one) that were not SENT,
        as key to lowest id; this batch's later rows of those keys are not SENT either.
        Returns how many were SENT, and this batch's own ``stopped``."""
        conn, good, spans = batch.conn, batch.good, batch.spans
        try:
            try:
                await batch.confirms
            except PublishRejected as exc:
                spans.failed({str(i) for i in exc.message_ids}, exc.reason)
                # The rest were confirmed. The refused ones spend an attempt and become
                # FAILED past the limit; the confirmed rows behind a refused one of the
                # same key stay PENDING (no attempt spent) and go out again after it.
                refused_ids = set(exc.message_ids)
                refused = {r.id for r in good if str(r.event_id) in refused_ids}
                await self._failed_attempt(conn, sorted(refused), exc.reason)
                held = held_behind(good, refused)
                good = [r for r in good if r.id not in refused and r.id not in held]
                self.metrics.publish_failures.labels(reason="rejected").inc()
            except BaseException as exc:
                spans.failed(None, repr(exc))
                raise
            finally:
                spans.end()
            if stopped:
                good = [r for r in good if r.id < stopped.get(r.ordering_key, r.id + 1)]
            self.failpoints.hit("dispatcher.after_publish")
            await outbox.mark_sent(conn, [r.id for r in good])
        except BaseException as exc:
            await batch.txn.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        await batch.txn.aclose()  # the commit: SENT only once confirmed
        self.metrics.events_published.inc(len(good))
        return len(good), first_unsent(batch.good, {r.id for r in good})

    async def _publish(self, conn: Conn, messages: list[OutgoingMessage]) -> None:
        """To the broker, with confirms. A broker in our own database writes the
        messages in the claiming transaction: they exist exactly when the rows are SENT.
        Any other is called with the transaction open, so the rows stay locked (and
        PENDING if we die) until its confirms are in (D-132)."""
        if isinstance(self.broker, PublishesInTransaction):
            await self.broker.publish_in(conn, messages)
        else:
            await self.broker.publish(messages)

    async def _failed_attempt(self, conn: Conn, ids: list[int], error: str) -> None:
        for row_id in await outbox.fail_attempt(conn, ids, error, self.max_attempts):
            self.metrics.events_failed.inc()
            log.error("dispatcher.event_failed", event_row=row_id, error=error)

    async def refresh_backlog(self) -> None:
        """Publish the outbox backlog, its oldest wait and the FAILED count as metrics."""
        async with self.pool.acquire() as conn:
            stats = await outbox.stats(conn)
        self.metrics.outbox_backlog.set(stats.pending)
        self.metrics.outbox_oldest_age.set(stats.oldest_pending_s or 0.0)
        self.metrics.outbox_failed_open.set(stats.failed)

    async def run(self, stop: asyncio.Event) -> None:
        reconnects = self.metrics.listener_reconnects.labels(listener="dispatcher")
        listener = Listener(self.listen_pool, "dispatcher", on_reconnect=reconnects.inc)
        wake = listener.subscribe(NOTIFY_CHANNEL)
        # The broker back after an outage: try at once, not at the end of the pause.
        resume = asyncio.Event()
        if isinstance(self.broker, Reconnects):
            self.broker.on_reconnect(resume.set)
        async with listener:
            log.info("dispatcher.started", batch=self.batch_size)
            try:
                await listen_then_poll(
                    self._step,
                    wake,
                    stop,
                    poll_s=self.poll,
                    on_error=self._on_error,
                    errors=self.outage,
                    resume=resume,
                )
                await self.land()
            except BaseException as exc:
                await self._abandon(exc)
                raise
            finally:
                log.info("dispatcher.stopped")

    async def _step(self) -> bool:
        """One batch, and the backlog metrics now and then; True while a full batch
        went out (more may be waiting)."""
        more = await self.dispatch_ahead() if self.pipelined else await self._single_step()
        if time.monotonic() - self._last_stats > STATS_EVERY_S:
            try:
                await self.refresh_backlog()
            except BaseException as exc:
                await self._abandon(exc)  # not in flight through the error's backoff
                raise
            self._last_stats = time.monotonic()
        self._failures = 0  # in step with listen_then_poll's count of failures in a row
        return more

    async def _single_step(self) -> bool:
        return await self.dispatch_once() >= self.batch_size

    async def dispatch_ahead(self) -> bool:
        """Claim and send the next batch while the one in flight is confirmed, then
        settle that one; True when a full batch went out, which stays in flight for the
        next call (``land`` settles it). A partial one (the backlog is drained) is
        settled at once, so no rows stay locked while we wait for work (D-375).

        Order per key: the batch in flight was written to the channel before this one,
        so its rows do not hold back theirs; its rows not sent (refused) do stop their
        keys' rows here from being marked SENT, and a batch in flight that fails takes
        this one down with it (both roll back and go out again, at least once)."""
        ahead, self._in_flight = self._in_flight, None
        try:
            batch = await self._send(ahead)
        except BaseException as exc:
            if ahead is not None:
                await ahead.abort(exc)
            raise
        stopped: dict[str, int] = {}
        if ahead is not None:
            try:
                _, stopped = await self._settle(ahead, ahead.stopped)
            except BaseException as exc:
                if batch is not None:
                    await batch.abort(exc)
                raise
        if batch is None:
            return False
        if len(batch.good) >= self.batch_size:
            batch.stopped = stopped
            self._in_flight = batch
            return True
        await self._settle(batch, stopped)
        return False

    async def land(self) -> None:
        """Settle the batch still in flight (the dispatcher stops)."""
        batch, self._in_flight = self._in_flight, None
        if batch is not None:
            await self._settle(batch, batch.stopped)

    async def _abandon(self, exc: BaseException) -> None:
        batch, self._in_flight = self._in_flight, None
        if batch is not None:
            await batch.abort(exc)

    def _on_error(self, exc: Exception) -> None:
        self._failures += 1
        retry_in_s = self.outage.delay(self._failures)
        if isinstance(exc, BrokerUnavailable):
            # The broker is away: nothing is lost (rows stay PENDING); wait and try
            # again, without spending the events' attempts on an outage.
            self.metrics.publish_failures.labels(reason="unavailable").inc()
            log.warning("dispatcher.broker_unavailable", error=str(exc), retry_in_s=retry_in_s)
            return
        # The database restarting, or something unforeseen: counted, logged, retried
        # with backoff. The rows are still PENDING; nothing is lost.
        self.metrics.worker_errors.labels(worker="dispatcher").inc()
        if is_unavailable(exc):  # an outage: one line per try, no traceback (D-433)
            error = f"{type(exc).__name__}: {exc}"
            log.warning("dispatcher.database_unavailable", error=error, retry_in_s=retry_in_s)
            return
        log.exception("dispatcher.error", error=str(exc))
