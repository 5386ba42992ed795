"""The embedded PostgreSQL's watchdog: started again when its server goes away.

With no ``database.url``, the server is ours to keep: a laptop's ``stockkeeper up``
whose PostgreSQL was killed (out of memory, a stray ``pkill``, a crash) would otherwise
answer 503 until someone restarts the whole process. The pools need nothing: their
next connection reaches the server that came back (the same socket or port).
"""

from __future__ import annotations

import asyncio
import contextlib

from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store.embedded import EmbeddedPostgres

log = get_logger("stockkeeper.embedded")

# How often the postmaster's pid is looked at: a read of one small file.
CHECK_INTERVAL_S = 1.0


class EmbeddedWatch:
    def __init__(
        self, server: EmbeddedPostgres, metrics: Metrics, interval_s: float = CHECK_INTERVAL_S
    ) -> None:
        self.server = server
        self.metrics = metrics
        self.interval_s = interval_s

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if await asyncio.to_thread(self.server.ensure_running):
                    log.warning("database.embedded_restarted", url=self.server.url)
            except Exception:
                # Counted and logged; tried again at the next check (another process of
                # the data directory may be starting it, or the old one still exiting).
                self.metrics.worker_errors.labels(worker="embedded-watch").inc()
                log.exception("database.embedded_restart_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)
