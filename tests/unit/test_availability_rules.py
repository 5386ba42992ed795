"""The per-channel availability formula: max(0, min(cap, floor(share x fed)) - buffer)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockkeeper.domain.availability import AvailabilityRule, RuleOverride, channel_figure

LOCATIONS = ["berlin", "paris", "leeds"]

levels = st.dictionaries(st.sampled_from(LOCATIONS), st.integers(-50, 10_000))
rules = st.builds(
    AvailabilityRule,
    locations=st.none() | st.frozensets(st.sampled_from(LOCATIONS)),
    buffer=st.integers(0, 500),
    cap=st.none() | st.integers(0, 5_000),
    share_percent=st.integers(0, 100),
)


def fed(rule: AvailabilityRule, by_location: dict[str, int]) -> int:
    return sum(
        max(0, q)
        for loc, q in by_location.items()
        if rule.locations is None or loc in rule.locations
    )


@given(rules, levels)
def test_never_negative_never_above_the_cap_nor_what_the_locations_hold(
    rule: AvailabilityRule, by_location: dict[str, int]
) -> None:
    figure = channel_figure(rule, by_location)
    assert figure >= 0
    if rule.cap is not None:
        assert figure <= rule.cap
    assert figure <= fed(rule, by_location)
    assert figure <= fed(rule, by_location) * rule.share_percent // 100


@given(levels)
def test_the_default_rule_shows_everything_available(by_location: dict[str, int]) -> None:
    assert channel_figure(AvailabilityRule(), by_location) == sum(
        max(0, q) for q in by_location.values()
    )


def test_the_worked_example_of_the_docs() -> None:
    # docs/channels.md: berlin 37 and paris 20 feed the channel, leeds 100 does not;
    # 57 x 50 % = 28.5, floored 28; capped at 25; less a buffer of 2: 23.
    rule = AvailabilityRule(frozenset({"berlin", "paris"}), buffer=2, cap=25, share_percent=50)
    assert channel_figure(rule, {"berlin": 37, "paris": 20, "leeds": 100}) == 23
    # The buffer comes off after the cap: a cap of 10 shows 8, not 10.
    assert channel_figure(AvailabilityRule(buffer=2, cap=10), {"berlin": 37}) == 8
    # The share is floored: 1 unit at 50 % shows nothing.
    assert channel_figure(AvailabilityRule(share_percent=50), {"berlin": 1}) == 0
    # A buffer larger than the stock shows 0, never a negative figure.
    assert channel_figure(AvailabilityRule(buffer=5), {"berlin": 3}) == 0


def test_a_sku_override_replaces_only_what_it_sets() -> None:
    rule = AvailabilityRule(frozenset({"berlin"}), buffer=2, cap=25, share_percent=50)
    assert rule.overridden(RuleOverride(buffer=0)) == AvailabilityRule(
        frozenset({"berlin"}), buffer=0, cap=25, share_percent=50
    )
    assert rule.overridden(RuleOverride(clear_cap=True)).cap is None
    assert rule.overridden(RuleOverride(locations=frozenset())).locations == frozenset()
    assert rule.overridden(None) is rule


@pytest.mark.parametrize(
    "bad", [{"buffer": -1}, {"cap": -1}, {"share_percent": 101}, {"share_percent": -1}]
)
def test_a_rule_out_of_range_is_refused(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must"):
        AvailabilityRule(**bad)  # type: ignore[arg-type]
