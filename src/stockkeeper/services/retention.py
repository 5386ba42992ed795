"""Retention: keep the append-heavy tables at a steady size.

SENT outbox rows, consumer idempotency records, consumer positions, HTTP
Idempotency-Keys, the channel push log, the WMS call log, webhook delivery ids, dead
letters an operator resolved, WMS outbound items the WMS accepted and finished WMS syncs
older than their configured retention are deleted in small batches, each its own short
transaction, so no statement holds many locks or runs long and writers never queue
behind the pruning. The inventory ledger is never pruned, nor is what applies a sale, a
receipt or an adjustment once (D-463).
"""

from __future__ import annotations

from dataclasses import dataclass

from stockkeeper.config import Settings
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import retention
from stockkeeper.store.pool import Pool
from stockkeeper.store.retention import Pruned


@dataclass(frozen=True, slots=True)
class Policy:
    """How long each pruned table keeps its rows, and how much one run may delete."""

    keep_s: dict[Pruned, float]
    batch_size: int
    max_batches: int

    @classmethod
    def from_settings(cls, s: Settings) -> Policy:
        r = s.retention
        return cls(
            {
                Pruned.SENT_EVENTS: r.outbox_sent_s,
                Pruned.PROCESSED_MESSAGES: r.processed_message_s,
                Pruned.CONSUMER_POSITIONS: r.consumer_position_s,
                Pruned.IDEMPOTENCY_KEYS: s.api.idempotency_ttl_seconds,
                Pruned.WMS_CALLS: r.wms_call_s,
                Pruned.CHANNEL_PUSHES: s.propagation.push_log_retention_s,
                Pruned.WEBHOOK_DELIVERIES: r.webhook_delivery_s,
                Pruned.RESOLVED_DEAD_LETTERS: r.dead_letter_resolved_s,
                Pruned.SENT_WMS_ITEMS: r.wms_outbound_sent_s,
                Pruned.FINISHED_WMS_SYNCS: r.wms_sync_finished_s,
            },
            r.batch_size,
            r.max_batches,
        )


class Retention:
    """Prunes every table of the policy; safe to run from several replicas at once
    (each batch skips rows another one holds)."""

    def __init__(self, pool: Pool, policy: Policy, metrics: Metrics) -> None:
        self.pool = pool
        self.policy = policy
        self.metrics = metrics

    async def prune(self, table: Pruned) -> int:
        """Delete what is due in ``table``, batch by batch, until a batch comes back
        short or ``max_batches`` ran (the rest waits for the next run)."""
        total = 0
        keep = self.policy.keep_s[table]
        for _ in range(self.policy.max_batches):
            async with self.pool.acquire() as conn:
                n = await retention.prune_batch(conn, table, keep, self.policy.batch_size)
            total += n
            self.metrics.retention_deleted.labels(table=table.value).inc(n)
            if n < self.policy.batch_size:
                break
        return total

    async def run(self) -> dict[Pruned, int]:
        """One pass over every table: rows deleted per table."""
        return {table: await self.prune(table) for table in self.policy.keep_s}
