import pytest

from stockkeeper.domain.backoff import Backoff
from stockkeeper.messaging.consumer import RetryPolicy


def test_doubles_from_the_base_up_to_the_cap() -> None:
    b = Backoff.from_ms(100, 1000)
    assert [b.delay(a) for a in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_retry_after_is_a_floor_even_with_jitter() -> None:
    b = Backoff(1.0, 30.0, jitter=1.0)
    assert b.delay(1, retry_after_s=5.0, rand=lambda: 0.999) == 5.0
    assert b.delay(1, retry_after_s=0.1, rand=lambda: 0.0) == 1.0


def test_full_jitter_stays_between_zero_and_the_ceiling() -> None:
    b = Backoff(0.002, 0.128, jitter=1.0)
    assert b.delay(3, rand=lambda: 0.0) == pytest.approx(0.008)
    assert b.delay(3, rand=lambda: 0.5) == pytest.approx(0.004)
    assert 0.0 <= b.delay(40) <= 0.128


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert Backoff(1.0, 30.0).delay(10**6) == 30.0


def test_total_is_the_sum_of_the_ceilings() -> None:
    assert Backoff(1.0, 4.0).total_s(4) == 1 + 2 + 4 + 4


@pytest.mark.parametrize(("base", "cap", "jitter"), [(0, 1, 0), (1, 0, 0), (1, 1, 1.5)])
def test_nonsense_is_refused(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap, jitter)


def test_the_consumers_retry_policy_is_the_plain_doubling() -> None:
    assert [RetryPolicy().delay_ms(a) for a in range(1, 8)] == [
        1000,
        2000,
        4000,
        8000,
        16_000,
        30_000,
        30_000,
    ]
    small = RetryPolicy(base_ms=50, max_ms=200)
    assert [small.delay_ms(a) for a in (0, 1, 2, 3, 4)] == [50, 50, 100, 200, 200]
