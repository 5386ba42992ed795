"""How a worker loop reports a round that failed (D-433).

A database that cannot be reached (``store.errors.is_unavailable``: a refused, reset or
lost connection, a server shutting down) is an outage, not a bug: one warning per try,
``<event prefix>.database_unavailable`` with the error and the pause, no traceback, and
pauses growing from 0.5 s doubling to 30 s; then one ``.database_back`` line when a
round goes through again. Anything else keeps its traceback and the loop's own pace.
Both are counted in ``stockkeeper_worker_errors_total``.

A loop with no pace of its own to stretch (a poller's "poll now" check, a channel's
claim, a divergence sample) logs its round through :func:`log_round_failed`: the same
warning without a traceback while the database is away, an error with it otherwise
(D-387).
"""

from __future__ import annotations

from typing import Any

from stockkeeper.domain.backoff import Backoff
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store.errors import is_unavailable

# The pauses while the database cannot be reached, as the dispatcher's (D-030).
DATABASE_OUTAGE = Backoff(0.5, 30.0)


class RoundErrors:
    """One loop's failed rounds: ``failed`` after one, ``ok`` after one that worked."""

    def __init__(
        self, worker: str, prefix: str, metrics: Metrics, logger: str, **fields: Any
    ) -> None:
        self.worker = worker
        self.prefix = prefix
        self.metrics = metrics
        self.log = get_logger(logger)
        self.fields = fields
        self.outage = 0  # rounds in a row that could not reach the database

    def failed(self, event: str, exc: Exception) -> float | None:
        """Count and log the failure of a round (``event`` names it when it is not an
        outage); return the pause before the next round during an outage, else None
        (the loop waits as it would have)."""
        self.metrics.worker_errors.labels(worker=self.worker).inc()
        if not is_unavailable(exc):
            self.log.exception(event, **self.fields)
            return None
        self.outage += 1
        pause = DATABASE_OUTAGE.delay(self.outage)
        self.log.warning(
            f"{self.prefix}.database_unavailable",
            **self.fields,
            error=f"{type(exc).__name__}: {exc}",
            retry_in_s=pause,
        )
        return pause

    def ok(self) -> None:
        """A round went through: an outage, if there was one, is over."""
        if self.outage:
            self.log.info(f"{self.prefix}.database_back", **self.fields, tries=self.outage)
        self.outage = 0


def log_round_failed(log: Any, event: str, exc: BaseException, **fields: Any) -> None:
    """Log ``exc``, which ended a round of a loop, as ``event`` with ``fields``: a warning
    naming the error while the database cannot be reached, else an error with its
    traceback."""
    if is_unavailable(exc):
        log.warning(event, unreachable=True, error=f"{type(exc).__name__}: {exc}", **fields)
    else:
        log.error(event, exc_info=exc, **fields)
