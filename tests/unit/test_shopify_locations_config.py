"""Shopify locations in the config (D-280): ``location_id`` for a single-location shop as
before, or ``locations`` mapping our locations to Shopify locations, every mistake in
the mapping a config error at start naming it; and the per-location figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from stockkeeper.config import ConfigError, ShopifyChannelConfig, load_settings
from stockkeeper.domain.availability import AvailabilityRule, location_figures

URL = "https://x.myshopify.com/admin/api/2026-04/graphql.json"
L1, L2 = "gid://shopify/Location/1", "gid://shopify/Location/2"


def load(tmp_path: Path, **shop: Any) -> ShopifyChannelConfig:
    doc = {"connectors": [{"id": "shop", "type": "shopify", "url": URL, **shop}]}
    path = tmp_path / "stockkeeper.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    (cfg,) = load_settings(path, environ={}).connectors_of(ShopifyChannelConfig)
    return cfg


def test_location_id_alone_is_todays_single_location_shop(tmp_path: Path) -> None:
    cfg = load(tmp_path, location_id=L1)
    assert cfg.location_map() is None
    assert cfg.primary_location == L1


def test_locations_map_our_locations_to_shopify_locations(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        locations=[
            {"location_id": L1, "our_locations": ["berlin", "potsdam"]},
            {"location_id": L2, "our_locations": ["paris"]},
        ],
    )
    assert cfg.location_map() == (
        (L1, frozenset({"berlin", "potsdam"})),
        (L2, frozenset({"paris"})),
    )
    star = load(tmp_path, locations=[{"location_id": L2, "our_locations": ["*"]}])
    assert star.location_map() == ((L2, None),)


@pytest.mark.parametrize(
    ("shop", "says"),
    [
        ({}, "exactly one of location_id or locations"),
        (
            {"location_id": L1, "locations": [{"location_id": L2, "our_locations": ["a"]}]},
            "exactly one of location_id or locations",
        ),
        (
            {
                "locations": [
                    {"location_id": L1, "our_locations": ["a"]},
                    {"location_id": L1, "our_locations": ["b"]},
                ]
            },
            f"Shopify location mapped twice: {L1}",
        ),
        (
            {
                "locations": [
                    {"location_id": L1, "our_locations": ["berlin"]},
                    {"location_id": L2, "our_locations": ["berlin", "paris"]},
                ]
            },
            "our location mapped to two Shopify locations: berlin",
        ),
        (
            {"locations": [{"location_id": L1, "our_locations": ["*", "berlin"]}]},
            r'"\*" \(all our locations\) must be the only location mapped',
        ),
        (
            {
                "rules": {"locations": ["berlin"]},
                "locations": [{"location_id": L1, "our_locations": ["berlin", "lisbon"]}],
            },
            "lisbon not among the locations that feed the channel",
        ),
        ({"locations": [{"location_id": "123", "our_locations": ["a"]}]}, "location_id"),
        ({"locations": [{"location_id": L1, "our_locations": []}]}, "our_locations"),
        ({"locations": []}, "locations"),
    ],
)
def test_a_wrong_mapping_is_a_config_error_at_start(
    tmp_path: Path, shop: dict[str, Any], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        load(tmp_path, **shop)


def test_each_location_gets_the_rule_applied_to_what_feeds_it() -> None:
    rule = AvailabilityRule(buffer=1, cap=10)
    mapping = ((L1, frozenset({"berlin"})), (L2, frozenset({"paris", "lyon"})))
    held = {"berlin": 5, "paris": 20, "lyon": 3, "oslo": 100}
    assert location_figures(rule, mapping, held) == {L1: 4, L2: 9}
    # The channel's own locations still count: lyon does not feed it.
    fed = AvailabilityRule(locations=frozenset({"berlin", "paris"}))
    assert location_figures(fed, mapping, held) == {L1: 5, L2: 20}
    assert location_figures(fed, ((L1, None),), held) == {L1: 25}


@given(
    held=st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.integers(-5, 50)),
    buffer=st.integers(0, 10),
    cap=st.none() | st.integers(0, 40),
    share=st.integers(0, 100),
)
def test_location_figures_never_exceed_what_feeds_them(
    held: dict[str, int], buffer: int, cap: int | None, share: int
) -> None:
    rule = AvailabilityRule(buffer=buffer, cap=cap, share_percent=share)
    mapping = ((L1, frozenset({"a", "b"})), (L2, frozenset({"c"})))
    figures = location_figures(rule, mapping, held)
    for gid, ours in mapping:
        assert 0 <= figures[gid] <= sum(max(0, held.get(o, 0)) for o in ours)
        assert cap is None or figures[gid] <= cap
