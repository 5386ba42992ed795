"""Carrier routing: late quotes dropped, lowest cost per reliability wins, ties settled
the same way whatever order the quotes come in, and a clear reason when none will do."""

from __future__ import annotations

import asyncio
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from stockkeeper.config import CarrierConfig, ConfigError, OrdersConfig, load_settings
from stockkeeper.connectors.carriers import ConfiguredCarriers
from stockkeeper.domain.carriers import (
    Carrier,
    NoCarrier,
    Quote,
    Shipment,
    choose,
    flat_quotes,
)

TODAY = date(2030, 1, 1)


def quote(cid: str, cost: str, reliability: str, days: int) -> Quote:
    return Quote(cid, Decimal(cost), Decimal(reliability), days, TODAY + timedelta(days=days))


def shipment(country: str = "DE") -> Shipment:
    return Shipment("o-1", country, "10115", (("SKU-1", 1),), TODAY)


def test_lowest_cost_per_reliability_wins_not_the_cheapest() -> None:
    cheap_but_lossy = quote("cheap", "5.00", "0.50", 3)  # 10.00 per delivered parcel
    dear_but_sure = quote("sure", "8.00", "1.00", 3)  # 8.00
    assert choose([cheap_but_lossy, dear_but_sure], None) == dear_but_sure


def test_quotes_that_would_miss_the_required_date_are_dropped() -> None:
    fast = quote("fast", "20.00", "0.99", 1)
    slow = quote("slow", "3.00", "0.99", 5)
    assert choose([fast, slow], TODAY + timedelta(days=2)) == fast
    # Arriving exactly on the required date is in time.
    assert choose([fast, slow], TODAY + timedelta(days=5)) == slow
    # No required date: every quote is viable.
    assert choose([fast, slow], None) == slow


def test_a_tie_on_score_goes_to_the_more_reliable() -> None:
    a = quote("a", "9.00", "0.90", 2)  # 10
    b = quote("b", "10.00", "1.00", 4)  # 10
    assert choose([a, b], None) == b
    assert choose([b, a], None) == b


def test_a_tie_on_score_and_reliability_goes_to_the_earlier_delivery_then_the_id() -> None:
    slow = quote("a-slow", "10.00", "0.95", 4)
    fast = quote("z-fast", "10.00", "0.95", 2)
    assert choose([slow, fast], None) == fast
    twin_x = quote("x", "10.00", "0.95", 2)
    twin_y = quote("y", "10.00", "0.95", 2)
    assert choose([twin_y, twin_x], None) == twin_x
    assert choose([twin_x, twin_y], None) == twin_x


def test_ties_are_exact_not_rounded() -> None:
    # 0.70 / 0.10 is exactly 7, as is 7 / 1; in floating point the first is
    # 6.999999999999999 and would win. Exactly, it is a tie: the more reliable wins.
    a = quote("a", "0.70", "0.10", 2)
    b = quote("b", "7", "1", 2)
    assert choose([a, b], None) == b


def test_no_quote_at_all_says_so() -> None:
    got = choose([], None)
    assert isinstance(got, NoCarrier)
    assert "no carrier ships" in got.reason


def test_every_quote_too_late_names_the_required_date_and_the_earliest() -> None:
    quotes = [quote("slow", "3.00", "0.9", 5), quote("slower", "1.00", "0.9", 9)]
    got = choose(quotes, TODAY + timedelta(days=2))
    assert isinstance(got, NoCarrier)
    assert "2030-01-03" in got.reason
    assert "slow on 2030-01-06" in got.reason


def test_a_required_date_already_today_leaves_only_same_day_carriers() -> None:
    same_day = quote("courier", "30.00", "0.99", 0)
    next_day = quote("express", "10.00", "0.99", 1)
    assert choose([same_day, next_day], TODAY) == same_day


@pytest.mark.parametrize(
    ("reliability", "cost", "days"),
    [("0", "1", 1), ("1.01", "1", 1), ("-0.5", "1", 1), ("0.5", "-1", 1), ("0.5", "1", -1)],
)
def test_impossible_quotes_are_refused(reliability: str, cost: str, days: int) -> None:
    with pytest.raises(ValueError, match="x"):
        Quote("x", Decimal(cost), Decimal(reliability), days, TODAY)


def test_flat_quotes_only_from_carriers_serving_the_country() -> None:
    everywhere = Carrier("post", Decimal("4.00"), Decimal("0.9"), 4)
    germany = Carrier("dhl", Decimal("6.00"), Decimal("0.98"), 1, frozenset({"DE", "AT"}))
    de = flat_quotes([everywhere, germany], shipment("DE"))
    assert [(q.carrier_id, q.estimated_delivery) for q in de] == [
        ("post", date(2030, 1, 5)),
        ("dhl", date(2030, 1, 2)),
    ]
    assert [q.carrier_id for q in flat_quotes([everywhere, germany], shipment("FR"))] == ["post"]


def test_configured_carriers_quote_from_the_config() -> None:
    cfg = [
        CarrierConfig(id="dhl", cost=Decimal("6.5"), reliability=Decimal("0.98"), transit_days=1),
        CarrierConfig(
            id="local", cost=Decimal(2), reliability=Decimal(1), transit_days=0, countries=["FR"]
        ),
    ]
    quotes = asyncio.run(ConfiguredCarriers(cfg).quotes(shipment("DE")))
    assert quotes == [quote("dhl", "6.5", "0.98", 1)]
    assert quotes[0].to_json() == {
        "id": "dhl",
        "cost": "6.5",
        "reliability": "0.98",
        "transit_days": 1,
        "estimated_delivery": "2030-01-02",
    }


costs = st.decimals(min_value=0, max_value=1000, places=2)
reliabilities = st.decimals(min_value=Decimal("0.01"), max_value=1, places=2)
quotes_st = st.lists(
    st.builds(
        lambda i, c, r, d: quote(f"c{i}", str(c), str(r), d),
        st.integers(0, 5),
        costs,
        reliabilities,
        st.integers(0, 10),
    ),
    max_size=8,
    unique_by=lambda q: q.carrier_id,
)


@given(quotes_st, st.one_of(st.none(), st.integers(0, 10)), st.randoms())
def test_the_choice_is_the_best_viable_quote_in_any_order(
    quotes: list[Quote], within: int | None, rnd: object
) -> None:
    required_by = None if within is None else TODAY + timedelta(days=within)
    got = choose(quotes, required_by)
    shuffled = list(quotes)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert choose(shuffled, required_by) == got
    viable = [q for q in quotes if required_by is None or q.estimated_delivery <= required_by]
    if not viable:
        assert isinstance(got, NoCarrier)
        return
    assert isinstance(got, Quote)
    assert got in viable
    for q in viable:
        assert got.cost * q.reliability <= q.cost * got.reliability  # exact: no division


# -- the orders section of the configuration ---------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "stockkeeper.example.yaml"


def test_the_commented_carriers_example_is_valid() -> None:
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    start = lines.index("  # carriers:                                          # example")
    block = ["carriers:"]
    for line in lines[start + 1 :]:
        if not line.startswith("  #  "):
            break
        block.append(line[3:].split(" #")[0].rstrip())
    cfg = OrdersConfig.model_validate(yaml.safe_load("\n".join(block)))
    assert [(c.id, c.cost, c.reliability) for c in cfg.carriers] == [
        ("dhl-express", Decimal("12.5"), Decimal("0.98")),
        ("postal", Decimal("4.2"), Decimal("0.9")),
    ]


@pytest.mark.parametrize(
    ("orders", "match"),
    [
        ({"carriers": [{"id": "a", "cost": 1, "reliability": 0, "transit_days": 1}]}, "reliab"),
        ({"carriers": [{"id": "a", "cost": 1, "reliability": 1.5, "transit_days": 1}]}, "reliab"),
        ({"carriers": [{"id": "a", "cost": -1, "reliability": 1, "transit_days": 1}]}, "cost"),
        ({"carriers": [{"id": "a", "cost": 1, "reliability": 1}]}, "transit_days"),
        (
            {"carriers": [{"id": "a", "cost": 1, "reliability": 1, "transit_days": 1}] * 2},
            "duplicate id a",
        ),
        (
            {
                "carriers": [
                    {
                        "id": "a",
                        "cost": 1,
                        "reliability": 1,
                        "transit_days": 1,
                        "countries": ["Germany"],
                    }
                ]
            },
            "countries",
        ),
        ({"payment_timeout_seconds": 8 * 86_400}, "max_ttl_seconds"),
        ({"consumers": 0}, "consumers"),
    ],
)
def test_a_bad_orders_section_stops_the_start_naming_the_key(
    tmp_path: Path, orders: dict[str, object], match: str
) -> None:
    path = tmp_path / "stockkeeper.yaml"
    path.write_text(yaml.safe_dump({"orders": orders}))
    with pytest.raises(ConfigError, match=match):
        load_settings(path, environ={})
