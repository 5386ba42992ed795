"""The estimate of Shopify's cost bucket: how long a call waits, shared by concurrent calls."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockkeeper.connectors.shopify_bucket import CostBucket, CostPacer, ThrottleStatus
from stockkeeper.connectors.shopify_wire import Cost, Throttle


def bucket(maximum: float = 100.0, available: float = 100.0, rate: float = 50.0) -> CostBucket:
    b = CostBucket()
    b.observe(ThrottleStatus(maximum, available, rate), now=0.0)
    return b


def test_unknown_bucket_never_waits_and_takes_nothing() -> None:
    b = CostBucket()
    assert not b.known
    assert b.reserve(500, now=0.0) == 0.0
    assert b.wait_for(500, now=0.0) == 0.0
    assert b.available(0.0) == math.inf


def test_a_call_within_the_bucket_goes_at_once_and_takes_its_cost() -> None:
    b = bucket(available=100)
    assert b.reserve(30, now=0.0) == 0.0
    assert b.available(0.0) == pytest.approx(70)


def test_a_call_beyond_what_is_left_waits_for_the_missing_points() -> None:
    b = bucket(available=20, rate=50)
    # 30 points missing at 50 points a second.
    assert b.reserve(50, now=0.0) == pytest.approx(0.6)


def test_concurrent_callers_queue_behind_each_other() -> None:
    b = bucket(available=0, rate=10)
    waits = [b.reserve(10, now=0.0) for _ in range(3)]
    assert waits == pytest.approx([1.0, 2.0, 3.0])


def test_the_bucket_refills_at_the_restore_rate_up_to_its_size() -> None:
    b = bucket(maximum=100, available=0, rate=50)
    assert b.available(1.0) == pytest.approx(50)
    assert b.available(10.0) == pytest.approx(100)
    assert b.reserve(100, now=2.0) == 0.0


def test_a_cost_above_the_bucket_waits_for_a_full_bucket_only() -> None:
    b = bucket(maximum=50, available=0, rate=10)
    assert b.reserve(80, now=0.0) == pytest.approx(5.0)


def test_observe_takes_shopifys_figures_less_our_calls_still_outstanding() -> None:
    b = bucket(maximum=1000, available=1000, rate=100)
    b.reserve(900, now=0.0)  # our estimate says 100 left
    # Shopify charged less than we reserved (a refund) and says 600; 200 points of our
    # calls are still in flight, and may not have been charged yet.
    b.observe(ThrottleStatus(1000, 600, 100), now=1.0, outstanding=200)
    assert b.available(1.0) == pytest.approx(400)
    assert b.available(2.0) == pytest.approx(500)


def test_observe_learns_a_resized_bucket() -> None:
    b = bucket(maximum=1000, available=1000, rate=100)
    b.observe(ThrottleStatus(40, 10, 20), now=0.0)
    assert b.maximum == 40
    assert b.wait_for(30, now=0.0) == pytest.approx(1.0)
    assert b.available(100.0) == pytest.approx(40)


def test_wait_for_takes_nothing_and_release_gives_a_reservation_back() -> None:
    b = bucket(available=10, rate=10)
    assert b.wait_for(30, now=0.0) == pytest.approx(2.0)
    assert b.wait_for(30, now=0.0) == pytest.approx(2.0)
    assert b.reserve(30, now=0.0) == pytest.approx(2.0)
    b.release(30)
    assert b.available(0.0) == pytest.approx(10)


def test_a_bucket_that_never_restores_waits_forever() -> None:
    b = bucket(available=0, rate=0)
    assert b.reserve(10, now=0.0) == math.inf


@given(
    costs=st.lists(st.floats(min_value=1, max_value=200), min_size=1, max_size=40),
    rate=st.floats(min_value=1, max_value=500),
    maximum=st.floats(min_value=200, max_value=2000),
)
def test_calls_sent_when_told_never_overdraw_the_real_bucket(
    costs: list[float], rate: float, maximum: float
) -> None:
    """Callers that all arrive at once and each send after its wait never take more
    than a true leaky bucket of the same size and rate holds at that moment."""
    b = bucket(maximum=maximum, available=maximum, rate=rate)
    sends = sorted((b.reserve(cost, now=0.0), cost) for cost in costs)
    level, at = maximum, 0.0
    for when, cost in sends:
        level = min(maximum, level + (when - at) * rate)
        at = when
        assert level - cost >= -1e-6 * maximum
        level -= cost


def _answer(available: float, maximum: float = 100.0, rate: float = 50.0) -> Cost:
    return Cost(
        throttleStatus=Throttle(
            maximumAvailable=maximum, currentlyAvailable=available, restoreRate=rate
        )
    )


async def test_an_answer_that_comes_back_after_a_later_calls_is_not_taken() -> None:
    """Two calls in flight; the later one's answer arrives first and is taken. The
    earlier one's answer, measured before the later call was charged, would put that
    call's cost back (it is no longer outstanding): it is older news, and ignored."""
    now = [0.0]
    pacer = CostPacer("shop", max_wait_s=10, metrics=None, clock=lambda: now[0])
    probe = await pacer.admit("lookup", 10)
    pacer.settle(probe, _answer(60))  # the bucket is known: 60 of 100 points
    first = await pacer.admit("lookup", 20)
    second = await pacer.admit("lookup", 20)
    pacer.settle(second, _answer(20))  # Shopify charged both: 60 - 20 - 20
    pacer.settle(first, _answer(40))  # measured before the second was charged
    # Never more than Shopify holds (20; the first answer would have made it 40). Less
    # is allowed: the second's reading already had the first charged, and the first
    # was still counted outstanding then; the refill corrects that within the window.
    assert pacer.bucket.available(now[0]) <= 20
    assert pacer.wait_for(30) >= 10 / 50
