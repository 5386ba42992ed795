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
  charged them when it measured). Answers can come back out of order; one to a call
  sent before the call whose answer was taken last is older news and is not taken
  (:meth:`CostPacer.settle`): it would put back the cost of the later call, already
  charged and no longer outstanding.

:class:`CostBucket` is pure: the caller passes the clock reading (seconds, monotonic).
:class:`CostPacer` is the asyncio gate the adapter's calls pass through, built on it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from stockkeeper.connectors.http import ConnectorUnavailable
from stockkeeper.connectors.shopify_wire import Cost
from stockkeeper.observability.metrics import Metrics


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


@dataclass(frozen=True)
class Ticket:
    """One admitted call: the points it reserved, whether it is the probe, and its place
    in the order calls were admitted (``seq``)."""

    cost: float
    probing: bool
    seq: int = 0


class CostPacer:
    """The adapter's cost bucket estimate, shared by its concurrent calls.

    Until the first answer reports the bucket, calls go one at a time (a probe), so a
    burst of first pushes cannot overrun a bucket we know nothing about.
    """

    def __init__(
        self,
        connector: str,
        max_wait_s: float,
        metrics: Metrics | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = CostBucket()
        self._connector = connector
        self._max_wait_s = max_wait_s
        self._metrics = metrics
        self._clock = clock
        self._probe = asyncio.Lock()
        self._outstanding = 0.0
        self._admitted = 0  # calls admitted so far: the next ticket's seq
        self._observed = -1  # seq of the call whose answer the estimate is from

    async def admit(self, operation: str, cost: float) -> Ticket:
        """Wait until the bucket should hold ``cost`` points, and take them."""
        probing = False
        if not self.bucket.known:
            await self._probe.acquire()
            probing = not self.bucket.known
            if not probing:
                self._probe.release()
        wait = self.bucket.reserve(cost, self._clock())
        if wait > self._max_wait_s:
            self.bucket.release(cost)
            if probing:
                self._probe.release()
            raise ConnectorUnavailable(
                self._connector,
                operation,
                "rate_limited",
                f"Shopify's cost bucket needs {wait:.1f}s to hold {cost:.0f} points",
                retry_after=wait,
            )
        self._outstanding += cost
        seq, self._admitted = self._admitted, self._admitted + 1
        try:
            if wait > 0:
                if self._metrics is not None:
                    self._metrics.connector_rate_limit_wait.labels(
                        self._connector, "cost_bucket"
                    ).inc(wait)
                await asyncio.sleep(wait)
        except BaseException:
            self._outstanding -= cost
            self.bucket.release(cost)
            if probing:
                self._probe.release()
            raise
        return Ticket(cost, probing, seq)

    def wait_for(self, cost: float) -> float:
        """Seconds until the bucket should hold ``cost`` points (taking nothing)."""
        return self.bucket.wait_for(cost, self._clock())

    def settle(self, ticket: Ticket, cost: Cost | None) -> None:
        """The call of ``ticket`` is over; ``cost`` is what its answer reported, if any."""
        self._outstanding = max(0.0, self._outstanding - ticket.cost)
        status = cost.throttleStatus if cost is not None else None
        # An answer to a call admitted before the one last taken is older than it.
        if status is not None and ticket.seq > self._observed:
            self._observed = ticket.seq
            self.bucket.observe(
                ThrottleStatus(
                    status.maximumAvailable, status.currentlyAvailable, status.restoreRate
                ),
                self._clock(),
                self._outstanding,
            )
        if ticket.probing:
            self._probe.release()
