"""WMS sync requests: force syncs from the admin side, the incremental schedule, the
worker's claims and their end, and the status page's view of each WMS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from stockkeeper.domain.errors import InvalidRequest, NotFound
from stockkeeper.domain.events import Event
from stockkeeper.domain.wms import (
    PRIORITIES,
    SyncKind,
    SyncProgress,
    SyncStatus,
    sync_kind,
    sync_progress,
)
from stockkeeper.services.unit import add_events, transaction
from stockkeeper.services.wms.base import WmsBase
from stockkeeper.store import connector_state
from stockkeeper.store import wms as repo
from stockkeeper.store.connector_state import Failure
from stockkeeper.store.pool import Conn, Row

FORCE_COMMAND = "wms.sync.force"
SCHEDULED_COMMAND = "wms.sync.scheduled"


@dataclass(frozen=True, slots=True)
class SyncJob:
    """A claimed sync request, as the worker runs it."""

    id: int
    connector: str
    kind: SyncKind
    sku: str | None
    batch_id: int | None
    cursor: str | None
    start_token: str | None
    attempts: int

    @classmethod
    def of(cls, r: Row) -> SyncJob:
        return cls(
            r["id"],
            r["connector"],
            SyncKind(r["kind"]),
            r["sku"],
            r["sku_batch_id"],
            r["cursor"],
            r["start_token"],
            r["attempts"],
        )


@dataclass(frozen=True, slots=True)
class BatchIdentity:
    """How the WMS names one of our batches."""

    id: int
    sku: str
    location: str
    lot_number: str | None


@dataclass(frozen=True, slots=True)
class WmsStatus:
    """One WMS on the status page: its sync schedule, open syncs, outbound backlog."""

    has_change_token: bool
    last_full_sync_at: datetime | None
    last_incremental_sync_at: datetime | None
    next_incremental_sync_at: datetime | None
    open_syncs: int
    outbound_pending: int
    outbound_dead: int
    outbound_oldest_pending_seconds: float | None
    last_failure: Failure | None  # the last failed sync or outbound send, kept on success


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """A force or scheduled sync request, and how far it has got."""

    id: int
    connector: str
    kind: SyncKind
    sku: str | None
    sku_batch_id: int | None
    reason: str
    requested_by: str
    priority: str
    status: str
    error: str | None
    attempts: int
    pages: int
    rows_seen: int
    rows_rejected: int
    adjustments: int
    shortfalls: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # Rows of the whole snapshot, when the WMS gave it.
    rows_total: int | None = None

    def progress(self, now: datetime) -> SyncProgress:
        """Percentage and ETA, from the rows seen so far against the WMS's total."""
        return sync_progress(
            self.status, self.rows_seen, self.rows_total, self.started_at, self.finished_at, now
        )

    @classmethod
    def of(cls, r: Row) -> SyncRequest:
        return cls(
            id=r["id"],
            connector=r["connector"],
            kind=SyncKind(r["kind"]),
            sku=r["sku"],
            sku_batch_id=r["sku_batch_id"],
            reason=r["reason"],
            requested_by=r["requested_by"],
            priority=_PRIORITY_NAMES[r["priority"]],
            status=r["status"],
            error=r["error"],
            attempts=r["attempts"],
            pages=r["pages"],
            rows_seen=r["rows_seen"],
            rows_rejected=r["rows_rejected"],
            adjustments=r["adjustments"],
            shortfalls=r["shortfalls"],
            created_at=r["created_at"],
            started_at=r["started_at"],
            finished_at=r["finished_at"],
            rows_total=r.get("rows_total"),
        )


_PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}


class SyncRequests(WmsBase):
    """Requests and their lifecycle; a page's reconciliation is in ``snapshot``."""

    # -- force sync (admin) --------------------------------------------------------

    def _connector(self, name: str | None) -> str:
        if name is not None:
            if name not in self.connectors:
                raise InvalidRequest(f"no WMS connector {name!r} is configured", "body.connector")
            return name
        if len(self.connectors) != 1:
            if not self.connectors:
                raise InvalidRequest("no WMS connector is configured")
            raise InvalidRequest(
                f"several WMS connectors are configured; say which: {', '.join(self.connectors)}",
                "body.connector",
            )
        return next(iter(self.connectors))

    async def request_sync(
        self,
        *,
        reason: str,
        requested_by: str,
        sku: str | None = None,
        sku_batch_id: int | None = None,
        priority: str = "normal",
        connector: str | None = None,
        conn: Conn | None = None,
    ) -> SyncRequest:
        """Record a force-sync request and its command, in one transaction."""
        name = self._connector(connector)
        kind = sync_kind(sku, sku_batch_id)
        async with transaction(self.pool, conn) as c:
            if sku_batch_id is not None:
                found = await repo.batch_identities(c, [sku_batch_id])
                if sku_batch_id not in found:
                    raise NotFound(f"no batch {sku_batch_id}")
                if sku is not None and found[sku_batch_id]["sku"] != sku:
                    raise InvalidRequest(
                        f"batch {sku_batch_id} is not a batch of sku {sku}", "body.sku_batch_id"
                    )
                sku = found[sku_batch_id]["sku"]
            row = await repo.insert_request(
                c, name, kind.value, sku, sku_batch_id, reason, requested_by, PRIORITIES[priority]
            )
            await add_events(c, [self._command(FORCE_COMMAND, row)])
        return SyncRequest.of(row)

    @staticmethod
    def _command(kind: str, row: Row) -> Event:
        return Event(
            kind,
            {"sync_request_id": row["id"], "connector": row["connector"], "kind": row["kind"]},
        )

    async def get_request(self, request_id: int) -> SyncRequest:
        async with self.pool.acquire() as c:
            row = await repo.get_request(c, request_id)
        if row is None:
            raise NotFound(f"no sync request {request_id}")
        return SyncRequest.of(row)

    async def schedule_incremental(self, connector: str, every_s: float) -> int | None:
        """Queue an incremental sync if one is due and none is open; return its id.

        The state row is locked while deciding, so replicas never queue two.
        """
        now = self.clock()
        async with transaction(self.pool) as c:
            state = await repo.lock_sync_state(c, connector)
            due = state["next_incremental_at"]
            if due is not None and due > now:
                return None
            await repo.schedule_incremental(c, connector, now + timedelta(seconds=every_s))
            if await repo.open_request_of_kind(c, connector, SyncKind.INCREMENTAL.value):
                return None
            row = await repo.insert_request(
                c,
                connector,
                SyncKind.INCREMENTAL.value,
                None,
                None,
                "scheduled incremental sync",
                "schedule",
                PRIORITIES["low"],
            )
            await add_events(c, [self._command(SCHEDULED_COMMAND, row)])
        rid: int = row["id"]
        return rid

    async def status(self) -> dict[str, WmsStatus]:
        """Per WMS: its schedule, open syncs and the outbound backlog."""
        if not self.connectors:
            return {}
        async with self.pool.acquire() as c:
            rows = await repo.status(c, list(self.connectors))
            failures = await connector_state.last_failures(c, list(self.connectors))
        out: dict[str, WmsStatus] = {}
        for r in rows:
            oldest = r["oldest_pending_s"]
            out[r["connector"]] = WmsStatus(
                has_change_token=bool(r["has_token"]),
                last_full_sync_at=r["last_full_at"],
                last_incremental_sync_at=r["last_incremental_at"],
                next_incremental_sync_at=r["next_incremental_at"],
                open_syncs=r["open_syncs"],
                outbound_pending=r["outbound_pending"],
                outbound_dead=r["outbound_dead"],
                outbound_oldest_pending_seconds=float(oldest) if oldest is not None else None,
                last_failure=failures.get(r["connector"]),
            )
            self.metrics.wms_outbound_pending.labels(connector=r["connector"]).set(
                r["outbound_pending"]
            )
        return out

    # -- the sync worker's side ---------------------------------------------------

    async def claim(self, stale_after_s: float) -> SyncJob | None:
        async with transaction(self.pool) as c:
            row = await repo.claim_request(c, list(self.connectors), stale_after_s)
        return SyncJob.of(row) if row else None

    async def batch_identity(self, batch_id: int) -> BatchIdentity:
        async with self.pool.acquire() as c:
            found = await repo.batch_identities(c, [batch_id])
        if batch_id not in found:
            raise NotFound(f"no batch {batch_id}")
        r = found[batch_id]
        return BatchIdentity(batch_id, r["sku"], r["location"], r["lot_number"])

    async def record_calls(self, connector: str, calls: Sequence[repo.CallRow]) -> None:
        """Every try of every call to the WMS, for audit."""
        async with self.pool.acquire() as c:
            await repo.insert_calls(c, connector, calls)

    async def sync_token(self, connector: str) -> str | None:
        async with self.pool.acquire() as c:
            state = await repo.sync_state(c, connector)
        return state["token"] if state else None

    async def set_start_token(self, job: SyncJob, token: str) -> None:
        async with self.pool.acquire() as c:
            await repo.set_start_token(c, job.id, token)

    async def finish(
        self,
        job: SyncJob,
        status: SyncStatus,
        error: str | None = None,
        *,
        token: str | None = None,
    ) -> None:
        """End the request; a finished full read hands its start token to the schedule.

        ``token`` comes only from a read of the whole snapshot (a full sync, or an
        incremental one that had no token or whose token the WMS refused), so it is
        kept as a full sync's: ``last_full_sync_at`` says when the books last matched
        the whole WMS (an incremental sync's pages keep their own tokens as they go)."""
        async with transaction(self.pool) as c:
            await repo.finish_request(c, job.id, status.value, error)
            if status is SyncStatus.FAILED:  # the status page keeps it, and when
                note = f"sync {job.id} ({job.kind.value}) failed: {error}"
                await connector_state.record_failure(c, job.connector, note, self.clock())
            if token is not None and status is SyncStatus.DONE:
                await repo.save_token(c, job.connector, token, SyncKind.FULL.value)
