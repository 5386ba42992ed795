"""Watching the channels: the sync lag and its alert, the status page, the SKUs a
channel does not list, and pruning the push log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from stockkeeper.domain.errors import NotFound
from stockkeeper.domain.events import Event
from stockkeeper.domain.propagation import AlertChange, lag_alert
from stockkeeper.services.propagation.base import PropagationBase, log
from stockkeeper.services.unit import transaction
from stockkeeper.store import channel_drift as drift
from stockkeeper.store import channel_sync as repo
from stockkeeper.store import connector_state, outbox
from stockkeeper.store.connector_state import Failure

LAG_ALERT = "sync.lag_alert"
LAG_RECOVERED = "sync.lag_recovered"


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One sales channel on the status page: sync lag over the window, backlog, pushes
    and coalescing, the alert, drift repair and the divergence sample."""

    type: str
    lag_p50_ms: float | None
    lag_p99_ms: float | None
    lag_samples: int
    window_s: float
    alerting: bool
    alert_threshold_ms: float
    pending: int
    synced: int
    unlisted: int
    unlisted_recheck_s: float
    dead: int
    oldest_pending_s: float | None
    pushes_in_window: int
    changes_in_window: int
    last_reconciled_at: datetime | None
    drift_repaired: int
    divergence_found: int
    last_sampled_at: datetime | None
    last_failure: Failure | None  # the last failed or refused push, kept on success
    # The channel's own locations (Shopify location gids), each with a figure per SKU;
    # None: one figure per SKU.
    locations: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class UnlistedPage:
    """A page of a channel's UNLISTED SKUs; ``next`` is the cursor of the next page."""

    channel: str
    items: list[drift.Unlisted]
    next: str | None


class StatusMonitor(PropagationBase):
    """Lag percentiles, the alert, and what the status page and the admin lists show."""

    async def check_lag(self) -> dict[str, AlertChange | None]:
        """p50/p99 per channel over the window into the gauges and ``channel_state``; an
        alert (log, metric, ``sync.lag_alert`` event) when p99 passes the threshold.
        One replica decides per channel (row lock), so an episode alerts once."""
        mon = self.monitoring
        changes: dict[str, AlertChange | None] = {}
        if not self.ids:
            return changes
        async with self.pool.acquire() as conn:
            await repo.ensure_channel_states(conn, self.ids)
            lags = await repo.lag(conn, self.ids, mon.lag_window_s)
        for ch in self.ids:
            lag = lags[ch]
            async with transaction(self.pool) as conn:
                was = await repo.lock_alerting(conn, ch)
                change = lag_alert(lag.p99_ms, mon.p99_lag_alert_ms, was)
                alerting = was if change is None else change is AlertChange.FIRE
                await repo.set_lag(conn, ch, alerting, lag.p50_ms, lag.p99_ms)
                if change is not None:
                    await outbox.add(conn, [self._alert_event(ch, change, lag)])
            changes[ch] = change
            self._lag_metrics(ch, lag, alerting, change)
        return changes

    def _alert_event(self, channel: str, change: AlertChange, lag: repo.Lag) -> Event:
        kind = LAG_ALERT if change is AlertChange.FIRE else LAG_RECOVERED
        payload: dict[str, Any] = {
            "channel": channel,
            "p50_ms": lag.p50_ms,
            "p99_ms": lag.p99_ms,
            "threshold_ms": self.monitoring.p99_lag_alert_ms,
            "window_s": self.monitoring.lag_window_s,
            "samples": lag.samples,
            "at": self.clock().isoformat(),
        }
        return Event(kind, payload, source="propagator")

    def _lag_metrics(
        self, channel: str, lag: repo.Lag, alerting: bool, change: AlertChange | None
    ) -> None:
        m = self.metrics
        m.sync_lag_p99.labels(channel=channel).set((lag.p99_ms or 0.0) / 1000)
        m.sync_lag_alerting.labels(channel=channel).set(1 if alerting else 0)
        if change is AlertChange.FIRE:
            m.sync_lag_alerts.labels(channel=channel).inc()
            log.error(
                LAG_ALERT,
                channel=channel,
                p99_ms=lag.p99_ms,
                threshold_ms=self.monitoring.p99_lag_alert_ms,
                window_s=self.monitoring.lag_window_s,
            )
        elif change is AlertChange.RECOVER:
            log.warning(LAG_RECOVERED, channel=channel, p99_ms=lag.p99_ms)

    async def status(self) -> dict[str, ChannelStatus]:
        """Per channel: p50/p99 lag over the window, backlog, pushes and coalescing."""
        if not self.ids:
            return {}
        window = self.monitoring.lag_window_s
        async with self.pool.acquire() as conn:
            lags = await repo.lag(conn, self.ids, window)
            counts = await repo.counts(conn, self.ids)
            totals = await repo.push_totals(conn, self.ids, window)
            states = await repo.channel_states(conn, self.ids)
            failures = await connector_state.last_failures(conn, self.ids)
        out: dict[str, ChannelStatus] = {}
        for ch in self.ids:
            c, t, s, lag = counts[ch], totals[ch], states.get(ch), lags[ch]
            self.metrics.channel_pending.labels(channel=ch).set(c.pending)
            self.metrics.channel_unlisted.labels(channel=ch).set(c.unlisted)
            out[ch] = ChannelStatus(
                type=self.configs[ch].type,
                lag_p50_ms=lag.p50_ms,
                lag_p99_ms=lag.p99_ms,
                lag_samples=lag.samples,
                window_s=window,
                alerting=bool(s and s.alerting),
                alert_threshold_ms=self.monitoring.p99_lag_alert_ms,
                pending=c.pending,
                synced=c.synced,
                unlisted=c.unlisted,
                unlisted_recheck_s=self.configs[ch].unlisted_recheck_s,
                dead=c.dead,
                oldest_pending_s=c.oldest_pending_s,
                pushes_in_window=t.pushes,
                changes_in_window=t.changes,
                last_reconciled_at=s.last_reconciled_at if s else None,
                drift_repaired=s.drift_repaired if s else 0,
                divergence_found=s.divergence_found if s else 0,
                last_sampled_at=s.last_sampled_at if s else None,
                last_failure=failures.get(ch),
                locations=self._locations_of(ch),
            )
        return out

    def _locations_of(self, channel: str) -> tuple[str, ...] | None:
        mapping = self.configs[channel].location_map()
        return None if mapping is None else tuple(gid for gid, _ in mapping)

    async def unlisted(self, channel: str, after: str = "", limit: int = 100) -> UnlistedPage:
        """The channel's SKUs it does not list, by name after ``after``."""
        if channel not in self.configs:
            raise NotFound(f"no channel {channel!r} is configured")
        async with self.pool.acquire() as conn:
            rows = await drift.unlisted_page(conn, channel, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return UnlistedPage(channel, rows, rows[-1].sku if more else None)
