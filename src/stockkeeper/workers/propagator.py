"""The propagator: pushes availability to every sales channel.

Two halves, joined by ``channel_sync_state``. The ``channel.propagation`` consumer
records each ``inventory.level_changed`` (and each SKU of an ``inventory.levels_changed``,
set-based: one contract, two shapes) per channel (newest version wins, echoes of a
channel's own changes are left out, changes waiting for a push ride along with it) in
the transaction that marks the message processed, so it never waits for a channel.
Per channel, one loop keeps up to ``concurrency`` calls in flight with a claimed batch
ready behind each (``batch_size`` SKUs, the adapter's largest batch under a backlog:
D-350, D-351) and hands each batch to
:meth:`~stockkeeper.services.propagation.Propagation.push_claimed`, which calls the
channel's adapter and books the answers (a failed push is retried with backoff and,
past ``propagation.max_attempts``, dead-lettered). This module only schedules and
wakes: the loops run on :func:`~stockkeeper.store.listener.listen_then_poll`, woken by
one :class:`~stockkeeper.store.listener.Listener`. A slow or broken channel only ever
holds up its own loop. A monitor computes the lag percentiles and the alert, prunes the
push log and runs the scheduled drift repair.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockkeeper.connectors.channels import ChannelAdapter
from stockkeeper.domain.events import LEVEL_CHANGED, LEVELS_CHANGED
from stockkeeper.messaging.consumer import (
    BatchEffectHandler,
    EffectHandler,
    Incoming,
    PermanentError,
)
from stockkeeper.messaging.envelope import Envelope, first_error
from stockkeeper.observability.logging import get_logger
from stockkeeper.services.propagation import NOTIFY_CHANNEL, REARM, LevelChange, Propagation
from stockkeeper.services.push_pipeline import ClaimSizer
from stockkeeper.store.channel_sync import Claimed
from stockkeeper.store.listener import Listener, listen_then_poll
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.waiting import wait_any
from stockkeeper.workers.round_errors import RoundErrors, log_round_failed

LOGGER = "stockkeeper.propagator"
log = get_logger(LOGGER)

IDLE_POLL_S = 1.0
# After a wake-up, how long a channel's loop lets more changes gather before it claims:
# under a stream of changes, one claim per channel every few milliseconds at most.
LINGER_S = 0.01


class _Level(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sku: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=1)
    available: int = Field(ge=0)


class _Levels(BaseModel):
    """``inventory.levels_changed``: many SKUs, each what one level_changed carries."""

    model_config = ConfigDict(extra="ignore")
    levels: list[_Level] = Field(min_length=1)


class _Rearm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str = Field(min_length=1)
    skus: list[str] = Field(min_length=1)


class Propagator:
    def __init__(
        self,
        service: Propagation,
        adapters: dict[str, ChannelAdapter],
        pool: Pool,
        listen_pool: Pool | None = None,
    ) -> None:
        self.service = service
        self.adapters = adapters
        self.pool = pool
        self.metrics = service.metrics
        # One LISTEN connection; per channel, one wake-up for its loop and one to tell
        # whether an idle wait ended in a NOTIFY (then it lingers before it claims).
        # Behind PgBouncer the LISTEN needs a session of its own: the session pool.
        reconnects = self.metrics.listener_reconnects.labels(listener="propagator")
        self.listener = Listener(listen_pool or pool, "propagator", on_reconnect=reconnects.inc)
        self.wake = {ch: self.listener.subscribe(NOTIFY_CHANNEL) for ch in adapters}
        self._notified = {ch: self.listener.subscribe(NOTIFY_CHANNEL) for ch in adapters}

    # -- the consumer half -----------------------------------------------------------

    def handler(self) -> EffectHandler:
        async def handle(conn: Conn, env: Envelope) -> None:
            if env.type == LEVEL_CHANGED:
                try:
                    level = _Level.model_validate(env.payload)
                except ValidationError as exc:
                    error = f"bad level_changed payload: {first_error(exc)}"
                    raise PermanentError(error) from None
                await self.service.record(
                    conn, level.sku, level.version, level.available, env.occurred_at, env.source
                )
            elif env.type == LEVELS_CHANGED:
                try:
                    bulk = _Levels.model_validate(env.payload)
                except ValidationError as exc:
                    error = f"bad levels_changed payload: {first_error(exc)}"
                    raise PermanentError(error) from None
                await self.service.record_many(
                    conn,
                    [(lv.sku, lv.version, lv.available) for lv in bulk.levels],
                    env.occurred_at,
                    env.source,
                )
            elif env.type == REARM:
                try:
                    doc = _Rearm.model_validate(env.payload)
                except ValidationError as exc:
                    raise PermanentError(f"bad rearm payload: {first_error(exc)}") from None
                if doc.channel not in self.service.configs:
                    raise PermanentError(f"no channel {doc.channel!r} is configured")
                n = await self.service.rearm(conn, doc.channel, doc.skus)
                log.info("propagator.rearmed", channel=doc.channel, skus=n)
            # Anything else bound to the queue later is not for the channels.

        return handle

    def batch_handler(self) -> BatchEffectHandler:
        """The consumer's effect for a batch of messages (D-322): every level change of
        the batch (a level_changed, each SKU of a levels_changed) recorded set-based by
        :meth:`Propagation.record_batch`, then any other message one by one. A bad
        payload fails the batch's effect; the runner then takes its messages one at a
        time, and only that one is dead-lettered."""
        handle = self.handler()

        async def handle_many(conn: Conn, items: Sequence[Incoming]) -> None:
            changes: list[LevelChange] = []
            others: list[Envelope] = []
            for it in items:
                env = it.env
                if env.type == LEVEL_CHANGED:
                    lv = _Level.model_validate(env.payload)
                    changes.append(
                        LevelChange(
                            lv.sku,
                            lv.version,
                            lv.available,
                            env.occurred_at,
                            env.source,
                            it.traceparent,
                        )
                    )
                elif env.type == LEVELS_CHANGED:
                    newest: dict[str, _Level] = {}
                    for lv in _Levels.model_validate(env.payload).levels:
                        if lv.sku not in newest or lv.version > newest[lv.sku].version:
                            newest[lv.sku] = lv
                    changes += [
                        LevelChange(
                            lv.sku,
                            lv.version,
                            lv.available,
                            env.occurred_at,
                            env.source,
                            it.traceparent,
                        )
                        for lv in newest.values()
                    ]
                else:
                    others.append(env)
            await self.service.record_batch(conn, changes)
            for env in others:
                await handle(conn, env)

        return handle_many

    # -- the sender half -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info("propagator.started", channels=sorted(self.adapters))
        try:
            async with self.listener:
                loops = [self._channel(ch, stop) for ch in self.adapters]
                await asyncio.gather(*loops, self._monitor(stop))
        finally:
            for adapter in self.adapters.values():
                await adapter.aclose()
            log.info("propagator.stopped")

    async def _channel(self, channel: str, stop: asyncio.Event) -> None:
        await _ChannelLoop(self, channel, stop).run()

    async def _guarded(
        self,
        channel: str,
        claimed: Sequence[Claimed],
        lease_s: float | None = None,
        on_called: Callable[[], None] | None = None,
    ) -> None:
        try:
            await self.service.push_claimed(self.adapters[channel], claimed, lease_s, on_called)
        except Exception:
            # Not a loop's round: a push whose outcome could not be booked within its
            # claim's lease (a database away all that time, D-438), or a bug; its rows are
            # due again when the lease runs out. An error with its traceback (D-387).
            self.metrics.worker_errors.labels(worker="propagator").inc()
            log.exception("propagator.push_failed", channel=channel, skus=len(claimed))

    async def push_once(self, channel: str) -> int:
        """Claim one batch of due pushes of ``channel`` and push it; how many were claimed."""
        return await self.service.push_next(self.adapters[channel])

    # -- the monitor -----------------------------------------------------------------

    async def _monitor(self, stop: asyncio.Event) -> None:
        interval = self.service.monitoring.lag_check_interval_s
        repairs: dict[str, asyncio.Task[object]] = {}
        samples: dict[str, asyncio.Task[object]] = {}
        behind = set(self.adapters)  # channels whose rules were not caught up yet
        errors = RoundErrors("propagator", "propagator.monitor", self.metrics, LOGGER)
        while not stop.is_set():
            pause: float | None = None
            try:
                for ch in sorted(behind):
                    await self._catch_up(ch)
                    behind.discard(ch)
                await self.service.check_lag()
                await self.service.status()  # sets the pending and unlisted gauges
                for ch, adapter in self.adapters.items():
                    running = repairs.get(ch)
                    if running is not None and not running.done():
                        continue
                    if adapter.can_read and await self.service.due_for_reconcile(ch):
                        repairs[ch] = asyncio.ensure_future(self.service.reconcile(adapter))
                for ch, adapter in self.adapters.items():
                    sampling = samples.get(ch)
                    if adapter.can_read and (sampling is None or sampling.done()):
                        samples[ch] = asyncio.ensure_future(self._sample(adapter))
                errors.ok()
            except Exception as exc:
                pause = errors.failed("propagator.monitor_failed", exc)
            await wait_any(stop, at_most=max(interval, pause or 0.0))
        tasks = [*repairs.values(), *samples.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _catch_up(self, channel: str) -> None:
        """A rule edited in the config takes effect at start for every SKU, not only
        those whose stock changes next (D-447)."""
        due = await self.service.rules.catch_up(channel)
        if due:
            log.info("propagator.rules_caught_up", channel=channel, due=due)

    async def _sample(self, adapter: ChannelAdapter) -> None:
        try:
            await self.service.sample(adapter)
        except Exception as exc:
            self.metrics.worker_errors.labels(worker="propagator").inc()
            log_round_failed(log, "propagator.sample_failed", exc, channel=adapter.id)


class _ChannelLoop:
    """One channel's loop, a pipeline (D-351): up to ``concurrency`` calls in flight, and
    a claimed batch ready for each, so a call starts the moment another's answer is in,
    without waiting for a claim's round trip; the settling of an answered call goes on
    beside the next calls (at most ``concurrency`` of them at once). Claims are sized by
    :class:`~stockkeeper.services.push_pipeline.ClaimSizer`: ``batch_size`` under a
    trickle, the adapter's largest batch under a backlog. Only this loop queries for the
    channel's due rows, so a burst of changes is one claim, not one per sender; after an
    idle wait that a NOTIFY ended it waits ``LINGER_S`` to let changes gather."""

    def __init__(self, worker: Propagator, channel: str, stop: asyncio.Event) -> None:
        self.worker = worker
        self.channel = channel
        self.stop = stop
        self.cfg = worker.service.configs[channel]
        self.adapter = worker.adapters[channel]
        self.notified = worker._notified[channel]
        self.sizer = ClaimSizer.of(self.adapter, self.cfg)
        # Claimed, not started yet; calling the channel; calling or settling.
        self.ready: deque[list[Claimed]] = deque()
        self.calling: set[asyncio.Task[None]] = set()
        self.flying: set[asyncio.Task[None]] = set()
        self.slot = asyncio.Event()  # set when a call or a settling ends
        self.idle = False

    async def run(self) -> None:
        wake = self.worker.wake[self.channel]
        await listen_then_poll(
            self.step, wake, self.stop, poll_s=IDLE_POLL_S, on_error=self.claim_failed
        )
        if self.ready:
            # Stopping: batches claimed but never sent are due again at once.
            unsent = [c for batch in self.ready for c in batch]
            self.ready.clear()
            await self.worker.service.release(self.channel, unsent)
        if self.flying:
            # Stopping: pushes in flight get propagation.shutdown_grace_s to finish; the
            # rest are cancelled, and let go of their rows without counting an attempt.
            grace = self.worker.service.cfg.shutdown_grace_s
            _, late = await asyncio.wait(self.flying, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _full(self) -> bool:
        slots = self.cfg.concurrency
        return len(self.calling) >= slots or len(self.flying) >= 2 * slots

    async def step(self) -> bool:
        """One round; True when there may be more to claim or send at once."""
        woken, self.idle = self.idle and self.notified.is_set(), False
        self.notified.clear()
        if woken:
            await wait_any(self.stop, at_most=LINGER_S)
            if self.stop.is_set():
                return False
        if not self.ready and not self._full() and await self._feed():
            return True
        got = 0
        room = self.cfg.concurrency - len(self.ready)
        if room > 0:
            size = self.sizer.size
            claimed = await self.worker.service.claim(self.channel, size * room)
            self.sizer.claimed(size * room, len(claimed))
            got = len(claimed)
            self.ready.extend(list(claimed[i : i + size]) for i in range(0, got, size))
        while self.ready and not self._full():
            self._start(self.ready.popleft())
        if self.ready:
            # Every slot busy and the next batches claimed: wait for a call to end.
            while self._full() and not self.stop.is_set():
                self.slot.clear()
                await wait_any(self.stop, self.slot)
            return True
        self.idle = not got
        return not self.idle

    def _start(self, batch: Sequence[Claimed], lease_s: float | None = None) -> None:
        task = asyncio.ensure_future(self._push(batch, lease_s))
        self.calling.add(task)
        self.flying.add(task)
        task.add_done_callback(self._ended)

    async def _push(self, batch: Sequence[Claimed], lease_s: float | None) -> None:
        task = asyncio.current_task()

        def called() -> None:
            if task in self.calling:
                self.calling.discard(task)
                self.slot.set()

        await self.worker._guarded(self.channel, batch, lease_s, called)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.calling.discard(task)
        self.flying.discard(task)
        self.slot.set()

    async def _feed(self) -> bool:
        """A feed's worth of the backlog claimed and pushed as one task, when the
        adapter sends feeds and the backlog reaches its threshold; whether it was."""
        feed = await self.worker.service.claim_feed(self.adapter)
        if feed is None:
            return False
        claimed, lease_s = feed
        log.info("propagator.feed", channel=self.channel, skus=len(claimed))
        self._start(claimed, lease_s)
        return True

    def claim_failed(self, exc: Exception) -> None:
        # The database restarting, say: counted, logged, tried again shortly.
        self.worker.metrics.worker_errors.labels(worker="propagator").inc()
        log_round_failed(log, "propagator.claim_failed", exc, channel=self.channel)
