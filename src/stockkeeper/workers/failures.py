"""How a worker loop logs a round that failed (D-387).

While the database cannot be reached (the embedded server restarting, a failover, a
network cut), every loop of a process fails each round until it is back: one warning
line each, naming the error, says all there is to say, and a traceback of a refused
connection per loop and round buried the one line that mattered (the restart). Any
other failure is an error with its traceback, as before.
"""

from __future__ import annotations

from typing import Any

from stockkeeper.store.errors import is_unavailable


def log_round_failed(log: Any, event: str, exc: BaseException, **fields: Any) -> None:
    """Log ``exc``, which ended a round of a loop, as ``event`` with ``fields``."""
    if is_unavailable(exc):
        log.warning(event, unreachable=True, error=f"{type(exc).__name__}: {exc}", **fields)
    else:
        log.error(event, exc_info=exc, **fields)
