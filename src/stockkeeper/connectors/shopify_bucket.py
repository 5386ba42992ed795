"""Our estimate of a Shopify app's cost bucket, so calls wait instead of being throttled.

Shopify's Admin GraphQL API limits an app by *calculated query cost* with a leaky
bucket: a call needs its requested cost to be available, the bucket refills at
``restoreRate`` points a second up to ``maximumAvailable``, and every answer reports the
bucket as Shopify saw it (``extensions.cost.throttleStatus``). :class:`CostBucket` keeps
one estimate of that bucket per adapter, shared by all its calls in flight:

* :meth:`CostBucket.reserve` takes a call's expected cost and says how long to wait
  before sending it. The cost is taken even when the call has to wait, so concurrent
  callers queue up behind each other instead of all waking at the same instant;
* :meth:`CostBucket.observe` replaces the estimate with what Shopify reported, less the
  costs of our other calls that are reserved but not answered yet (Shopify may not have
  charged them when it measured).

Pure: the caller passes the clock reading (seconds, monotonic). No I/O, no await.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ThrottleStatus:
    """``extensions.cost.throttleStatus`` of one answer."""

    maximum_available: float
    currently_available: float
    restore_rate: float


class CostBucket:
    """The estimate of one app's cost bucket on one shop.

    Until the first answer reports the bucket, it is unknown (:attr:`known` is False) and
    the caller should send one call at a time to learn it.
    """

    def __init__(self) -> None:
        self.maximum: float | None = None
        self.restore_rate = 0.0
        self._available = 0.0
        self._stamp = 0.0

    @property
    def known(self) -> bool:
        return self.maximum is not None

    def available(self, now: float) -> float:
        """Points we expect to be available at ``now``; negative while callers that have
        reserved more than there is are still waiting for their turn."""
        if self.maximum is None:
            return math.inf
        restored = max(0.0, now - self._stamp) * self.restore_rate
        return min(self.maximum, self._available + restored)

    def reserve(self, cost: float, now: float) -> float:
        """Take ``cost`` points and return the seconds to wait before sending the call.

        A cost above the bucket's size is taken as the whole bucket: Shopify would never
        have more room than that, and the call is sent when the bucket is full. With the
        bucket unknown nothing is taken and there is no wait.
        """
        if self.maximum is None:
            return 0.0
        cost = min(max(0.0, cost), self.maximum)
        level = self.available(now)
        self._available, self._stamp = level - cost, now
        if level >= cost:
            return 0.0
        return self._seconds_for(cost - level)

    def release(self, cost: float) -> None:
        """Give back a reservation whose call was never sent."""
        if self.maximum is not None:
            self._available = min(self.maximum, self._available + max(0.0, cost))

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` points are available, taking nothing."""
        if self.maximum is None:
            return 0.0
        missing = min(max(0.0, cost), self.maximum) - self.available(now)
        return self._seconds_for(missing) if missing > 0 else 0.0

    def observe(self, status: ThrottleStatus, now: float, outstanding: float = 0.0) -> None:
        """Take the bucket as Shopify reported it. ``outstanding`` is the cost of our
        other calls reserved but not answered yet."""
        self.maximum = max(0.0, status.maximum_available)
        self.restore_rate = max(0.0, status.restore_rate)
        level = min(self.maximum, max(0.0, status.currently_available))
        self._available, self._stamp = level - max(0.0, outstanding), now

    def _seconds_for(self, points: float) -> float:
        if self.restore_rate <= 0:
            return math.inf
        return points / self.restore_rate
