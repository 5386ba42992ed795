"""What every part of the propagation service shares: the channels' settings, their
availability rules and locations, the retry policy, and where the senders LISTEN."""

from __future__ import annotations

from collections.abc import Sequence

from stockkeeper.config import ChannelConfig, MonitoringConfig, PropagationConfig
from stockkeeper.domain.backoff import Backoff
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.channel_rules import RulesService
from stockkeeper.services.located import Located
from stockkeeper.services.unit import Clock
from stockkeeper.store.pool import Pool

log = get_logger("stockkeeper.propagation")

# Senders LISTEN here; a consumer transaction that makes a push due wakes them at commit.
NOTIFY_CHANNEL = "stockkeeper_channels"


class PropagationBase:
    """The state that recording, pushing, the status and drift repair all read."""

    def __init__(
        self,
        pool: Pool,
        metrics: Metrics,
        channels: Sequence[ChannelConfig],
        cfg: PropagationConfig,
        monitoring: MonitoringConfig,
        clock: Clock,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.configs = {c.id: c for c in channels}
        self.ids = sorted(self.configs)
        self.cfg = cfg
        # A failed push waits backoff_base_ms, doubling up to backoff_max_ms, and never
        # less than the channel's Retry-After.
        self.backoff = Backoff(cfg.backoff_base_ms / 1000, cfg.backoff_max_ms / 1000)
        self.monitoring = monitoring
        self.clock = clock
        # Changes from these sources came from the channel: not sent back to it.
        self.echo = {c.id: {c.id, *c.echo_sources} for c in channels}
        # Per-channel availability rules: the figure each channel is shown.
        self.rules = RulesService(pool, channels, clock)
        # Channels with several locations (Shopify locations): figures per location.
        self.located = {c.id for c in channels if c.location_map() is not None}
        self.locations = Located(pool, self.rules, clock, NOTIFY_CHANNEL)
