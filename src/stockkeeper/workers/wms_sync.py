"""The wms-sync worker: runs force-sync requests and the incremental schedule.

Commands arrive on ``wms.sync``; the request rows in ``wms_sync_request`` are the jobs.
A job is claimed (SKIP LOCKED, so replicas share), run page by page (each page one
transaction that also saves where to go on), and finished DONE or FAILED with the
reason. A worker killed mid-sync leaves its job IN_PROGRESS; once it stops reporting
progress for ``stale_after_s`` any worker takes it over from its last page.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, ValidationError

from stockkeeper.config import WmsConnectorConfig
from stockkeeper.connectors.http import ConnectorRejected, ConnectorUnavailable
from stockkeeper.connectors.wms import WmsClient, WmsStockRow, WmsTokenRejected
from stockkeeper.domain.wms import Counted, SyncKind, SyncStatus
from stockkeeper.messaging.consumer import EffectHandler, PermanentError
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.wms import Rejected, SyncJob, WmsService
from stockkeeper.store.pool import Conn
from stockkeeper.store.wms import CallRow
from stockkeeper.waiting import wait_any
from stockkeeper.workers.round_errors import RoundErrors

LOGGER = "stockkeeper.wms_sync"
log = get_logger(LOGGER)

POLL_S = 1.0


class SyncCommand(BaseModel):
    model_config = ConfigDict(extra="allow")
    sync_request_id: int
    connector: str


def counted(row: WmsStockRow) -> Counted:
    return Counted(
        row.sku,
        row.location,
        row.lot_number,
        row.expires_at,
        row.on_hand,
        row.unavailable,
        row.updated_at,
    )


def refused(rows: Sequence[tuple[int, object, str]]) -> list[Rejected]:
    return [Rejected(raw, error) for _, raw, error in rows]


class WmsSyncWorker:
    def __init__(
        self,
        service: WmsService,
        clients: dict[str, WmsClient],
        configs: Sequence[WmsConnectorConfig],
        metrics: Metrics,
        calls: dict[str, list[CallRow]] | None = None,
    ) -> None:
        self.service = service
        self.clients = clients
        self.configs = {c.id: c for c in configs}
        self.metrics = metrics
        # Each client appends a record per try; kept in wms_call when a job ends.
        self.calls = calls or {}
        self.wake = asyncio.Event()

    def handler(self) -> EffectHandler:
        """The ``wms.sync`` consumer: a command names a request; wake the job loop."""

        async def handle(conn: Conn, env: Envelope) -> None:
            try:
                cmd = SyncCommand.model_validate(env.payload)
            except ValidationError as exc:
                raise PermanentError(f"not a sync command: {exc.errors()[0]['msg']}") from None
            if cmd.connector not in self.configs:
                raise PermanentError(f"no WMS connector {cmd.connector!r} is configured here")
            self.wake.set()

        return handle

    async def run(self, stop: asyncio.Event) -> None:
        log.info("wms_sync.started", connectors=list(self.configs))
        if not self.configs:
            # No WMS configured: commands have nowhere to go, but the service runs.
            await stop.wait()
            return
        try:
            await asyncio.gather(self._jobs(stop), self._schedule(stop))
        finally:
            for c in self.clients.values():
                await c.aclose()
        log.info("wms_sync.stopped")

    async def _jobs(self, stop: asyncio.Event) -> None:
        stale = min(c.stale_after_s for c in self.configs.values())
        errors = RoundErrors("wms-sync", "wms_sync", self.metrics, LOGGER)
        while not stop.is_set():
            job = None
            try:
                job = await self.service.claim(stale)
                errors.ok()
                if job is not None:
                    await self.run_job(job)
                    continue
            except Exception as exc:
                pause = errors.failed("wms_sync.loop_failed", exc)
                if pause is not None:  # the database is away: no job can be claimed
                    await wait_any(stop, at_most=pause)
                    continue
            self.wake.clear()
            await wait_any(stop, self.wake, at_most=POLL_S)

    async def _schedule(self, stop: asyncio.Event) -> None:
        periodic = {k: c for k, c in self.configs.items() if c.incremental_interval_s > 0}
        if not periodic:
            return
        tick = min(5.0, *(c.incremental_interval_s for c in periodic.values()))
        errors = RoundErrors("wms-sync", "wms_sync.schedule", self.metrics, LOGGER)
        while not stop.is_set():
            pause: float | None = None
            for name, cfg in periodic.items():
                try:
                    if await self.service.schedule_incremental(name, cfg.incremental_interval_s):
                        self.wake.set()
                    errors.ok()
                except Exception as exc:
                    pause = errors.failed("wms_sync.schedule_failed", exc)
                    if pause is not None:  # the database is away, for every connector
                        break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(tick, pause or 0.0))

    async def run_job(self, job: SyncJob) -> SyncStatus:
        """Run one claimed request to its end; never raises for the WMS's failures."""
        started = time.monotonic()
        log.info("wms_sync.job_started", request=job.id, kind=job.kind, attempt=job.attempts)
        status, error, token = SyncStatus.DONE, None, None
        try:
            token = await self._sync(job, self.clients[job.connector])
        except ConnectorUnavailable as exc:
            status, error = SyncStatus.FAILED, f"WMS unavailable: {exc}"
        except ConnectorRejected as exc:
            status, error = SyncStatus.FAILED, f"WMS refused the request: {exc}"
        except Exception as exc:
            log.exception("wms_sync.job_crashed", request=job.id)
            status, error = SyncStatus.FAILED, f"{type(exc).__name__}: {exc}"
        await self.service.finish(job, status, error, token=token)
        kept = self.calls.get(job.connector)
        if kept:
            taken, kept[:] = list(kept), []
            await self.service.record_calls(job.connector, taken)
        elapsed = time.monotonic() - started
        self.metrics.wms_sync_duration.labels(
            connector=job.connector, kind=job.kind.value, result=status.value.lower()
        ).observe(elapsed)
        if status is SyncStatus.FAILED:
            # An operator must hear of a sync that did not happen: at error, with why.
            log.error(
                "wms_sync.job_failed",
                request=job.id,
                connector=job.connector,
                kind=job.kind.value,
                error=error,
                s=elapsed,
            )
        else:
            log.info("wms_sync.job_finished", request=job.id, status=status, s=elapsed)
        return status

    async def _sync(self, job: SyncJob, client: WmsClient) -> str | None:
        """Page through what the job asks for; return the change token to keep, if any."""
        if job.kind is SyncKind.BATCH:
            await self._one_batch(job, client)
            return None
        if job.kind is SyncKind.SKU:
            await self._snapshot(job, client, sku=job.sku)
            return None
        if job.kind is SyncKind.INCREMENTAL:
            since = await self.service.sync_token(job.connector)
            if since is not None:
                try:
                    await self._changes(job, client, since)
                    return None
                except WmsTokenRejected:
                    log.warning("wms_sync.token_refused", request=job.id, token=since)
            # No token yet (or the WMS no longer knows ours): read everything.
        start = job.start_token
        if start is None:
            # Taken before the first page: changes made while we page are read again
            # by the next incremental sync (a count applied twice is still the count).
            start = await client.head_token()
            await self.service.set_start_token(job, start)
        await self._snapshot(job, client)
        return start

    async def _one_batch(self, job: SyncJob, client: WmsClient) -> None:
        assert job.batch_id is not None
        where = await self.service.batch_identity(job.batch_id)
        page = await client.stock_page(
            sku=where.sku, location=where.location, lot_number=where.lot_number
        )
        rows = [
            r
            for r in page.items
            if (r.sku, r.location, r.lot_number or "")
            == (where.sku, where.location, where.lot_number or "")
        ]
        await self.service.apply_page(
            job, [counted(r) for r in rows], refused(page.rejected), cursor=None
        )

    async def _snapshot(self, job: SyncJob, client: WmsClient, sku: str | None = None) -> None:
        """Page through the snapshot, reading the next page while this one is applied
        (D-342): the cursor saved with a page is still the one after it, and a page
        read ahead of a failure is dropped unread."""
        page = await client.stock_page(cursor=job.cursor, sku=sku)
        while True:
            ahead = None
            if page.next_cursor is not None:
                ahead = asyncio.ensure_future(client.stock_page(cursor=page.next_cursor, sku=sku))
            try:
                await self.service.apply_page(
                    job,
                    [counted(r) for r in page.items],
                    refused(page.rejected),
                    cursor=page.next_cursor,
                    total=page.total,
                )
            except BaseException:
                if ahead is not None:
                    ahead.cancel()
                    with contextlib.suppress(BaseException):
                        await ahead
                raise
            if ahead is None:
                return
            page = await ahead

    async def _changes(self, job: SyncJob, client: WmsClient, since: str) -> None:
        while True:
            page = await client.changes(since)
            await self.service.apply_page(
                job,
                [counted(r) for r in page.items],
                refused(page.rejected),
                cursor=page.next_token,
                token=page.next_token,
            )
            since = page.next_token
            if not page.has_more:
                return
