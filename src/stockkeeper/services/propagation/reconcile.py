"""Finding and repairing drift: the divergence sample, and the full read-back of every
SKU from a channel (``stockkeeper reconcile-channels``, and on a schedule)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from stockkeeper.connectors.channels import ChannelAdapter
from stockkeeper.domain.propagation import SyncStatus
from stockkeeper.services.located import LocatedReader
from stockkeeper.services.propagation.base import NOTIFY_CHANNEL, PropagationBase, log
from stockkeeper.services.unit import transaction
from stockkeeper.store import channel_drift as drift
from stockkeeper.store import channel_sync as repo
from stockkeeper.store import stock

# SKUs per reconcile page: Shopify's largest nodes() read; each adapter splits a
# page into its own batch shape.
RECONCILE_PAGE = 250


@dataclass(frozen=True, slots=True)
class Sampled:
    """What one divergence sample of a channel found."""

    channel: str
    checked: int
    diverged: int


@dataclass(frozen=True, slots=True)
class Drift:
    """What a drift repair of one channel found."""

    channel: str
    checked: int
    drifted: int
    unlisted: int


class Reconciler(PropagationBase):
    """Read a channel's levels back and make a push due where they differ from ours."""

    # -- the divergence sample -------------------------------------------------------

    async def sample(self, adapter: ChannelAdapter) -> Sampled | None:
        """If the channel's sample is due (one replica runs it): read back the next
        ``divergence_sample_size`` SKUs we believe in sync and, where the channel shows
        something else, make our level due from what it shows (pushed by the senders),
        counted in ``stockkeeper_channel_divergence_total``; None when not due."""
        channel, cfg = adapter.id, self.configs[adapter.id]
        if not adapter.can_read or cfg.divergence_sample_s <= 0:
            return None
        async with self.pool.acquire() as conn:
            await repo.ensure_channel_states(conn, [channel])
            after = await drift.claim_sample(conn, channel, cfg.divergence_sample_s)
            if after is None:
                return None
            size = cfg.divergence_sample_size
            rows = await drift.sample_page(conn, channel, after, size)
            if not rows and after:  # the walk reached the end: from the start again
                rows = await drift.sample_page(conn, channel, "", size)
            if not rows:
                return Sampled(channel, 0, 0)
        shown = await adapter.read(
            [r.sku for r in rows], {r.sku: r.channel_ref for r in rows if r.channel_ref}
        )
        found: list[str] = []
        async with transaction(self.pool) as conn:
            for r in rows:
                there = shown.get(r.sku)
                if there == r.quantity:
                    continue
                if await drift.diverged(conn, channel, r.sku, there, r.claim_seq) is not None:
                    found.append(r.sku)
            nxt = rows[-1].sku if len(rows) == size else ""
            await drift.sampled(conn, channel, nxt, len(found))
            if found:
                await repo.notify_senders(conn, NOTIFY_CHANNEL)
        if found:
            self.metrics.channel_divergence.labels(channel=channel).inc(len(found))
            log.warning("propagation.divergence", channel=channel, skus=found[:20])
        return Sampled(channel, len(rows), len(found))

    # -- drift repair ----------------------------------------------------------------

    async def due_for_reconcile(self, channel: str) -> bool:
        """Whether this replica should run the channel's scheduled drift repair now."""
        interval = self.configs[channel].reconcile_interval_s
        if interval <= 0:
            return False
        async with self.pool.acquire() as conn:
            await repo.ensure_channel_states(conn, [channel])
            return await drift.claim_reconcile(conn, channel, interval)

    async def sku_count(self) -> int:
        """How many SKUs a drift repair walks (every SKU we know)."""
        async with self.pool.acquire() as conn:
            return await drift.sku_count(conn)

    async def reconcile(
        self,
        adapter: ChannelAdapter,
        page: int = RECONCILE_PAGE,
        on_page: Callable[[int], None] | None = None,
    ) -> Drift:
        """Read every SKU's level back from the channel and, where it differs from ours,
        make a push due (with what the channel really shows as its starting point).

        Per page of ``page`` SKUs: one read-back through the adapter (in the channel's
        own batch shape), one statement for our levels and one to compare and mark
        them all; ``on_page(n)`` after each page of ``n`` SKUs (a progress bar's tick;
        the total is :meth:`sku_count`).
        """
        channel = adapter.id
        if not adapter.can_read:
            return Drift(channel, 0, 0, 0)
        if channel in self.located and isinstance(adapter, LocatedReader):
            found = await self.locations.reconcile(adapter, page, on_page)
            return await self._reconciled(channel, found.checked, found.drifted, found.unlisted)
        after, checked, drifted, unlisted = "", 0, 0, 0
        while True:
            async with self.pool.acquire() as conn:
                rows = await drift.reconcile_page(conn, channel, after, page)
            if not rows:
                break
            after = rows[-1].sku
            todo = [r for r in rows if not r.in_flight]
            refs = {r.sku: r.channel_ref for r in todo if r.channel_ref}
            shown = await adapter.read([r.sku for r in todo], refs)
            async with transaction(self.pool) as conn:
                # Compared and marked set-based: one statement for the page (D-222).
                levels = await stock.sku_levels(conn, [r.sku for r in todo], self.clock())
                # The channel is compared with what its rule shows it (buffer, cap,
                # share, locations), not with our raw stock: a buffer is no drift.
                figures = await self.rules.figures_many(
                    conn, [channel], {sku: lv.level.available for sku, lv in levels.items()}
                )
                reads = [
                    drift.ReadBack(
                        r.sku,
                        shown.get(r.sku),
                        levels[r.sku].version,
                        figures[r.sku][channel][0],
                        r.claim_seq,
                    )
                    for r in todo
                    if r.sku in levels
                ]
                after_repair = await drift.repair_drift_many(conn, channel, reads)
                checked += len(reads)
                page_drifted = 0
                for rb in reads:
                    status = after_repair.get(rb.sku)
                    if status is SyncStatus.PENDING and rb.shown != rb.available:
                        page_drifted += 1
                    elif status is SyncStatus.UNLISTED:
                        unlisted += 1
                drifted += page_drifted
                if page_drifted:
                    await repo.notify_senders(conn, NOTIFY_CHANNEL)
            if on_page is not None:
                on_page(len(rows))
        return await self._reconciled(channel, checked, drifted, unlisted)

    async def _reconciled(self, channel: str, checked: int, drifted: int, unlisted: int) -> Drift:
        async with self.pool.acquire() as conn:
            await repo.ensure_channel_states(conn, [channel])
            await drift.count_drift(conn, channel, drifted)
        self.metrics.channel_drift.labels(channel=channel).inc(drifted)
        log.info(
            "propagation.reconciled",
            channel=channel,
            checked=checked,
            drifted=drifted,
            unlisted=unlisted,
        )
        return Drift(channel, checked, drifted, unlisted)
