"""Propagation use cases: record news of a level per channel, push it, watch the lag.

The ``channel.propagation`` consumer records each ``inventory.level_changed`` per channel
(:meth:`Propagation.record`; an ``inventory.levels_changed`` of many SKUs set-based by
:meth:`Propagation.record_many`) in the transaction that marks the message processed: the
newest version wins, a change from the channel itself is not sent back to it, and
changes that arrive before the push is sent ride along with it (coalescing). Senders
claim due rows per channel (:meth:`Propagation.claim`) and hand them to
:meth:`Propagation.push_claimed`, the one place a push happens: it calls the channel's
adapter, reads its answer or its failure, and settles each push (acknowledged, unlisted,
retried after the backoff, or dead-lettered). Every push the channel acknowledges is
logged with its lag, from which :meth:`Propagation.check_lag` computes the percentiles
and the alert.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stockkeeper.config import ChannelConfig, MonitoringConfig, PropagationConfig
from stockkeeper.connectors.channels import AtLocation, ChannelAdapter, Push, PushOutcome
from stockkeeper.connectors.http import ConnectorRejected, ConnectorUnavailable
from stockkeeper.connectors.shopify import MAX_PACE_WAIT_S
from stockkeeper.domain.availability import AvailabilityRule
from stockkeeper.domain.backoff import Backoff
from stockkeeper.domain.errors import NotFound
from stockkeeper.domain.events import Event
from stockkeeper.domain.propagation import (
    AlertChange,
    SyncState,
    SyncStatus,
    Verdict,
    judge,
    lag_alert,
)
from stockkeeper.messaging.consumer import dead_letter
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.channel_rules import RulesService, passes_sales_through
from stockkeeper.services.located import Located, LocatedReader
from stockkeeper.services.unit import Clock, transaction
from stockkeeper.store import channel_sync as repo
from stockkeeper.store import connector_state, outbox, stock
from stockkeeper.store.connector_state import Failure
from stockkeeper.store.pool import Conn, Pool

log = get_logger("stockkeeper.propagation")

PROPAGATION_QUEUE = "channel.propagation"
# A dead-lettered push, replayed through the admin API, comes back as this message.
REARM = "channel.push.rearm"
LAG_ALERT = "sync.lag_alert"
LAG_RECOVERED = "sync.lag_recovered"
# Senders LISTEN here; a consumer transaction that makes a push due wakes them at commit.
NOTIFY_CHANNEL = "stockkeeper_channels"
# SKUs per reconcile page: Shopify's largest nodes() read; each adapter splits a
# page into its own batch shape.
RECONCILE_PAGE = 250


@dataclass(frozen=True, slots=True)
class LevelChange:
    """News of one SKU's level for the channels, as a message brought it."""

    sku: str
    version: int
    available: int
    committed_at: datetime
    source: str | None
    # The consumer span's traceparent, stored with the push it makes due (D-241).
    traceparent: str | None = None


@dataclass(slots=True)
class Settled:
    """What one sender round did, for the caller's logs and the metrics."""

    pushed: int = 0
    noop: int = 0
    unlisted: int = 0
    dead: int = 0
    retried: int = 0
    lags_ms: list[float] = field(default_factory=list)

    def add(self, other: Settled) -> Settled:
        """This round and ``other`` together (a batch settled in parts)."""
        self.pushed += other.pushed
        self.noop += other.noop
        self.unlisted += other.unlisted
        self.dead += other.dead
        self.retried += other.retried
        self.lags_ms += other.lags_ms
        return self


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
    items: list[repo.Unlisted]
    next: str | None


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


class Propagation:
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

    def _judge(
        self,
        ch: str,
        state: SyncState,
        version: int,
        figure: int,
        rule: AvailabilityRule,
        source: str | None,
    ) -> Verdict:
        """:func:`judge` for one channel. On a channel with several locations the total
        says nothing of its split (a transfer between our locations keeps it) and a
        sale there is not known to come out of the location that sold it: such a
        channel's change is pushed, and the push decides per location (D-282)."""
        located = ch in self.located
        verdict = judge(
            state,
            version,
            figure,
            # A sale moves a capped, shared or location-fed figure by something else
            # than the units sold: the channel's own change is pushed like any other.
            from_this_channel=not located
            and source in self.echo[ch]
            and passes_sales_through(rule),
            recheck_s=self.configs[ch].unlisted_recheck_s,
        )
        return Verdict.PUSH if located and verdict is Verdict.NOOP else verdict

    # -- the consumer's effect -----------------------------------------------------

    async def record(
        self,
        conn: Conn,
        sku: str,
        version: int,
        available: int,
        committed_at: datetime,
        source: str | None,
    ) -> dict[str, Verdict]:
        """Level ``version`` of ``sku`` for every channel, in the caller's transaction."""
        if not self.ids:
            return {}
        states = await repo.lock_states(conn, sku, self.ids)
        # After the lock: a rule change committed meanwhile is seen (see RulesService).
        figures = await self.rules.figures(conn, self.ids, sku, available)
        verdicts = {
            ch: self._judge(ch, states[ch], version, figures[ch][0], figures[ch][1], source)
            for ch in self.ids
        }
        live = {ch: v for ch, v in verdicts.items() if v is not Verdict.STALE}
        shown = {ch: (q, rule.describe()) for ch, (q, rule) in figures.items()}
        await repo.apply_level(conn, sku, version, shown, committed_at, live, NOTIFY_CHANNEL)
        for ch, v in verdicts.items():
            self.metrics.channel_changes.labels(channel=ch, verdict=v.value).inc()
        return verdicts

    async def record_many(
        self,
        conn: Conn,
        levels: Sequence[tuple[str, int, int]],
        committed_at: datetime,
        source: str | None,
    ) -> dict[str, dict[str, Verdict]]:
        """:meth:`record` for a bulk message, (sku, version, available) each, set-based:
        the states of every SKU and channel locked in one statement, judged here, and
        recorded in one more, whatever the number of SKUs (D-220)."""
        if not self.ids or not levels:
            return {}
        newest: dict[str, tuple[str, int, int]] = {}
        for lv in levels:
            seen = newest.get(lv[0])
            if seen is None or lv[1] > seen[1]:
                newest[lv[0]] = lv
        news = [
            LevelChange(sku, version, available, committed_at, source)
            for sku, version, available in newest.values()
        ]
        return await self._record_round(conn, news)

    async def record_batch(
        self, conn: Conn, changes: Sequence[LevelChange]
    ) -> list[dict[str, dict[str, Verdict]]]:
        """:meth:`record` for a batch of messages' changes, in delivery order, set-based
        (D-322): every SKU's rows locked in one statement in (sku, channel) order, the
        order of a bulk message and of the senders' acknowledgements, so batches of
        replicas and senders never wait on each other in a cycle. A SKU changed more
        than once in the batch is recorded in rounds (its first change in the first,
        its second in the second...), each round judged against what the previous one
        wrote: the same outcome as one message at a time. The verdicts per round."""
        if not self.ids or not changes:
            return []
        rounds: list[list[LevelChange]] = []
        seen: dict[str, int] = {}
        for ch in changes:
            n = seen.get(ch.sku, 0)
            seen[ch.sku] = n + 1
            if n == len(rounds):
                rounds.append([])
            rounds[n].append(ch)
        return [await self._record_round(conn, r) for r in rounds]

    async def _record_round(
        self, conn: Conn, changes: Sequence[LevelChange], ids: Sequence[str] | None = None
    ) -> dict[str, dict[str, Verdict]]:
        """Changes of distinct SKUs: locked, judged and recorded in three statements, for
        the channels ``ids`` (all by default). A row another transaction created between
        the lock and the write is locked and judged again (D-420)."""
        ids = self.ids if ids is None else ids
        locked = await repo.lock_states_bulk(conn, [c.sku for c in changes], ids)
        states = locked.states
        # After the locks, as in record: a rule change committed meanwhile is seen.
        figures = await self.rules.figures_many(conn, ids, {c.sku: c.available for c in changes})
        out: dict[str, dict[str, Verdict]] = {}
        news: list[repo.LevelNews] = []
        counts: dict[tuple[str, Verdict], int] = {}
        for c in changes:
            mine = figures[c.sku]
            verdicts = {
                ch: self._judge(
                    ch, states[(c.sku, ch)], c.version, mine[ch][0], mine[ch][1], c.source
                )
                for ch in ids
            }
            out[c.sku] = verdicts
            live = {ch: v for ch, v in verdicts.items() if v is not Verdict.STALE}
            shown = {ch: (q, rule.describe()) for ch, (q, rule) in mine.items()}
            news.append(
                repo.LevelNews(c.sku, c.version, live, shown, c.committed_at, c.traceparent)
            )
        lost = await repo.apply_levels(
            conn, news, changes[0].committed_at, NOTIFY_CHANNEL, locked.missing
        )
        for c in changes:
            for ch, v in out[c.sku].items():
                if (c.sku, ch) not in lost:
                    counts[(ch, v)] = counts.get((ch, v), 0) + 1
        for (ch, v), n in counts.items():
            self.metrics.channel_changes.labels(channel=ch, verdict=v.value).inc(n)
        # Rare: rows another transaction inserted since the lock, judged again per
        # channel against what it wrote.
        for ch in sorted({ch for _, ch in lost}):
            again = [c for c in changes if (c.sku, ch) in lost]
            for sku, verdicts in (await self._record_round(conn, again, [ch])).items():
                out[sku] |= verdicts
        return out

    async def rearm(self, conn: Conn, channel: str, skus: Sequence[str]) -> int:
        """A replayed dead letter: its SKUs are due again on the channel."""
        n = await repo.rearm(conn, channel, skus)
        await repo.notify_senders(conn, NOTIFY_CHANNEL)
        return n

    # -- the senders -----------------------------------------------------------------

    def lease_s(self, channel: str) -> float:
        """Longer than the worst case of one write: its wait for a turn in the channel's
        rate limit plus every try of the call. A push that writes again (Shopify's
        re-read and set, a throttled mutation) renews it first through the fence, so a
        push in flight is never pushed twice at once; a crashed sender's rows come back
        when it ends."""
        c = self.configs[channel]
        tries_s = c.max_attempts * (c.timeout_ms + c.backoff_max_ms) / 1000
        return max(60.0, 2 * (MAX_PACE_WAIT_S + tries_s))

    async def claim(
        self, channel: str, limit: int, lease_s: float | None = None
    ) -> list[repo.Claimed]:
        """Lease up to ``limit`` due pushes of ``channel`` to this sender, oldest first,
        for :meth:`lease_s` or, for a push that takes longer (a feed), ``lease_s``."""
        async with self.pool.acquire() as conn:
            return await repo.claim(conn, channel, limit, lease_s or self.lease_s(channel))

    async def due_count(self, channel: str, limit: int) -> int:
        """The channel's due pushes, counted up to ``limit`` (is the backlog that big?)."""
        async with self.pool.acquire() as conn:
            return await repo.count_due(conn, channel, limit)

    async def claim_feed(self, adapter: ChannelAdapter) -> tuple[list[repo.Claimed], float] | None:
        """For an adapter that sends feeds (a ``feed_threshold`` above 0: Amazon's
        JSON_LISTINGS_FEED), when the channel's due backlog reaches the threshold: up to
        its ``feed_max_skus`` due pushes, leased for its ``feed_lease_s``, to push as one
        call; None otherwise (push as usual). Other adapters are left as they are."""
        threshold: int = getattr(adapter, "feed_threshold", 0)
        if threshold <= 0 or await self.due_count(adapter.id, threshold) < threshold:
            return None
        lease_s: float = adapter.feed_lease_s  # type: ignore[attr-defined]
        size: int = adapter.feed_max_skus  # type: ignore[attr-defined]
        claimed = await self.claim(adapter.id, size, lease_s)
        return (claimed, lease_s) if claimed else None

    async def push_next(self, adapter: ChannelAdapter) -> int:
        """Claim one batch of the channel's due pushes (a feed's worth, for an adapter
        whose backlog reaches its feed threshold) and push it; how many were claimed."""
        feed = await self.claim_feed(adapter)
        if feed is not None:
            await self.push_claimed(adapter, feed[0], feed[1])
            return len(feed[0])
        claimed = await self.claim(adapter.id, self.configs[adapter.id].batch_size)
        if claimed:
            await self.push_claimed(adapter, claimed)
        return len(claimed)

    async def push_claimed(
        self,
        adapter: ChannelAdapter,
        claimed: Sequence[repo.Claimed],
        lease_s: float | None = None,
        on_called: Callable[[], None] | None = None,
    ) -> Settled:
        """Push claimed SKUs through the channel's adapter and settle every one.

        Those the channel already shows are settled without a call. The adapter's
        failure contract (see :mod:`stockkeeper.connectors.channels`) decides the rest:
        a refused call is split into single pushes and a single refused item is
        dead-lettered; a channel that cannot take the call now has the batch retried
        after the backoff (never sooner than its ``Retry-After``); anything else the
        adapter raises is logged and retried the same way. ``lease_s``: the lease the
        rows were claimed with, renewed for as long on each fence. ``on_called``: told
        when the channel's call is over (or none was needed), before the settling, so
        a sender can start its next call meanwhile (D-351); told again, harmlessly, by
        the single pushes of a split batch.
        """
        channel = adapter.id
        done = Settled()
        if channel in self.located:
            return await self._push_located(adapter, claimed, lease_s, on_called)
        todo = [c for c in claimed if c.previous != c.quantity]
        if not todo and on_called is not None:
            on_called()
        noop = [c for c in claimed if c.previous == c.quantity]
        if noop:
            done.add(await self.noops(channel, noop))
        if todo:
            done.add(await self._call(adapter, todo, lease_s, on_called=on_called))
        return done

    async def _push_located(
        self,
        adapter: ChannelAdapter,
        claimed: Sequence[repo.Claimed],
        lease_s: float | None,
        on_called: Callable[[], None] | None,
    ) -> Settled:
        """:meth:`push_claimed` on a channel with several locations: each SKU's figure
        per location now; one whose every location shows it needs no call."""
        at, noop = await self.locations.figures(adapter.id, claimed)
        todo = [c for c in claimed if c not in noop]
        if not todo and on_called is not None:
            on_called()
        done = await self.noops(adapter.id, noop) if noop else Settled()
        if not todo:
            return done
        return done.add(await self._call(adapter, todo, lease_s, at, on_called))

    async def _call(
        self,
        adapter: ChannelAdapter,
        claimed: Sequence[repo.Claimed],
        lease_s: float | None = None,
        at: dict[str, tuple[AtLocation, ...]] | None = None,
        on_called: Callable[[], None] | None = None,
    ) -> Settled:
        channel = adapter.id
        lease = lease_s or self.lease_s(channel)
        items = [
            Push(
                c.sku,
                sum(a.quantity for a in at[c.sku]) if at else c.quantity,
                c.version,
                c.previous,
                c.channel_ref,
                at[c.sku] if at else (),
            )
            for c in claimed
        ]

        async def fence(skus: Sequence[str]) -> set[str]:
            wanted = set(skus)
            async with self.pool.acquire() as conn:
                return await repo.hold(
                    conn, channel, [c for c in claimed if c.sku in wanted], lease
                )

        try:
            # The channel call continues the trace of the change that made it due (the
            # httpx instrumentation adds the client span and sends its traceparent).
            with tracing.continuing(
                f"push {channel}",
                [c.trace_context for c in claimed],
                **{"stockkeeper.channel": channel, "stockkeeper.skus": len(claimed)},
            ):
                try:
                    outcomes = await adapter.push(items, fence)
                finally:
                    if on_called is not None:
                        on_called()
        except ConnectorRejected as exc:
            if len(claimed) > 1:
                # One bad item must not hold the others back: push each on its own.
                done = Settled()
                for c in claimed:
                    done.add(await self._call(adapter, [c], lease_s, at))
                return done
            refused = [PushOutcome(claimed[0].sku, "rejected", error=str(exc))]
            return await self.settle(channel, claimed, refused)
        except ConnectorUnavailable as exc:
            return await self.failed(channel, claimed, str(exc), exc.retry_after)
        except asyncio.CancelledError:
            # Stopping: let go of the rows now rather than when the lease runs out, and
            # give back the attempt (a shutdown is not the channel failing).
            await asyncio.shield(self.release(channel, claimed))
            raise
        except Exception as exc:
            log.exception("propagator.adapter_failed", channel=channel)
            return await self.failed(channel, claimed, f"{type(exc).__name__}: {exc}")
        return await self.settle(channel, claimed, outcomes)

    async def settle(
        self, channel: str, claimed: Sequence[repo.Claimed], outcomes: Sequence[PushOutcome]
    ) -> Settled:
        """Book what the channel answered for each claimed push."""
        by_sku = {o.sku: o for o in outcomes}
        acked: list[repo.Acked] = []
        unlisted: list[repo.Claimed] = []
        rejected: list[tuple[repo.Claimed, str]] = []
        missing: list[repo.Claimed] = []
        for c in claimed:
            o = by_sku.get(c.sku)
            if o is None:
                missing.append(c)
            elif o.status == "ok":
                qty = c.quantity if o.quantity is None else o.quantity
                acked.append(repo.Acked(c.sku, c.version, qty, o.channel_ref, c.token))
            elif o.status == "unlisted":
                unlisted.append(c)
            elif o.status == "superseded":
                # Another sender holds it now (this lease ran out): its push settles it.
                continue
            else:
                rejected.append((c, o.error or "rejected by the channel"))
        done = Settled()
        async with transaction(self.pool) as conn:
            logged = await repo.ack(conn, channel, acked)
            if channel in self.located:
                settled = {row.sku for row in logged}
                await self.locations.acknowledged(conn, channel, outcomes, settled)
            await repo.unlisted(conn, channel, unlisted)
            for c, error in rejected:
                await self._dead(conn, channel, [c], f"{channel} refused it: {error}")
            if rejected:
                note = f"{channel} refused {rejected[-1][0].sku}: {rejected[-1][1]}"
                await connector_state.record_failure(conn, channel, note, self.clock())
        self._count_acks(channel, logged, done)
        done.unlisted = len(unlisted)
        done.dead = len(rejected)
        if unlisted:
            self.metrics.channel_pushes.labels(channel=channel, result="unlisted").inc(
                len(unlisted)
            )
        if missing:
            note = "the channel's answer did not mention these SKUs"
            more = await self.failed(channel, missing, note)
            done.retried += more.retried
            done.dead += more.dead
        return done

    async def noops(self, channel: str, claimed: Sequence[repo.Claimed]) -> Settled:
        """Settle pushes the channel needs no call for: it shows the figure already."""
        acked = [
            repo.Acked(c.sku, c.version, c.quantity, None, c.token, called=False) for c in claimed
        ]
        async with self.pool.acquire() as conn:
            logged = await repo.ack(conn, channel, acked)
        done = Settled()
        self._count_acks(channel, logged, done)
        return done

    def _count_acks(self, channel: str, logged: Sequence[repo.Logged], done: Settled) -> None:
        m = self.metrics
        for row in logged:
            if row.called:
                done.pushed += 1
                done.lags_ms.append(row.lag_ms)
                m.sync_lag.labels(channel=channel).observe(row.lag_ms / 1000)
                # The changes that rode along with this push each saved one.
                m.channel_coalesced.labels(channel=channel).inc(row.changes - 1)
            else:
                done.noop += 1
                m.channel_coalesced.labels(channel=channel).inc(row.changes)
        if done.pushed:
            m.channel_pushes.labels(channel=channel, result="ok").inc(done.pushed)
        if done.noop:
            m.channel_pushes.labels(channel=channel, result="noop").inc(done.noop)

    async def release(self, channel: str, claimed: Sequence[repo.Claimed]) -> None:
        """Let go of pushes this sender will not finish (it is stopping): due again at
        once, without counting an attempt, so a shutdown never dead-letters a push."""
        async with self.pool.acquire() as conn:
            await repo.release(conn, channel, claimed)
        log.info("propagation.released", channel=channel, skus=len(claimed))

    async def failed(
        self,
        channel: str,
        claimed: Sequence[repo.Claimed],
        error: str,
        retry_after_s: float | None = None,
    ) -> Settled:
        """The channel could not take these pushes: each is tried again after its backoff,
        or, past ``propagation.max_attempts``, dead-lettered."""
        cfg = self.cfg
        spent = [c for c in claimed if c.attempts >= cfg.max_attempts]
        again = [
            (c, self.backoff.delay(c.attempts, retry_after_s))
            for c in claimed
            if c.attempts < cfg.max_attempts
        ]
        async with transaction(self.pool) as conn:
            await connector_state.record_failure(conn, channel, error, self.clock())
            if again:
                await repo.retry(conn, channel, again, error)
            if spent:
                attempts = max(c.attempts for c in spent)
                await self._dead(
                    conn, channel, spent, f"{channel} failed after {attempts} attempts: {error}"
                )
        if again:
            self.metrics.channel_pushes.labels(channel=channel, result="retried").inc(len(again))
            log.warning(
                "propagation.retry",
                channel=channel,
                skus=len(again),
                delay_s=round(max(d for _, d in again), 3),
                error=error[:500],
            )
        return Settled(retried=len(again), dead=len(spent))

    async def _dead(
        self, conn: Conn, channel: str, claimed: Sequence[repo.Claimed], error: str
    ) -> None:
        """Dead-letter pushes: the operator sees them, and a replay makes them due again."""
        skus = [c.sku for c in claimed]
        await repo.dead(conn, channel, claimed, error)
        env = Envelope.new(REARM, {"channel": channel, "skus": skus}, occurred_at=self.clock())
        await dead_letter(
            conn,
            queue=PROPAGATION_QUEUE,
            message_id=str(env.id),
            routing_key=REARM,
            body=env.to_bytes(),
            headers={"channel": channel},
            error=error,
            attempts=max(c.attempts for c in claimed),
        )
        self.metrics.dead_letters.labels(queue=PROPAGATION_QUEUE).inc()
        self.metrics.channel_pushes.labels(channel=channel, result="dead_lettered").inc(len(skus))
        log.error("propagation.dead_lettered", channel=channel, skus=skus[:20], error=error[:500])

    # -- lag and the alert ---------------------------------------------------------

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

    async def prune(self, limit: int = 10_000) -> int:
        """Forget logged pushes past ``propagation.push_log_retention_s``; how many went."""
        async with self.pool.acquire() as conn:
            return await repo.prune_pushes(conn, self.cfg.push_log_retention_s, limit)

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
            rows = await repo.unlisted_page(conn, channel, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return UnlistedPage(channel, rows, rows[-1].sku if more else None)

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
            after = await repo.claim_sample(conn, channel, cfg.divergence_sample_s)
            if after is None:
                return None
            size = cfg.divergence_sample_size
            rows = await repo.sample_page(conn, channel, after, size)
            if not rows and after:  # the walk reached the end: from the start again
                rows = await repo.sample_page(conn, channel, "", size)
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
                if await repo.diverged(conn, channel, r.sku, there, r.claim_seq) is not None:
                    found.append(r.sku)
            nxt = rows[-1].sku if len(rows) == size else ""
            await repo.sampled(conn, channel, nxt, len(found))
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
            return await repo.claim_reconcile(conn, channel, interval)

    async def sku_count(self) -> int:
        """How many SKUs a drift repair walks (every SKU we know)."""
        async with self.pool.acquire() as conn:
            return await repo.sku_count(conn)

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
                rows = await repo.reconcile_page(conn, channel, after, page)
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
                    repo.ReadBack(
                        r.sku,
                        shown.get(r.sku),
                        levels[r.sku].version,
                        figures[r.sku][channel][0],
                        r.claim_seq,
                    )
                    for r in todo
                    if r.sku in levels
                ]
                after_repair = await repo.repair_drift_many(conn, channel, reads)
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
            await repo.count_drift(conn, channel, drifted)
        self.metrics.channel_drift.labels(channel=channel).inc(drifted)
        log.info(
            "propagation.reconciled",
            channel=channel,
            checked=checked,
            drifted=drifted,
            unlisted=unlisted,
        )
        return Drift(channel, checked, drifted, unlisted)
