"""How much a channel's sender claims at a time: small batches under a trickle of
changes, the channel's largest batch under a backlog (D-350).

``batch_size`` (the channel's config) is what one call carries while changes trickle
in: the lowest latency for the few-SKUs case, and a small blast radius for a channel
whose call is all or nothing. Under a backlog (the last claim came back as full as it
was asked), a call carries the adapter's ``max_batch_size`` instead, when it advertises
one: Shopify's ``inventorySetQuantities`` takes 250 quantities for the same 10 points
as 1, so its cost bucket passes five times the SKUs of 50-item calls. An adapter
without one (the outbound webhook: its receiver's limit is the configured
``batch_size``) keeps ``batch_size``. Read with ``getattr``, as the feed attributes
are (D-254), so the ``ChannelAdapter`` protocol is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockkeeper.config import ChannelConfig
from stockkeeper.connectors.channels import ChannelAdapter


def largest_batch(adapter: ChannelAdapter, cfg: ChannelConfig) -> int:
    """The most SKUs one call of ``adapter`` may carry: its ``max_batch_size`` if it
    advertises one, never less than the configured ``batch_size``."""
    most: int = getattr(adapter, "max_batch_size", cfg.batch_size)
    return max(cfg.batch_size, most)


@dataclass(slots=True)
class ClaimSizer:
    """The batch size of a channel's next claim, from whether the last one was full."""

    trickle: int
    backlog: int
    busy: bool = False

    @classmethod
    def of(cls, adapter: ChannelAdapter, cfg: ChannelConfig) -> ClaimSizer:
        return cls(cfg.batch_size, largest_batch(adapter, cfg))

    @property
    def size(self) -> int:
        """SKUs per call of the next claim."""
        return self.backlog if self.busy else self.trickle

    def claimed(self, asked: int, got: int) -> None:
        """A claim of ``asked`` SKUs returned ``got``: a full one means more are due."""
        self.busy = asked > 0 and got >= asked
