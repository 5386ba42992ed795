"""The pollers service: ERP change pollers and marketplace delta pollers.

Each page read is queued (as ``ingest.<connector>`` outbox events) and its cursor saved
in one transaction, so the cursor never runs ahead of what is durably queued and a
poller killed mid-page reads that page again after restart (the newer-wins guard and
the per-transaction sale ids make a page read twice harmless). One poller per
connector runs at a time across every replica (a PostgreSQL advisory lock): a second
``stockkeeper run pollers`` waits as a standby, so syncs never overlap. Polling pauses
while the ingest backlog is above the connector's high-water mark.

"Poll now" (``POST /admin/connectors/{id}/poll``) is a ``poll_request`` row and a NOTIFY
heard on the connection that holds the lock: the poller takes the row and polls at once
instead of waiting out its interval, on whichever replica it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta

from stockkeeper.bootstrap import Container, env_secret
from stockkeeper.config import ErpConnectorConfig, MarketplaceConnectorConfig
from stockkeeper.connectors.erp import ErpSource, Position
from stockkeeper.connectors.http import ConnectorError
from stockkeeper.connectors.marketplace import (
    MarketplaceClient,
    TokenDidNotAdvance,
    check_advances,
)
from stockkeeper.domain.backoff import Backoff
from stockkeeper.observability.logging import get_logger
from stockkeeper.services.circuit import CircuitBreaker, CircuitOpen
from stockkeeper.services.ingest import INGEST_QUEUE, queue_records
from stockkeeper.services.unit import transaction
from stockkeeper.store import connector_state, cursors, locks, outbox, poll_requests
from stockkeeper.store.cursors import Cursor
from stockkeeper.store.errors import StoreUnavailable, is_unavailable
from stockkeeper.store.pool import Conn, is_open, ping
from stockkeeper.waiting import wait_any
from stockkeeper.workers.round_errors import log_round_failed

log = get_logger("stockkeeper.pollers")
# The pauses while the database cannot be reached, as the other workers' (D-433).
DATABASE_OUTAGE = Backoff(0.5, 30.0)


def _check_session(lost: asyncio.Event) -> None:
    """Raise :class:`StoreUnavailable` once the lock's session has ended."""
    if lost.is_set():
        raise StoreUnavailable("the session holding the poller's lock ended")


def lock_key(connector: str) -> int:
    """A stable advisory-lock key per connector."""
    return locks.key_of(f"poller:{connector}")


class Poller:
    """What the ERP and marketplace pollers share: the lock, the backlog, the loop."""

    name: str
    interval_s: float
    high_water: int

    def __init__(self, container: Container) -> None:
        self.c = container
        self.metrics = container.metrics
        self.wake = asyncio.Event()  # set by a "poll now" request for this connector
        self._held = False  # whether this poller holds its connector's lock

    async def backlog(self) -> int:
        """Ingest messages not yet applied: in the outbox and on the broker."""
        async with self.c.pool.acquire() as conn:
            pending = await outbox.pending_ingest(conn)
        try:
            depths = await (await self.c.connected_broker()).queue_depths()
        except Exception:  # the broker's depth is a hint; the outbox count is ours
            return pending
        queued = sum(n for q_, n in depths.items() if q_.endswith(INGEST_QUEUE))
        return pending + queued

    async def run(self, stop: asyncio.Event) -> None:
        """Hold the connector's lock and poll, or stand by, until ``stop``. The lock is
        the session's: when the database restarts it goes with the session, so the
        poller stops polling and, once the database answers again, takes a new session
        and competes for the lock again (D-437)."""
        outage = 0
        try:
            while not stop.is_set():
                try:
                    await self._hold_and_poll(stop)
                    return
                except Exception as exc:
                    if not is_unavailable(exc):
                        raise
                    outage = 0 if self._held else outage + 1
                    self._held = False
                    pause = DATABASE_OUTAGE.delay(max(1, outage))
                    log.warning(
                        "poller.database_unavailable",
                        connector=self.name,
                        error=f"{type(exc).__name__}: {exc}",
                        retry_in_s=pause,
                    )
                    await wait_any(stop, at_most=pause)
        finally:
            await self.close()

    async def _hold_and_poll(self, stop: asyncio.Event) -> None:
        # A session-level advisory lock: on a session of its own (not through PgBouncer).
        async with self.c.session_pool.acquire() as holder:
            # Set the moment the session ends, so a wait of a long interval ends with it:
            # "poll now" came over that session's LISTEN and cannot wake it any more.
            lost = asyncio.Event()
            unwatch = locks.watch_session(holder, lost)
            try:
                while not stop.is_set():
                    if await locks.try_hold(holder, lock_key(self.name)):
                        break
                    log.info("poller.standby", connector=self.name)
                    await wait_any(stop, lost, at_most=self.interval_s)
                    _check_session(lost)
                else:
                    return
                self._held = True
                unlisten = await poll_requests.listen(holder, self.name, self.wake)
                try:
                    log.info("poller.started", connector=self.name)
                    await self._loop(stop, holder, lost)
                finally:
                    await unlisten()
                    if is_open(holder):
                        with contextlib.suppress(StoreUnavailable):  # gone: the lock too
                            await locks.release(holder, lock_key(self.name))
            finally:
                unwatch()

    async def _loop(self, stop: asyncio.Event, holder: Conn, lost: asyncio.Event) -> None:
        while not stop.is_set():
            # The lock lives as long as its session: a round begins by checking it is
            # still there (raises once the database restarted, D-437).
            _check_session(lost)
            await ping(holder)
            # Cleared before the request is taken: one made during this round wakes the
            # wait below at once.
            self.wake.clear()
            await self.take_request()
            if not await self.tick():
                await wait_any(stop, self.wake, lost, at_most=self.interval_s)

    async def take_request(self) -> None:
        """Take a pending "poll now" request: this round is the poll it asked for."""
        try:
            async with self.c.pool.acquire() as conn:
                asked = await poll_requests.take(conn, self.name)
        except Exception as exc:
            self.metrics.worker_errors.labels(worker=f"poller:{self.name}").inc()
            log_round_failed(log, "poller.request_failed", exc, connector=self.name)
            return
        if asked is not None:
            log.info(
                "poller.poll_now",
                connector=self.name,
                requested_by=asked.requested_by,
                waited_s=round((datetime.now(UTC) - asked.requested_at).total_seconds(), 3),
            )

    async def tick(self) -> bool:
        """One round: a page if the backlog allows; True when more is waiting."""
        try:
            if await self.backlog() > self.high_water:
                self.metrics.poll_paused.labels(connector=self.name).inc()
                log.info("poller.paused", connector=self.name, reason="ingest backlog")
                return False
            started = time.monotonic()
            more = await self.poll_once()
            self.metrics.poll_duration.labels(connector=self.name).observe(
                time.monotonic() - started
            )
            return more
        except Exception as exc:
            self.metrics.worker_errors.labels(worker=f"poller:{self.name}").inc()
            log_round_failed(log, "poller.failed", exc, connector=self.name)
            await self.note_failure(exc)
            return False

    async def note_failure(self, exc: BaseException) -> None:
        """Keep a failed round as the connector's ``last_failure`` in /admin/status: an
        ERP whose view lost a column, or that cannot be reached, said so only in the
        log (D-440). A marketplace's failed calls are kept by its circuit breaker."""
        try:
            async with self.c.pool.acquire() as conn:
                await connector_state.record_failure(
                    conn, self.name, str(exc) or type(exc).__name__, self.c.clock()
                )
        except Exception as err:  # the database away: the log above has it
            log_round_failed(log, "poller.failure_not_kept", err, connector=self.name)

    async def poll_once(self) -> bool:
        """Read and queue one page; True when there is more to read right away."""
        raise NotImplementedError

    async def close(self) -> None:
        return None


class ErpPoller(Poller):
    def __init__(self, container: Container, cfg: ErpConnectorConfig) -> None:
        super().__init__(container)
        self.cfg = cfg
        self.name = cfg.id
        self.interval_s = cfg.interval_s
        self.high_water = cfg.backlog_high_water
        dsn = cfg.dsn or env_secret(cfg, "dsn_env")
        assert dsn is not None
        self.source = ErpSource(cfg, dsn)

    async def position(self, conn: Conn) -> Position | None:
        cursor = await cursors.get(conn, self.name)
        if cursor is None or cursor.last_modified is None:
            return None
        if cursor.sku is None or cursor.location is None:
            return None  # only an ERP page saves a position, and it saves all three
        return Position(cursor.last_modified, cursor.sku, cursor.location)

    async def poll_once(self) -> bool:
        async with self.c.pool.acquire() as conn:
            after = await self.position(conn)
        settle = timedelta(milliseconds=self.cfg.settle_ms)
        page = await self.source.page(after, self.c.clock() - settle if settle else None)
        if page.last is None:
            return False
        async with transaction(self.c.pool) as conn:
            await queue_records(
                conn,
                self.name,
                page.levels,
                [],
                page.refused,
                per_message=self.cfg.records_per_message,
            )
            last = page.last
            await cursors.advance(
                conn,
                self.name,
                Cursor(last.last_modified, last.sku, last.location, None),
                page.rows,
            )
            self.c.failpoints.hit("poller.before_commit")
        self.metrics.source_records_read.labels(connector=self.name).inc(page.rows)
        if page.refused:
            self.metrics.ingest_records.labels(connector=self.name, outcome="refused").inc(
                len(page.refused)
            )
            self.metrics.dead_letters.labels(queue=INGEST_QUEUE).inc(len(page.refused))
        age = (datetime.now(UTC) - page.last.last_modified).total_seconds()
        self.metrics.source_cursor_age.labels(connector=self.name).set(max(0.0, age))
        return page.rows >= self.cfg.page_size

    async def close(self) -> None:
        await self.source.close()


class MarketplacePoller(Poller):
    def __init__(self, container: Container, cfg: MarketplaceConnectorConfig) -> None:
        super().__init__(container)
        self.cfg = cfg
        self.name = cfg.id
        self.interval_s = cfg.interval_s
        self.high_water = 10**9  # a marketplace's pages are small; the breaker guards it
        self.client = MarketplaceClient(
            cfg, metrics=container.metrics, token=env_secret(cfg, "token_env")
        )
        self.breaker = CircuitBreaker(
            container.pool,
            container.metrics,
            cfg.id,
            failure_threshold=cfg.failure_threshold,
            cooldown_s=cfg.cooldown_s,
            clock=container.clock,
        )
        # The tokens this round has read from (a round: the pages read back to back
        # while the feed says there are more), so a feed whose token does not advance
        # ends the round as a failure instead of being read for ever (D-471).
        self._round: set[str] = set()
        self._pages = 0

    async def poll_once(self) -> bool:
        async with self.c.pool.acquire() as conn:
            cursor = await cursors.get(conn, self.name)
        since = cursor.token if cursor else None
        try:
            async with self.breaker.guard():
                page = await self.client.deltas(since)
                check_advances(self.name, since, page, self._round)
        except CircuitOpen:
            self._end_round()
            return False
        except TokenDidNotAdvance as exc:
            self._end_round()
            log.error(
                "poller.token_did_not_advance",
                connector=self.name,
                since=exc.since,
                next=exc.next_token,
                error=str(exc),
            )
            return False
        except ConnectorError as exc:
            self._end_round()
            log.warning("poller.source_failed", connector=self.name, error=str(exc))
            return False
        async with transaction(self.c.pool) as conn:
            await queue_records(
                conn,
                self.name,
                page.levels,
                page.sales,
                page.refused,
                per_message=self.cfg.records_per_message,
            )
            await cursors.advance(
                conn, self.name, Cursor(None, None, None, page.next_token), page.records
            )
        self.metrics.source_records_read.labels(connector=self.name).inc(page.records)
        if since is not None:
            self._round.add(since)
        self._pages += 1
        if page.has_more and self._pages < self.cfg.max_pages_per_round:
            return True
        if page.has_more:
            log.warning("poller.round_capped", connector=self.name, pages=self._pages)
        self._end_round()
        return False

    def _end_round(self) -> None:
        self._round.clear()
        self._pages = 0

    async def close(self) -> None:
        await self.client.aclose()


def pollers(container: Container) -> list[Poller]:
    out: list[Poller] = [
        ErpPoller(container, cfg) for cfg in container.settings.connectors_of(ErpConnectorConfig)
    ]
    out += [
        MarketplacePoller(container, cfg)
        for cfg in container.settings.connectors_of(MarketplaceConnectorConfig)
    ]
    return out


async def run_pollers(container: Container, stop: asyncio.Event) -> None:
    running = pollers(container)
    if not running:
        await stop.wait()
        return
    await asyncio.gather(*(p.run(stop) for p in running))
