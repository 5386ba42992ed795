"""A channel's ``Retry-After`` against the lease of a push: a short one is waited in the
call, one longer than a call may wait in all ends the call at once carrying the wait (the
propagator comes back no sooner), and an absurd one is read as a day at most. Against
the sandbox channels over real TCP."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from stockkeeper.config import MarketplaceConnectorConfig
from stockkeeper.connectors.amazon import AmazonChannel
from stockkeeper.connectors.channels import Push
from stockkeeper.connectors.http import (
    MAX_RETRY_AFTER_S,
    RETRY_AFTER_SLACK_S,
    CallRecord,
    ConnectorUnavailable,
    HttpCaller,
    parse_retry_after,
)
from stockkeeper.connectors.marketplace import MarketplaceClient
from tests.integration.test_channel_adapters import (
    Amazon,
    Shopify,
    amazon_config,
    put_faults,
    shopify_config,
)


async def test_a_retry_after_longer_than_a_call_may_wait_ends_the_call_carrying_it(
    amazon_channel: Amazon,
) -> None:
    state, server = amazon_channel
    records: list[CallRecord] = []
    # Defaults as deployed: 5 tries, backoff up to 10 s; the call may wait 110 s in all.
    cfg = amazon_config(server, max_attempts=5, backoff_max_ms=10_000)
    adapter = AmazonChannel(cfg, on_call=records.append)
    put_faults(server, throttle_rate=1.0, retry_after=3600)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectorUnavailable) as caught:
            # Without the bound this sleeps an hour inside the call, far past its lease.
            await asyncio.wait_for(adapter.push([Push("SLOW", 3, 1)]), 30)
    finally:
        await adapter.aclose()
        put_faults(server)
    assert time.monotonic() - started < 10
    assert adapter.http.wait_budget_s == 5 * 10 + RETRY_AFTER_SLACK_S
    assert caught.value.reason == "rate_limited"
    assert caught.value.retry_after == 3600
    assert caught.value.attempts == 1
    assert [r.outcome for r in records] == ["rate_limited"]
    assert state.levels() == {}


async def test_waits_that_would_add_up_past_the_budget_stop_before_the_one_too_many(
    shopify_channel: Shopify,
) -> None:
    _, server = shopify_channel
    records: list[CallRecord] = []
    cfg = shopify_config(server, max_attempts=5, backoff_max_ms=10)
    # A budget of 5 x 10 ms + 0.5 s: two waits of 0.2 s fit, a third does not.
    caller = HttpCaller(cfg, on_call=records.append, bounded_waits=True, wait_slack_s=0.5)
    put_faults(server, throttle_rate=1.0, retry_after=0.2)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectorUnavailable) as caught:
            await caller.call(
                "set_quantities",
                "POST",
                cfg.url,
                lambda r: r.json(),
                json={"query": "{ shop { id } }"},
            )
    finally:
        await caller.aclose()
        put_faults(server)
    assert time.monotonic() - started >= 0.4  # the two waits that fit were waited
    assert caught.value.retry_after == pytest.approx(0.2)
    assert caught.value.attempts == 3  # not 5: the third answer asks what the budget lacks
    assert [r.outcome for r in records] == ["rate_limited"] * 3


def test_the_budget_keeps_a_push_inside_its_lease() -> None:
    # The lease of a push (services/propagation) against the longest a call can take:
    # Shopify's wait for its bucket (60 s), every try timing out, and every wait.
    for attempts, timeout_ms, backoff_max_ms in [(5, 5000, 10_000), (1, 10, 1), (50, 600_000, 1)]:
        tries_s = attempts * (timeout_ms + backoff_max_ms) / 1000
        lease_s = max(60.0, 2 * (60.0 + tries_s))
        longest = (
            60.0
            + attempts * timeout_ms / 1000
            + (attempts * backoff_max_ms / 1000 + RETRY_AFTER_SLACK_S)
        )
        assert longest <= lease_s


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("1e300", MAX_RETRY_AFTER_S), ("99999999999", MAX_RETRY_AFTER_S), ("86400", 86400.0)],
)
def test_an_absurd_retry_after_is_read_as_a_day_at_most(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


@pytest.mark.parametrize("header", ["inf", "nan", "-inf", ""])
def test_a_retry_after_that_is_no_number_of_seconds_is_ignored(header: str) -> None:
    assert parse_retry_after(header) is None


async def test_only_the_channels_bound_their_waits() -> None:
    # A poll or a WMS sync would only come back sooner: they wait out a Retry-After.
    cfg = MarketplaceConnectorConfig.model_validate(
        {"id": "m", "type": "marketplace", "url": "http://127.0.0.1:9"}
    )
    client = MarketplaceClient(cfg)
    try:
        assert client.http.wait_budget_s == math.inf
    finally:
        await client.aclose()
