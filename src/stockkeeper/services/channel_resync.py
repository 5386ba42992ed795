"""Resync a channel: make every SKU (or some) due with its current figure, then push
them through the normal claim path (the senders' claim, coalescing, the channel's rate
limit), reporting progress every so many SKUs. Used by ``stockkeeper channels resync``;
a propagator running meanwhile claims from the same rows, which is harmless."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from stockkeeper.connectors.channels import ChannelAdapter
from stockkeeper.services.propagation import Propagation, Settled


@dataclass(frozen=True, slots=True)
class ResyncProgress:
    """Where a resync stands: ``done`` of ``total`` SKUs no longer due."""

    channel: str
    total: int
    done: int
    pushed: int
    noop: int
    unlisted: int
    dead: int
    retried: int
    elapsed_s: float

    @property
    def by_others(self) -> int:
        """SKUs no longer due that this resync did not push: a running propagator
        claimed them from the same rows (D-482)."""
        return max(0, self.done - (self.pushed + self.noop + self.unlisted + self.dead))

    def text(self) -> str:
        """The command's progress line; its counts add up to ``done``."""
        share = 100.0 * self.done / self.total if self.total else 100.0
        others = f", {self.by_others} by a running propagator" if self.by_others else ""
        return (
            f"{self.channel}: {self.done}/{self.total} SKUs ({share:.1f}%) in "
            f"{self.elapsed_s:.1f}s: {self.pushed} pushed, {self.noop} already shown, "
            f"{self.unlisted} not listed, {self.dead} dead-lettered{others}, "
            f"{self.retried} to retry"
        )


async def resync(
    propagation: Propagation,
    adapter: ChannelAdapter,
    skus: Sequence[str] | None,
    *,
    every: int,
    report: Callable[[ResyncProgress], None],
) -> ResyncProgress:
    """Resync ``adapter``'s channel; ``report`` hears every ``every`` SKUs settled and
    once at the end (the summary). Stops when no due row can be claimed: what is left is
    waiting out a backoff, and the propagator finishes it."""
    channel = adapter.id
    started = time.monotonic()
    total = await propagation.rules.resync(channel, skus)
    tally = Settled()
    reported = 0

    def progress(left: int) -> ResyncProgress:
        return ResyncProgress(
            channel,
            total,
            max(0, total - left),
            tally.pushed,
            tally.noop,
            tally.unlisted,
            tally.dead,
            tally.retried,
            time.monotonic() - started,
        )

    batch = propagation.configs[channel].batch_size
    while claimed := await propagation.claim(channel, batch):
        tally.add(await propagation.push_claimed(adapter, claimed))
        settled = tally.pushed + tally.noop + tally.unlisted + tally.dead
        if settled - reported >= every:
            reported = settled
            report(progress(await propagation.rules.due(channel, skus)))
    final = progress(await propagation.rules.due(channel, skus))
    report(final)
    return final
