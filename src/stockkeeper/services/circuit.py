"""A circuit breaker whose state lives in PostgreSQL, so every process sees it.

Closed: calls go through; ``failure_threshold`` failures in a row open it. Open: calls
are refused at once (``CircuitOpen``) until ``cooldown_s`` has passed; then half-open:
one call goes through, and its success closes the circuit, its failure opens it again.
The state is saved on every change (``connector_state``): the admin API, in another
process, shows it, and a restarted poller does not hammer a source that was failing.

Written here rather than taken from a library: the state has to be shared through our
database and shown by the admin API, which the maintained breaker libraries (pybreaker,
aiobreaker, purgatory) would need a custom storage backend for anyway; what is left is
the fifty lines below.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.unit import Clock, utcnow
from stockkeeper.store import connector_state
from stockkeeper.store.connector_state import Circuit
from stockkeeper.store.pool import Pool

log = get_logger("stockkeeper.circuit")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
GAUGE = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitOpen(Exception):
    """The source is failing; no call is made until the cool-down has passed."""


class CircuitBreaker:
    def __init__(
        self,
        pool: Pool,
        metrics: Metrics,
        name: str,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Clock = utcnow,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.name = name
        self.threshold = failure_threshold
        self.cooldown = timedelta(seconds=cooldown_s)
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at: datetime | None = None
        self.loaded = False

    async def _load(self) -> None:
        async with self.pool.acquire() as conn:
            saved = await connector_state.circuit(conn, self.name)
        if saved is not None:
            self.state, self.failures, self.opened_at = (
                saved.state,
                saved.failures,
                saved.opened_at,
            )
        self.loaded = True
        self.metrics.circuit_state.labels(connector=self.name).set(GAUGE[self.state])

    async def _save(self, error: str | None = None) -> None:
        async with self.pool.acquire() as conn:
            await connector_state.save_circuit(
                conn, self.name, Circuit(self.state, self.failures, self.opened_at), error
            )
            if error is not None:  # a call failed: the status page keeps it, and when
                await connector_state.record_failure(conn, self.name, error, self.clock())
        self.metrics.circuit_state.labels(connector=self.name).set(GAUGE[self.state])

    async def _move(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            log.warning("circuit.changed", connector=self.name, state=state, was=self.state)
        self.state = state
        await self._save(error)

    @asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run one call through the breaker: refused while open, counted either way."""
        if not self.loaded:
            await self._load()
        if self.state == OPEN:
            assert self.opened_at is not None
            if self.clock() - self.opened_at < self.cooldown:
                raise CircuitOpen(f"{self.name}: circuit open since {self.opened_at.isoformat()}")
            await self._move(HALF_OPEN)
        try:
            yield
        except Exception as exc:
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.threshold:
                self.opened_at = self.clock()
                await self._move(OPEN, f"{type(exc).__name__}: {exc}"[:2000])
            else:
                await self._save(f"{type(exc).__name__}: {exc}"[:2000])
            raise
        if self.state != CLOSED or self.failures:
            self.failures = 0
            self.opened_at = None
            await self._move(CLOSED)
