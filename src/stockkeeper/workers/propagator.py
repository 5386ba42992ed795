"""The propagator: pushes availability to every sales channel.

Two halves, joined by ``channel_sync_state``. The ``channel.propagation`` consumer
records each ``inventory.level_changed`` per channel (newest version wins, echoes of a
channel's own changes are left out, changes waiting for a push ride along with it) in
the transaction that marks the message processed, so it never waits for a channel.
Per channel, one loop claims due SKUs for every free slot (``concurrency`` calls in
flight, ``batch_size`` SKUs each), pushes them through the channel's adapter within its
rate limit, and books the answers; a failed push is retried
with backoff and, past ``propagation.max_attempts``, dead-lettered. A slow or broken
channel only ever holds up its own loop. A monitor computes the lag percentiles and
the alert, prunes the push log and runs the scheduled drift repair.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockkeeper.connectors.channels import ChannelAdapter, Push, PushOutcome
from stockkeeper.connectors.http import ConnectorRejected, ConnectorUnavailable
from stockkeeper.domain.events import LEVEL_CHANGED
from stockkeeper.messaging.consumer import EffectHandler, PermanentError
from stockkeeper.messaging.envelope import Envelope, first_error
from stockkeeper.observability.logging import get_logger
from stockkeeper.services.propagation import NOTIFY_CHANNEL, REARM, Propagation
from stockkeeper.store.channels import Claimed
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.waiting import wait_any
from stockkeeper.workers.listener import Listener

log = get_logger("stockkeeper.propagator")

IDLE_POLL_S = 1.0
# After a wake-up, how long a channel's loop lets more changes gather before it claims:
# under a stream of changes, one claim per channel every few milliseconds at most.
LINGER_S = 0.01
PRUNE_EVERY_S = 60.0
# How long a stopping propagator lets pushes in flight finish before it abandons them
# (their leases run out and another sender takes them).
STOP_GRACE_S = 5.0


class _Level(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sku: str = Field(min_length=1, max_length=128)
    version: int = Field(ge=1)
    available: int = Field(ge=0)


class _Rearm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    channel: str = Field(min_length=1)
    skus: list[str] = Field(min_length=1)


class Propagator:
    def __init__(
        self, service: Propagation, adapters: dict[str, ChannelAdapter], pool: Pool
    ) -> None:
        self.service = service
        self.adapters = adapters
        self.pool = pool
        self.metrics = service.metrics
        self.wake = {ch: asyncio.Event() for ch in adapters}

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

    # -- the sender half -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        log.info("propagator.started", channels=sorted(self.adapters))
        reconnects = self.metrics.listener_reconnects.labels(listener="propagator")
        listener = Listener(self.pool, "propagator", on_reconnect=reconnects.inc)
        # Every channel's loop wakes on a NOTIFY: one event each, all set together.
        wakes = [listener.subscribe(NOTIFY_CHANNEL) for _ in self.adapters]
        self.wake = dict(zip(self.adapters, wakes, strict=True))
        try:
            async with listener:
                tasks = [asyncio.ensure_future(self._channel(ch, stop)) for ch in self.adapters]
                tasks.append(asyncio.ensure_future(self._monitor(stop)))
                await asyncio.gather(*tasks)
        finally:
            for adapter in self.adapters.values():
                await adapter.aclose()
            log.info("propagator.stopped")

    async def _channel(self, channel: str, stop: asyncio.Event) -> None:
        """One channel's loop: claim due pushes for every free slot (``concurrency``
        calls in flight, ``batch_size`` SKUs each) and push them. Only this loop queries
        for the channel's due rows, so a burst of changes is one claim, not one per
        sender; it waits ``LINGER_S`` after a wake-up to let changes gather."""
        cfg = self.service.configs[channel]
        wake = self.wake[channel]
        flying: set[asyncio.Task[None]] = set()
        backoff = 0.5
        while not stop.is_set():
            if len(flying) >= cfg.concurrency:
                await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
                continue
            wake.clear()
            free = cfg.concurrency - len(flying)
            try:
                claimed = await self.service.claim(channel, cfg.batch_size * free)
                backoff = 0.5
            except Exception:
                # The database restarting, say: counted, logged, tried again shortly.
                self.metrics.worker_errors.labels(worker="propagator").inc()
                log.exception("propagator.claim_failed", channel=channel)
                await wait_any(stop, at_most=backoff)
                backoff = min(30.0, backoff * 2)
                continue
            for i in range(0, len(claimed), cfg.batch_size):
                task = asyncio.ensure_future(
                    self._guarded(channel, claimed[i : i + cfg.batch_size])
                )
                flying.add(task)
                task.add_done_callback(flying.discard)
            if not claimed:
                await wait_any(stop, wake, at_most=IDLE_POLL_S)
                if wake.is_set():
                    await wait_any(stop, at_most=LINGER_S)
        if flying:
            # Stopping: pushes in flight get a moment to finish, then let go of their rows.
            _, late = await asyncio.wait(flying, timeout=STOP_GRACE_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _guarded(self, channel: str, claimed: Sequence[Claimed]) -> None:
        try:
            await self.push(channel, claimed)
        except Exception:
            self.metrics.worker_errors.labels(worker="propagator").inc()
            log.exception("propagator.push_failed", channel=channel, skus=len(claimed))

    async def push_once(self, channel: str) -> int:
        """Claim one batch of due pushes of ``channel`` and push it; how many were claimed."""
        claimed = await self.service.claim(channel, self.service.configs[channel].batch_size)
        if claimed:
            await self.push(channel, claimed)
        return len(claimed)

    async def push(self, channel: str, claimed: Sequence[Claimed]) -> None:
        """Push claimed SKUs: those the channel already shows are settled without a call."""
        noop = [c for c in claimed if c.previous == c.quantity]
        if noop:
            await self.service.noops(channel, noop)
        todo = [c for c in claimed if c.previous != c.quantity]
        if todo:
            await self._push(channel, todo)

    async def _push(self, channel: str, claimed: Sequence[Claimed]) -> None:
        adapter = self.adapters[channel]
        items = [Push(c.sku, c.quantity, c.version, c.previous, c.channel_ref) for c in claimed]
        try:
            outcomes = await adapter.push(items)
        except ConnectorRejected as exc:
            if len(claimed) > 1:
                # One bad item must not hold the others back: push each on its own.
                for c in claimed:
                    await self._push(channel, [c])
                return
            refused = [PushOutcome(claimed[0].sku, "rejected", error=str(exc))]
            await self.service.settle(channel, claimed, refused)
            return
        except ConnectorUnavailable as exc:
            await self.service.failed(channel, claimed, str(exc), exc.retry_after)
            return
        except asyncio.CancelledError:
            # Stopping: let go of the rows now rather than when the lease runs out.
            await asyncio.shield(self.service.failed(channel, claimed, "propagator stopped"))
            raise
        except Exception as exc:
            log.exception("propagator.adapter_failed", channel=channel)
            await self.service.failed(channel, claimed, f"{type(exc).__name__}: {exc}")
            return
        await self.service.settle(channel, claimed, outcomes)

    # -- the monitor -----------------------------------------------------------------

    async def _monitor(self, stop: asyncio.Event) -> None:
        interval = self.service.monitoring.lag_check_interval_s
        last_prune = 0.0
        repairs: dict[str, asyncio.Task[object]] = {}
        while not stop.is_set():
            try:
                await self.service.check_lag()
                status = await self.service.status()
                for ch, doc in status.items():
                    self.metrics.channel_pending.labels(channel=ch).set(doc["pending"])
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    await self.service.prune()
                    last_prune = time.monotonic()
                for ch, adapter in self.adapters.items():
                    running = repairs.get(ch)
                    if running is not None and not running.done():
                        continue
                    if adapter.can_read and await self.service.due_for_reconcile(ch):
                        repairs[ch] = asyncio.ensure_future(self.service.reconcile(adapter))
            except Exception:
                self.metrics.worker_errors.labels(worker="propagator").inc()
                log.exception("propagator.monitor_failed")
            await wait_any(stop, at_most=interval)
        for task in repairs.values():
            task.cancel()
        await asyncio.gather(*repairs.values(), return_exceptions=True)
