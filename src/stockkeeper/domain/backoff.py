"""The one retry policy: how long to wait after a failed attempt.

Every retry in stockkeeper (consumer redelivery, dispatcher and propagator outages,
channel pushes, WMS outbound sends, HTTP calls to outside systems, optimistic write
conflicts) asks a :class:`Backoff` for its delay, so a question like "how long does a
failed push wait?" has one answer. Pure: the random source is a parameter.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: ``base_s`` after the first failure, doubling, capped at
    ``cap_s``; never sooner than a ``Retry-After`` the other side gave.

    ``jitter`` is the share of each delay that is drawn at random: 0 gives the plain
    doubling (deterministic, what tests and redelivery windows are derived from), 1 gives
    "full jitter" (uniform between 0 and the delay), which spreads hot-spot retries out.
    A ``Retry-After`` floor is applied after jitter, so it is always honoured.
    """

    base_s: float
    cap_s: float
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.cap_s <= 0:
            raise ValueError("backoff base and cap must be positive")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be between 0 and 1")

    @classmethod
    def from_ms(cls, base_ms: float, cap_ms: float, jitter: float = 0.0) -> Backoff:
        return cls(base_ms / 1000, max(base_ms, cap_ms) / 1000, jitter)

    def ceiling(self, attempt: int) -> float:
        """The delay after failed attempt ``attempt`` (1-based) before any jitter."""
        exponent = min(max(0, attempt - 1), 62)  # 2**62 × any base is past every cap
        return float(min(self.cap_s, self.base_s * 2**exponent))

    def delay(
        self,
        attempt: int,
        retry_after_s: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        top = self.ceiling(attempt)
        wait = top - self.jitter * top * rand() if self.jitter else top
        return max(wait, retry_after_s or 0.0)

    def delay_ms(self, attempt: int, retry_after_s: float | None = None) -> int:
        return round(self.delay(attempt, retry_after_s) * 1000)

    def total_s(self, attempts: int) -> float:
        """The longest time ``attempts`` failed attempts can spend waiting in all (no
        jitter shortens it): what a retention window or a lease is derived from."""
        return sum(self.ceiling(a) for a in range(1, attempts + 1))
