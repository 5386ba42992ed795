"""The expiry worker: gives back the stock of PENDING reservations past their expiry."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from stockkeeper.bootstrap import Container
from stockkeeper.observability.logging import get_logger
from stockkeeper.store import idempotency

log = get_logger("stockkeeper.expiry")


class ExpiryWorker:
    """Sweeps in batches (SKIP LOCKED, so replicas share the work) until stopped."""

    def __init__(self, container: Container) -> None:
        self.c = container
        cfg = container.settings.reservations
        self.batch = cfg.expiry_batch_size
        self.interval = cfg.expiry_interval_ms / 1000
        self.key_ttl = timedelta(seconds=container.settings.api.idempotency_ttl_seconds)

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

    async def purge_keys(self) -> int:
        async with self.c.pool.acquire() as conn:
            return await idempotency.purge_keys(conn, self.c.clock() - self.key_ttl)

    async def run(self, stop: asyncio.Event) -> None:
        log.info("expiry.started", batch=self.batch, interval_s=self.interval)
        ticks = 0
        while not stop.is_set():
            try:
                n = await self.sweep()
                if n:
                    log.info("expiry.swept", expired=n)
                ticks += 1
                if ticks % 600 == 1:
                    await self.purge_keys()
            except Exception:
                # Counted and logged; the loop goes on (the database may be restarting).
                self.c.metrics.worker_errors.labels(worker="expiry").inc()
                log.exception("expiry.failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        log.info("expiry.stopped")
