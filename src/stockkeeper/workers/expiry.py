"""The expiry worker: gives back the stock of PENDING reservations past their expiry,
and runs retention (the append-heavy tables and resolved rows, ``services/retention.py``)
every ``retention.interval_s``.

A database that cannot be reached is waited out with growing pauses (0.5 s doubling to
30 s), one warning line per try and no traceback; other failures are logged with theirs
and tried again at the next interval (D-433)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from stockkeeper.bootstrap import Container
from stockkeeper.observability.logging import get_logger
from stockkeeper.services.retention import Policy, Retention
from stockkeeper.workers.round_errors import RoundErrors

log = get_logger("stockkeeper.expiry")


class ExpiryWorker:
    """Sweeps in batches (SKIP LOCKED, so replicas share the work) until stopped."""

    def __init__(self, container: Container) -> None:
        self.c = container
        cfg = container.settings.reservations
        self.batch = cfg.expiry_batch_size
        self.interval = cfg.expiry_interval_ms / 1000
        self.retention = Retention(
            container.pool, Policy.from_settings(container.settings), container.metrics
        )
        self.retention_interval = container.settings.retention.interval_s

    async def sweep(self) -> int:
        """Expire everything due now; return how many reservations were expired."""
        total = 0
        while True:
            n = await self.c.reservations.expire_due(self.batch)
            total += n
            if n < self.batch:
                break
        while await self.c.stock.expire_lots(self.batch) == self.batch:
            pass
        return total

    async def prune(self) -> int:
        """One retention pass; return how many rows it deleted in all."""
        deleted = await self.retention.run()
        total = sum(deleted.values())
        if total:
            log.info("retention.pruned", **{t.value: n for t, n in deleted.items()})
        return total

    async def run(self, stop: asyncio.Event) -> None:
        log.info("expiry.started", batch=self.batch, interval_s=self.interval)
        last_prune: float | None = None
        errors = RoundErrors("expiry", "expiry", self.c.metrics, "stockkeeper.expiry")
        while not stop.is_set():
            pause: float | None = None
            try:
                n = await self.sweep()
                if n:
                    log.info("expiry.swept", expired=n)
                if last_prune is None or time.monotonic() - last_prune >= self.retention_interval:
                    last_prune = time.monotonic()
                    await self.prune()
                errors.ok()
            except Exception as exc:
                # Counted and logged; the loop goes on (an outage: with growing pauses).
                pause = errors.failed("expiry.failed", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(self.interval, pause or 0.0))
        log.info("expiry.stopped")
