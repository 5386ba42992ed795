"""WMS use cases: force-sync requests, reconciling snapshot pages, outbound items.

The WMS holds the physical truth of on_hand and unavailable. A sync page becomes, in
one transaction: the batches it names (created if new), ADJUSTMENT ledger entries for
every difference, the snapshot rows, the events, and the request's progress. The
outbound side records what the WMS must be told; the wms-outbound worker sends it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson

from stockkeeper.config import WmsConnectorConfig
from stockkeeper.domain.errors import InvalidRequest, NotFound
from stockkeeper.domain.events import ADJUSTED, Event
from stockkeeper.domain.quantities import oversell
from stockkeeper.domain.reservation import EntryType
from stockkeeper.domain.wms import (
    PRIORITIES,
    Counted,
    OutboundLine,
    SyncKind,
    SyncProgress,
    SyncStatus,
    identity_problem,
    latest_per_batch,
    reconcile,
    sync_kind,
    sync_progress,
)
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.unit import Clock, record_change, transaction, utcnow
from stockkeeper.store import connector_state, dead_letters, outbox, stock
from stockkeeper.store import wms as repo
from stockkeeper.store.connector_state import Failure
from stockkeeper.store.pool import Conn, Pool, Row
from stockkeeper.store.stock import Movement

FORCE_COMMAND = "wms.sync.force"
SCHEDULED_COMMAND = "wms.sync.scheduled"
# A replayed dead letter of the outbound sender: its items go back to the queue.
OUTBOUND_REARM = "wms.outbound_rearm"
SYNC_DEAD_LETTER_QUEUE = "wms.sync"
OUTBOUND_QUEUE = "wms.outbound"


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
class Rejected:
    """A WMS row we refused, with the reason; it becomes a dead letter."""

    raw: Any
    error: str


@dataclass(slots=True)
class PageResult:
    rows: int = 0
    rejected: int = 0
    adjustments: int = 0
    shortfall_skus: int = 0
    # Units by which the counts left us short of our promises (stockkeeper_oversell_total).
    oversell: int = 0
    moved: dict[str, int] = field(default_factory=dict)


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


class WmsService:
    """Everything the WMS workers and the admin API do to our books."""

    def __init__(
        self,
        pool: Pool,
        metrics: Metrics,
        connectors: Sequence[WmsConnectorConfig],
        clock: Clock = utcnow,
        *,
        levels_per_message: int = 0,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.connectors = {c.id: c for c in connectors}
        self.clock = clock
        # A snapshot page's new levels as inventory.levels_changed messages (D-220).
        self.levels_per_message = levels_per_message

    # -- force sync (admin) --------------------------------------------------------

    def _connector(self, name: str | None) -> str:
        if name is not None:
            if name not in self.connectors:
                raise InvalidRequest(f"no WMS connector {name!r} is configured")
            return name
        if len(self.connectors) != 1:
            if not self.connectors:
                raise InvalidRequest("no WMS connector is configured")
            raise InvalidRequest(
                f"several WMS connectors are configured; say which: {', '.join(self.connectors)}"
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
                    raise InvalidRequest(f"batch {sku_batch_id} is not a batch of sku {sku}")
                sku = found[sku_batch_id]["sku"]
            row = await repo.insert_request(
                c, name, kind.value, sku, sku_batch_id, reason, requested_by, PRIORITIES[priority]
            )
            await outbox.add(c, [self._command(FORCE_COMMAND, row)])
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
            await outbox.add(c, [self._command(SCHEDULED_COMMAND, row)])
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
        """End the request; a finished full sync hands its start token to the schedule."""
        async with transaction(self.pool) as c:
            await repo.finish_request(c, job.id, status.value, error)
            if status is SyncStatus.FAILED:  # the status page keeps it, and when
                note = f"sync {job.id} ({job.kind.value}) failed: {error}"
                await connector_state.record_failure(c, job.connector, note, self.clock())
            if token is not None and status is SyncStatus.DONE:
                await repo.save_token(c, job.connector, token, job.kind.value)

    async def apply_page(
        self,
        job: SyncJob,
        counted: Sequence[Counted],
        rejected: Sequence[Rejected] = (),
        *,
        cursor: str | None,
        token: str | None = None,
        total: int | None = None,
    ) -> PageResult:
        """Reconcile one page of WMS counts into our books, in one transaction.

        ``cursor`` is where a resumed sync would go on after this page; ``token``, for
        an incremental page, is the change token to save with it; ``total``, the rows of
        the whole snapshot when the WMS says (the request's progress).
        """
        refused = list(rejected)
        good: list[Counted] = []
        for row in counted:
            problem = identity_problem(row)
            if problem:
                refused.append(Rejected(_row_doc(row), problem))
            else:
                good.append(row)
        good = latest_per_batch(good)
        source = f"wms:{job.connector}"
        result = PageResult(rows=len(counted) + len(rejected), rejected=len(refused))
        async with transaction(self.pool) as c:
            batches = await repo.lock_counted_batches(c, good) if good else []
            by_key = {(b.sku, b.location, b.lot_number or ""): b for b in batches}
            pairs = [(by_key[r.key], r) for r in good]
            moves: list[Movement] = []
            events: list[Event] = []
            for batch, row in pairs:
                delta = reconcile(batch.figures, row)
                if delta.is_zero:
                    continue
                result.oversell += oversell(batch.figures, batch.figures.apply(delta))
                moves.append(Movement(batch.id, batch.sku, delta))
                for name in ("on_hand", "unavailable"):
                    if getattr(delta, name):
                        result.moved[name] = result.moved.get(name, 0) + 1
                events.append(
                    Event(
                        ADJUSTED,
                        {
                            "sku": batch.sku,
                            "batch_id": batch.id,
                            "location": batch.location,
                            "lot_number": batch.lot_number,
                            "on_hand": delta.on_hand,
                            "unavailable": delta.unavailable,
                            "reason": "WMS count",
                            "sync_request_id": job.id,
                        },
                        sku=batch.sku,
                        source=source,
                    )
                )
            if self.levels_per_message and len({m.sku for m in moves}) > 1:
                # A bulk page (D-224): no inventory.adjusted per batch, which no queue is
                # bound to; the ledger holds each batch's move (reference
                # wms-sync:<id>) and levels_changed each SKU's new figures.
                events = []
            if moves:
                await stock.apply_movements(c, moves, already_locked=True)
                levels = await record_change(
                    c,
                    moves,
                    entry_type=EntryType.ADJUSTMENT,
                    source=source,
                    reference_id=f"wms-sync:{job.id}",
                    now=self.clock(),
                    reason="WMS count",
                    events=events,
                    levels_per_message=self.levels_per_message,
                )
                result.shortfall_skus = sum(1 for lv in levels.values() if lv.level.shortfall)
            result.adjustments = len(moves)
            await repo.upsert_snapshots(c, job.connector, job.id, pairs)
            # Each refused row its own dead letter, all in one statement.
            await dead_letters.record_many(
                c,
                [
                    dead_letters.Letter(
                        queue=SYNC_DEAD_LETTER_QUEUE,
                        message_id=None,
                        routing_key=f"wms.snapshot.{job.connector}",
                        body=orjson.dumps(bad.raw, default=str),
                        headers={"sync_request_id": job.id},
                        error=f"WMS row refused: {bad.error}",
                        attempts=1,
                    )
                    for bad in refused
                ],
            )
            await repo.record_progress(
                c,
                job.id,
                cursor=cursor,
                rows=result.rows,
                rejected=result.rejected,
                adjustments=result.adjustments,
                shortfalls=result.shortfall_skus,
                total=total,
            )
            if token is not None:
                await repo.save_token(c, job.connector, token, job.kind.value)
        self._count(job.connector, result)
        return result

    def _count(self, connector: str, r: PageResult) -> None:
        m = self.metrics
        m.wms_rows_synced.labels(connector=connector).inc(r.rows - r.rejected)
        if r.rejected:
            m.wms_rows_rejected.labels(connector=connector).inc(r.rejected)
            m.dead_letters.labels(queue=SYNC_DEAD_LETTER_QUEUE).inc(r.rejected)
        for quantity, n in r.moved.items():
            m.wms_adjustments.labels(connector=connector, quantity=quantity).inc(n)
        if r.shortfall_skus:
            m.wms_shortfalls.labels(connector=connector).inc(r.shortfall_skus)
        if r.oversell:
            m.oversell.labels(source=f"wms:{connector}").inc(r.oversell)

    # -- outbound ------------------------------------------------------------------

    async def record_outbound(
        self, conn: Conn, message_id: uuid.UUID, lines: Sequence[OutboundLine]
    ) -> int:
        """In the consumer's transaction: one outbound item per line and WMS connector."""
        if not lines or not self.connectors:
            return 0
        where = await repo.batch_identities(conn, sorted({li.batch_id for li in lines}))
        items = []
        for li in lines:
            batch = where.get(li.batch_id)
            if batch is None:
                raise NotFound(f"batch {li.batch_id} of event {li.event_id} does not exist")
            items.append(
                (
                    li.event_id,
                    li.action.value,
                    li.order_id,
                    li.sku,
                    batch["location"],
                    batch["lot_number"],
                    li.quantity,
                )
            )
        for name in self.connectors:
            await repo.insert_outbound(conn, name, message_id, items)
        return len(items)

    async def rearm_outbound(self, conn: Conn, connector: str, event_ids: Sequence[str]) -> int:
        """A replayed dead letter: its items are sent again, with a fresh count."""
        return await repo.outbound_rearm(conn, connector, event_ids)

    @staticmethod
    def rearm_envelope(connector: str, items: Sequence[repo.OutboundRow], now: datetime) -> bytes:
        """The dead letter of items the WMS never took: replaying it re-arms them."""
        payload = {
            "connector": connector,
            "event_ids": [i.event_id for i in items],
            "items": [
                {
                    "event_id": i.event_id,
                    "action": i.action,
                    "order_id": i.order_id,
                    "sku": i.sku,
                    "location": i.location,
                    "lot_number": i.lot_number,
                    "quantity": i.quantity,
                }
                for i in items
            ],
        }
        return Envelope.new(OUTBOUND_REARM, payload, occurred_at=now).to_bytes()


def _row_doc(row: Counted) -> dict[str, Any]:
    return {
        "sku": row.sku,
        "location": row.location,
        "lot_number": row.lot_number,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "on_hand": row.on_hand,
        "unavailable": row.unavailable,
    }
