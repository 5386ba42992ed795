"""The dispatcher: outbox rows to the broker, at least once, in order per SKU.

It claims PENDING ``domain_event`` rows in batches (``FOR UPDATE SKIP LOCKED``, so
several dispatchers can run), holds back any row whose SKU has an earlier event held by
another dispatcher, publishes with confirms and marks the rows SENT in the same
transaction. A crash between publish and commit leaves the rows PENDING: they are
published again and the consumers' idempotency absorbs the duplicate. Woken by
``LISTEN/NOTIFY`` on new events, with a poll as fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg

from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.broker import (
    Broker,
    BrokerUnavailable,
    OutgoingMessage,
    PublishRejected,
)
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, Envelope
from stockkeeper.messaging.topology import exchange_for
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store.outbox import NOTIFY_CHANNEL
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.store.sql import q
from stockkeeper.waiting import wait_any

log = get_logger("stockkeeper.dispatcher")
STATS_EVERY_S = 5.0


def to_message(row: asyncpg.Record) -> OutgoingMessage:
    env = Envelope.new(
        row["event_type"],
        row["payload"],
        occurred_at=row["occurred_at"],
        sku=row["sku"],
        sequence=row["sequence"],
        source=row["source"],
        id_=row["event_id"],
    )
    return OutgoingMessage(
        exchange_for(row["event_type"]),
        row["event_type"],
        env.to_bytes(),
        str(row["event_id"]),
        {ATTEMPT_HEADER: 1},
    )


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
        self.backoff_max = backoff_max_ms / 1000
        self.failpoints = failpoints or Failpoints()
        self._wake = asyncio.Event()

    async def dispatch_once(self) -> int:
        """Publish one batch; return how many events were marked SENT."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(q("outbox_claim"), self.batch_size)
            if not rows:
                return 0
            ids = [r["id"] for r in rows]
            skus = sorted({r["sku"] for r in rows if r["sku"] is not None})
            held: dict[str, int] = {}
            if skus:
                for b in await conn.fetch(q("outbox_blocked_skus"), skus, max(ids), ids):
                    held[b["sku"]] = b["first_held"]
            ready = [r for r in rows if r["sku"] not in held or r["id"] < held[r["sku"]]]
            good: list[asyncpg.Record] = []
            messages: list[OutgoingMessage] = []
            bad: list[tuple[int, str]] = []
            for r in ready:
                try:
                    messages.append(to_message(r))
                    good.append(r)
                except ValueError as exc:
                    bad.append((r["id"], str(exc)))
            for row_id, error in bad:
                await self._failed_attempt(conn, [row_id], error)
            if not messages:
                return 0
            try:
                await self.broker.publish(messages)
            except PublishRejected as exc:
                # The rest were confirmed: they are marked SENT below. The refused ones
                # spend an attempt and become FAILED past the limit.
                refused = set(exc.message_ids)
                await self._failed_attempt(
                    conn, [r["id"] for r in good if str(r["event_id"]) in refused], exc.reason
                )
                good = [r for r in good if str(r["event_id"]) not in refused]
                self.metrics.publish_failures.labels(reason="rejected").inc()
            self.failpoints.hit("dispatcher.after_publish")
            await conn.execute(q("outbox_mark_sent"), [r["id"] for r in good])
        self.metrics.events_published.inc(len(good))
        return len(good)

    async def _failed_attempt(self, conn: Conn, ids: list[int], error: str) -> None:
        for r in await conn.fetch(
            q("outbox_mark_failed_attempt"), ids, error[:2000], self.max_attempts
        ):
            if r["status"] == "FAILED":
                self.metrics.events_failed.inc()
                log.error("dispatcher.event_failed", event_row=r["id"], error=error)

    async def refresh_backlog(self) -> None:
        """Publish the outbox backlog and FAILED count as metrics."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(q("outbox_stats"))
        if row is not None:
            self.metrics.outbox_backlog.set(row["pending"])
            self.metrics.outbox_failed_open.set(row["failed"])

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        listener = await self.listen_pool.acquire()
        await listener.add_listener(NOTIFY_CHANNEL, self._on_notify)
        log.info("dispatcher.started", batch=self.batch_size)
        backoff = 0.5
        last_stats = 0.0
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    n = await self.dispatch_once()
                    backoff = 0.5
                except BrokerUnavailable as exc:
                    # The broker is away: nothing is lost (rows stay PENDING); wait and
                    # try again, without spending the events' attempts on an outage.
                    self.metrics.publish_failures.labels(reason="unavailable").inc()
                    log.warning("dispatcher.broker_unavailable", error=str(exc), retry_in_s=backoff)
                    await wait_any(stop, at_most=backoff)
                    backoff = min(self.backoff_max, backoff * 2)
                    continue
                except Exception as exc:
                    # The database restarting, or something unforeseen: counted, logged,
                    # retried with backoff. The rows are still PENDING; nothing is lost.
                    self.metrics.worker_errors.labels(worker="dispatcher").inc()
                    log.exception("dispatcher.error", error=str(exc))
                    await wait_any(stop, at_most=backoff)
                    backoff = min(self.backoff_max, backoff * 2)
                    continue
                if time.monotonic() - last_stats > STATS_EVERY_S:
                    await self.refresh_backlog()
                    last_stats = time.monotonic()
                if n < self.batch_size:
                    await wait_any(stop, self._wake, at_most=self.poll)
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            await self.listen_pool.release(listener)
            log.info("dispatcher.stopped")
