"""The expiry worker: gives back the stock of PENDING reservations past their expiry,
and runs retention (old outbox, consumer and Idempotency-Key rows) every
``retention.interval_s``.

A database that cannot be reached is waited out with growing pauses (0.5 s doubling to
30 s), one warning line per try and no traceback; other failures are logged with theirs
and tried again at the next interval (D-433)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from stockkeeper.bootstrap import Container
from stockkeeper.domain.backoff import Backoff
from stockkeeper.observability.logging import get_logger
from stockkeeper.services.retention import Policy, Retention
from stockkeeper.store.errors import is_unavailable

log = get_logger("stockkeeper.expiry")
# The pauses while the database cannot be reached, as the dispatcher's (D-030).
DATABASE_OUTAGE = Backoff(0.5, 30.0)


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
        outage = 0  # sweeps in a row that could not reach the database
        while not stop.is_set():
            pause = self.interval
            try:
                n = await self.sweep()
                if n:
                    log.info("expiry.swept", expired=n)
                if last_prune is None or time.monotonic() - last_prune >= self.retention_interval:
                    last_prune = time.monotonic()
                    await self.prune()
                if outage:
                    log.info("expiry.database_back", tries=outage)
                outage = 0
            except Exception as exc:
                # Counted and logged; the loop goes on.
                self.c.metrics.worker_errors.labels(worker="expiry").inc()
                if is_unavailable(exc):
                    # The database is restarting or away: nothing is lost (what is due
                    # stays due), so wait it out quietly with growing pauses.
                    outage += 1
                    pause = max(pause, DATABASE_OUTAGE.delay(outage))
                    error = f"{type(exc).__name__}: {exc}"
                    log.warning("expiry.database_unavailable", error=error, retry_in_s=pause)
                else:
                    log.exception("expiry.failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)
        log.info("expiry.stopped")
