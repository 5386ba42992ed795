"""Reconciling WMS snapshot pages into our books.

The WMS holds the physical truth of on_hand and unavailable. A sync page becomes, in
one transaction: the batches it names (created if new), ADJUSTMENT ledger entries for
every difference, the snapshot rows, the events, and the request's progress.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from stockkeeper.domain.events import ADJUSTED, Event
from stockkeeper.domain.quantities import Delta
from stockkeeper.domain.reservation import EntryType
from stockkeeper.domain.wms import Counted, identity_problem, latest_per_batch
from stockkeeper.services.unit import record_change, transaction
from stockkeeper.services.wms.base import WmsBase
from stockkeeper.services.wms.requests import SyncJob
from stockkeeper.store import dead_letters
from stockkeeper.store import wms as repo
from stockkeeper.store.stock import Movement

SYNC_DEAD_LETTER_QUEUE = "wms.sync"
# The routing key of a WMS row a sync refused (its dead letter is the row, not a
# message: a replay cannot apply it, D-454).
REFUSED_ROW_PREFIX = "wms.snapshot."


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


class SnapshotSync(WmsBase):
    """A page of WMS counts reconciled into batches, ledger, snapshots and events."""

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
            # Set-based (D-340): the differences are worked out, and the batches and
            # snapshots written, in SQL over the page; here only the ledger and events.
            moved = await repo.reconcile_page(c, job.connector, job.id, good)
            moves = [
                Movement(m.id, m.sku, Delta(m.d_on_hand, m.d_unavailable, oversold=m.d_oversold))
                for m in moved
            ]
            result.adjustments = len(moves)
            for m in moved:
                result.oversell += m.oversell
                if m.d_on_hand:
                    result.moved["on_hand"] = result.moved.get("on_hand", 0) + 1
                if m.d_unavailable:
                    result.moved["unavailable"] = result.moved.get("unavailable", 0) + 1
            events: list[Event] = []
            if not self.levels_per_message or len({m.sku for m in moved}) <= 1:
                # A bulk page (D-224) writes no inventory.adjusted per batch, which no
                # queue is bound to; the ledger holds each batch's move (reference
                # wms-sync:<id>) and levels_changed each SKU's new figures.
                events = [self._adjusted(job, m, source) for m in moved]
            if moves:
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
            # Each refused row its own dead letter, all in one statement.
            await dead_letters.record_many(
                c,
                [
                    dead_letters.Letter(
                        queue=SYNC_DEAD_LETTER_QUEUE,
                        message_id=None,
                        routing_key=f"{REFUSED_ROW_PREFIX}{job.connector}",
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

    @staticmethod
    def _adjusted(job: SyncJob, m: repo.MovedBatch, source: str) -> Event:
        return Event(
            ADJUSTED,
            {
                "sku": m.sku,
                "batch_id": m.id,
                "location": m.location,
                "lot_number": m.lot_number,
                "on_hand": m.d_on_hand,
                "unavailable": m.d_unavailable,
                "reason": "WMS count",
                "sync_request_id": job.id,
            },
            sku=m.sku,
            source=source,
        )

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


def _row_doc(row: Counted) -> dict[str, Any]:
    return {
        "sku": row.sku,
        "location": row.location,
        "lot_number": row.lot_number,
        "expires_at": row.expires_at.isoformat() if row.expires_at else None,
        "on_hand": row.on_hand,
        "unavailable": row.unavailable,
    }
