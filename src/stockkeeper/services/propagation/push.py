"""Pushing: senders claim due rows per channel, the channel's adapter is called, and
each push is settled (acknowledged, unlisted, retried after the backoff, or
dead-lettered)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from stockkeeper.connectors.channels import AtLocation, ChannelAdapter, Push, PushOutcome
from stockkeeper.connectors.http import ConnectorRejected, ConnectorUnavailable
from stockkeeper.connectors.shopify import MAX_PACE_WAIT_S
from stockkeeper.messaging.consumer import dead_letter
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.messaging.outages import DATABASE_OUTAGE
from stockkeeper.observability import tracing
from stockkeeper.services.propagation.base import PropagationBase, log
from stockkeeper.services.unit import transaction
from stockkeeper.store import channel_sync as repo
from stockkeeper.store import connector_state
from stockkeeper.store.errors import is_unavailable
from stockkeeper.store.pool import Conn

PROPAGATION_QUEUE = "channel.propagation"
# A dead-lettered push, replayed through the admin API, comes back as this message.
REARM = "channel.push.rearm"


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


class Pusher(PropagationBase):
    """The senders' side: claim, push through the adapter, settle."""

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
        # What the channel answered is booked even if the database is away when the
        # answer comes, for as long as this claim's lease lasts (D-438).
        until = time.monotonic() + lease
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
            try:
                async with self.pool.acquire() as conn:
                    return await repo.hold(
                        conn, channel, [c for c in claimed if c.sku in wanted], lease
                    )
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                # No sender can claim the rows while the database is away, and this
                # claim's lease outlasts the call (a feed's: its timeout and more): the
                # rows are still ours; the booking's token check has the last word.
                log.warning(
                    "propagator.fence_unreachable",
                    channel=channel,
                    skus=len(wanted),
                    error=f"{type(exc).__name__}: {exc}",
                )
                return wanted

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
            return await self._booked(
                channel, until, lambda: self.settle(channel, claimed, refused)
            )
        except ConnectorUnavailable as exc:
            reason, retry_after = str(exc), exc.retry_after
            return await self._booked(
                channel, until, lambda: self.failed(channel, claimed, reason, retry_after)
            )
        except asyncio.CancelledError:
            # Stopping: let go of the rows now rather than when the lease runs out, and
            # give back the attempt (a shutdown is not the channel failing).
            await asyncio.shield(self.release(channel, claimed))
            raise
        except Exception as exc:
            log.exception("propagator.adapter_failed", channel=channel)
            error = f"{type(exc).__name__}: {exc}"
            return await self._booked(channel, until, lambda: self.failed(channel, claimed, error))
        return await self._booked(channel, until, lambda: self.settle(channel, claimed, outcomes))

    async def _booked(
        self, channel: str, until: float, book: Callable[[], Awaitable[Settled]]
    ) -> Settled:
        """``book()``, tried again with growing pauses while the database cannot be
        reached, until ``until`` (the claim's lease, on the monotonic clock): a push the
        channel took is not left unbooked, its rows leased, for a database that was away
        for a few seconds. Each booking is one transaction and fenced by the claim's
        token, so one that committed before its connection was lost books nothing twice."""
        waits = 0
        while True:
            try:
                return await book()
            except Exception as exc:
                left = until - time.monotonic()
                if not is_unavailable(exc) or left <= 0:
                    raise
                waits += 1
                pause = min(DATABASE_OUTAGE.delay(waits), left)
                log.warning(
                    "propagator.booking_waits_for_database",
                    channel=channel,
                    waits=waits,
                    retry_in_s=round(pause, 3),
                    error=f"{type(exc).__name__}: {exc}",
                )
            await asyncio.sleep(pause)

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
        """Dead-letter pushes: the operator sees them, and a replay makes them due again.
        Only those whose claim is still held: a claim another sender took is theirs, and a
        booking tried again after a lost connection dead-letters nothing twice."""
        skus = await repo.dead(conn, channel, claimed, error)
        if not skus:
            return
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
