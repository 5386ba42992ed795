"""The ChannelAdapter port's contract, run against every adapter and its sandbox over
real TCP (Shopify, Amazon, the outbound webhook), then what is particular to each.

:class:`ChannelContract` holds the cases every channel passes (push, down, wrong
credentials, conformance to the port); :class:`ListingContract` adds those of channels
that keep listings they can report (unlisted SKUs, reading levels back). Each adapter
binds them once to its sandbox in a ``Test...`` subclass, next to its own cases.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, get_args

import httpx
import pytest

from stockkeeper.config import (
    AmazonChannelConfig,
    ChannelConfig,
    ConfigError,
    OutboundWebhookChannelConfig,
    Settings,
    ShopifyChannelConfig,
)
from stockkeeper.connectors.amazon import AmazonChannel
from stockkeeper.connectors.channel_registry import ADAPTERS, make_channel
from stockkeeper.connectors.channels import ChannelAdapter, Push, PushOutcome
from stockkeeper.connectors.http import CallRecord, ConnectorRejected, ConnectorUnavailable
from stockkeeper.connectors.outbound_webhook import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    OutboundWebhookChannel,
    SigningTransport,
    signature,
)
from stockkeeper.connectors.shopify import ShopifyChannel
from stockkeeper.observability.metrics import Metrics
from stockkeeper_sandbox.amazon import AmazonState
from stockkeeper_sandbox.amazon import create_app as create_amazon_app
from stockkeeper_sandbox.channel_book import ChannelBook
from stockkeeper_sandbox.channel_webhook import WebhookReceiverState
from stockkeeper_sandbox.channel_webhook import create_app as create_receiver_app
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from stockkeeper_sandbox.shopify import create_app as create_shopify_app

Sandbox = tuple[ChannelBook, SandboxServer]
Shopify = tuple[ShopifyState, SandboxServer]
Amazon = tuple[AmazonState, SandboxServer]
Receiver = tuple[WebhookReceiverState, SandboxServer]
LOCATION = "gid://shopify/Location/1"
FAST = {"timeout_ms": 2000, "max_attempts": 3, "backoff_base_ms": 5, "backoff_max_ms": 50}
RIGHT = "the-right-credential"


def shopify_config(server: SandboxServer, **overrides: Any) -> ShopifyChannelConfig:
    settings = {
        "id": "shopify-test",
        "type": "shopify",
        "url": graphql_url(server.url),
        "location_id": LOCATION,
        "batch_size": 50,
        "rate_limit_rps": 1000,
        **FAST,
    }
    return ShopifyChannelConfig.model_validate(settings | overrides)


def amazon_config(server: SandboxServer, **overrides: Any) -> AmazonChannelConfig:
    settings = {
        "id": "amazon-test",
        "type": "amazon",
        "url": server.url,
        "seller_id": "A1SELLER",
        "marketplace_ids": ["ATVPDKIKX0DER"],
        **FAST,
    }
    return AmazonChannelConfig.model_validate(settings | overrides)


def webhook_config(url: str, **overrides: Any) -> OutboundWebhookChannelConfig:
    settings = {
        "id": "hooks-test",
        "type": "outbound_webhook",
        "url": url,
        "secret_env": "HOOKS_SECRET",
        "batch_size": 100,
        "rate_limit_rps": 1000,
        **FAST,
    }
    return OutboundWebhookChannelConfig.model_validate(settings | overrides)


def put_faults(server: SandboxServer, **faults: Any) -> None:
    httpx.put(f"{server.url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def records() -> list[CallRecord]:
    return []


# -- the contract ------------------------------------------------------------------------


class ChannelContract:
    """What every channel adapter does against its sandbox. A subclass binds it: the
    ``sandbox`` fixture, :meth:`build`, :meth:`guarded`, and the class attributes."""

    # What the channel answers a call with the wrong credentials.
    refused_status: ClassVar[int]
    # Whether the adapter can read levels back (drift repair).
    can_read: ClassVar[bool]
    # One push batch that the channel takes.
    sample: ClassVar[list[Push]]

    @pytest.fixture
    def sandbox(self) -> Sandbox:
        raise NotImplementedError

    def config(self, server: SandboxServer, **overrides: Any) -> ChannelConfig:
        """The channel's connector config, pointed at ``server``."""
        raise NotImplementedError

    def credentials(
        self, state: ChannelBook, credential: str | None
    ) -> tuple[str | None, str | None]:
        """The token and secret the adapter is built with, for ``credential``."""
        return credential, None

    def build(
        self,
        state: ChannelBook,
        server: SandboxServer,
        *,
        credential: str | None = None,
        metrics: Metrics | None = None,
        records: list[CallRecord] | None = None,
        **overrides: Any,
    ) -> ChannelAdapter:
        """The adapter on ``server``, built by the registry; ``credential`` is its token
        (the webhook: its signing secret, by default the receiver's)."""
        token, secret = self.credentials(state, credential)
        return make_channel(
            self.config(server, **overrides),
            token=token,
            secret=secret,
            metrics=metrics,
            on_call=records.append if records is not None else None,
        )

    @contextmanager
    def guarded(self, credential: str) -> Iterator[Sandbox]:
        """A sandbox of its own that only takes calls made with ``credential``."""
        raise NotImplementedError

    def check_push(self, state: ChannelBook, outcomes: list[PushOutcome]) -> None:
        """What is particular to the channel after :attr:`sample` went through."""

    def check_refused(self, state: ChannelBook) -> None:
        """What is particular to the channel after it refused the wrong credentials."""

    @pytest.fixture
    async def adapter(
        self, sandbox: Sandbox, metrics: Metrics, records: list[CallRecord]
    ) -> AsyncIterator[Any]:
        state, server = sandbox
        adapter = self.build(state, server, metrics=metrics, records=records)
        yield adapter
        await adapter.aclose()

    def test_implements_every_method_of_the_port(self, adapter: ChannelAdapter) -> None:
        for name, member in vars(ChannelAdapter).items():
            if name.startswith("_"):
                continue
            if isinstance(member, property):
                assert isinstance(inspect.getattr_static(adapter, name), property), name
                assert isinstance(getattr(adapter, name), str if name == "id" else bool), name
            elif inspect.isfunction(member):
                own = getattr(type(adapter), name, None)
                assert own is not None, f"{type(adapter).__name__} has no {name}"
                assert inspect.iscoroutinefunction(own) == inspect.iscoroutinefunction(member)
                port = list(inspect.signature(member).parameters)
                assert list(inspect.signature(own).parameters) == port, name
        assert adapter.can_read is self.can_read

    async def test_push_sets_available(self, adapter: ChannelAdapter, sandbox: Sandbox) -> None:
        state, _ = sandbox
        outcomes = await adapter.push(self.sample)
        assert {o.sku: (o.status, o.quantity) for o in outcomes} == {
            p.sku: ("ok", p.quantity) for p in self.sample
        }
        for p in self.sample:
            assert state.level(p.sku) == p.quantity
        self.check_push(state, outcomes)

    async def test_down_is_unavailable(self, adapter: ChannelAdapter, sandbox: Sandbox) -> None:
        _, server = sandbox
        server.stop()
        with pytest.raises(ConnectorUnavailable) as caught:
            await adapter.push([Push("X", 1, 1)])
        assert caught.value.reason == "connect_error"

    async def test_wrong_credentials_are_refused(self) -> None:
        with self.guarded(RIGHT) as (state, server):
            wrong = self.build(state, server, credential="not-the-right-one")
            try:
                with pytest.raises(ConnectorRejected) as caught:
                    await wrong.push([Push("X", 1, 1)])
            finally:
                await wrong.aclose()
            assert caught.value.status == self.refused_status
            self.check_refused(state)
            right = self.build(state, server, credential=RIGHT)
            try:
                assert (await right.push([Push("X", 1, 1)]))[0].status == "ok"
            finally:
                await right.aclose()


class ListingContract(ChannelContract):
    """Channels that keep listings and can report them: SKUs they do not sell come
    back unlisted, and levels can be read back."""

    can_read = True

    def check_unlisted(self, state: ChannelBook) -> None:
        """What is particular to the channel after it answered for an unlisted SKU."""

    async def test_an_unlisted_sku_is_unlisted(
        self, adapter: ChannelAdapter, sandbox: Sandbox
    ) -> None:
        state, _ = sandbox
        state.unlist_skus(["NOT-SOLD"])
        outcomes = await adapter.push([Push("NOT-SOLD", 1, 1), Push("SOLD", 3, 1)])
        assert {o.sku: o.status for o in outcomes} == {"NOT-SOLD": "unlisted", "SOLD": "ok"}
        assert state.level("SOLD") == 3
        self.check_unlisted(state)

    async def test_read_back(self, adapter: ChannelAdapter, sandbox: Sandbox) -> None:
        state, _ = sandbox
        outcomes = await adapter.push([Push("R1", 4, 1), Push("R2", 0, 1)])
        state.sell("R1", 1)
        state.unlist_skus(["R-NONE"])
        refs = {o.sku: o.channel_ref for o in outcomes if o.channel_ref}
        assert await adapter.read(["R1", "R2", "R-NONE"], refs) == {
            "R1": 3,
            "R2": 0,
            "R-NONE": None,
        }
        assert adapter.can_read


# -- Shopify -----------------------------------------------------------------------------


class TestShopify(ListingContract):
    kind = "shopify"
    refused_status = 401
    sample: ClassVar[list[Push]] = [Push("TEE-1", 7, version=3)]

    @pytest.fixture
    def sandbox(self, shopify_channel: Shopify) -> Sandbox:
        return shopify_channel

    def config(self, server: SandboxServer, **overrides: Any) -> ChannelConfig:
        return shopify_config(server, **overrides)

    @contextmanager
    def guarded(self, credential: str) -> Iterator[Sandbox]:
        state = ShopifyState()
        with SandboxServer(create_shopify_app(state, token=credential)) as server:
            yield state, server

    def check_push(self, state: ChannelBook, outcomes: list[PushOutcome]) -> None:
        assert isinstance(state, ShopifyState)
        [outcome] = outcomes
        assert outcome.channel_ref == state.gid("TEE-1")
        [change] = state.history("TEE-1")
        assert (change.quantity, change.source) == (7, "push")
        assert change.ref is not None
        assert change.ref.startswith("gid://stockkeeper/ChannelPush/")

    async def test_skus_with_quotes_and_backslashes_are_found(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        odd = ['TEE "XL"', "PATH\\TO", "A OR sku:B"]
        outcomes = await adapter.push([Push(sku, 1, 1) for sku in odd])
        assert [o.status for o in outcomes] == ["ok"] * 3
        assert state.levels() == dict.fromkeys(odd, 1)

    async def test_batch_is_one_lookup_and_one_mutation(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        items = [Push(f"SKU-{i}", i, version=1) for i in range(20)]
        outcomes = await adapter.push(items)
        assert [o.status for o in outcomes] == ["ok"] * 20
        assert state.levels() == {f"SKU-{i}": i for i in range(20)}
        counters = state.counters()
        assert (counters["lookups"], counters["mutations"]) == (1, 1)
        # With the gids known, the next push needs no lookup.
        refs = {o.sku: o.channel_ref for o in outcomes}
        again = [
            Push(i.sku, i.quantity + 1, 2, previous=i.quantity, channel_ref=refs[i.sku])
            for i in items
        ]
        assert [o.status for o in await adapter.push(again)] == ["ok"] * 20
        assert state.counters()["lookups"] == 1
        assert state.level("SKU-19") == 20

    async def test_unlisted_and_unstocked_skus_are_set_aside(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        state.unlist_skus(["GONE"])
        state.list_skus(["AWAY"])
        state.unstock(["AWAY"])
        outcomes = await adapter.push([Push("GONE", 1, 1), Push("AWAY", 2, 1), Push("HERE", 3, 1)])
        assert [o.status for o in outcomes] == ["unlisted", "unlisted", "ok"]
        assert outcomes[1].error is not None
        assert "ITEM_NOT_STOCKED_AT_LOCATION" in outcomes[1].error
        assert state.levels() == {"AWAY": 0, "HERE": 3}

    async def test_negative_quantity_is_rejected_and_the_rest_applied(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        outcomes = await adapter.push([Push("BAD", -1, 1), Push("GOOD", 4, 1)])
        assert [o.status for o in outcomes] == ["rejected", "ok"]
        assert outcomes[0].error is not None
        assert "INVALID_QUANTITY_NEGATIVE" in outcomes[0].error
        assert state.level("GOOD") == 4

    async def test_stale_change_from_quantity_is_read_again_and_set(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        [first] = await adapter.push(
            [
                Push("MUG", 10, 1),
            ]
        )
        state.sell("MUG", 3)  # Shopify sold three: it shows 7, we believe 10
        [outcome] = await adapter.push(
            [Push("MUG", 12, 2, previous=10, channel_ref=first.channel_ref)]
        )
        assert outcome.status == "ok"
        assert state.level("MUG") == 12
        assert [(c.quantity, c.source) for c in state.history("MUG")] == [
            (10, "push"),
            (7, "channel"),
            (12, "push"),
        ]
        assert state.counters()["stale"] == 1

    async def test_stale_but_already_showing_our_figure_needs_no_second_set(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        state.set_level("CAP", 5)
        [outcome] = await adapter.push([Push("CAP", 5, 1, previous=9)])
        assert (outcome.status, outcome.quantity) == ("ok", 5)
        assert state.pushed("CAP") == []

    async def test_cached_gid_of_a_deleted_item_is_looked_up_again(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        [first] = await adapter.push([Push("HAT", 1, 1)])
        state.unlist_skus(["HAT"])
        state.list_skus(["HAT"], quantity=1)  # re-created: a new inventory item
        [outcome] = await adapter.push(
            [Push("HAT", 2, 2, previous=1, channel_ref=first.channel_ref)]
        )
        assert outcome.status == "ok"
        assert outcome.channel_ref == state.gid("HAT") != first.channel_ref
        assert state.level("HAT") == 2

    async def test_tiny_bucket_gets_every_value_through_without_a_throttle(
        self, adapter: ShopifyChannel, shopify_channel: Shopify, metrics: Metrics
    ) -> None:
        state, _ = shopify_channel
        # 60 points, 300 a second: each push of 5 SKUs costs 12 (lookup) + 10 (mutation).
        state.configure_bucket(60, 300)
        batches = [[Push(f"B{b}-{i}", b * 10 + i, 1) for i in range(5)] for b in range(12)]
        results = await asyncio.gather(*(adapter.push(batch) for batch in batches))
        assert all(o.status == "ok" for outcomes in results for o in outcomes)
        assert state.levels() == {p.sku: p.quantity for batch in batches for p in batch}
        assert state.counters().get("throttled", 0) == 0
        assert state.low_water() < 20, "the pushes should have drained the bucket"
        waited = metrics.connector_rate_limit_wait.labels(
            "shopify-test", "cost_bucket"
        )._value.get()
        assert waited > 0, "the pushes should have waited for the bucket"

    async def test_calls_costing_more_than_the_bucket_are_split(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        state.configure_bucket(30, 1000)  # a lookup of 50 SKUs costs 52
        items = [Push(f"S-{i}", i, 1) for i in range(50)]
        outcomes = await adapter.push(items)
        assert [o.status for o in outcomes] == ["ok"] * 50
        refs = {o.sku: o.channel_ref or "" for o in outcomes}
        assert await adapter.read([i.sku for i in items], refs) == {
            i.sku: i.quantity for i in items
        }
        assert state.counters()["throttled"] == 1  # the first lookup, before the bucket was known

    async def test_throttled_waits_for_the_points_it_lacked_and_goes_again(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        [first] = await adapter.push([Push("T", 1, 1)])
        state.configure_bucket(20, 50)
        state.charge(15)  # another app of the shop takes most of it behind our back
        again = Push("T", 2, 2, previous=1, channel_ref=first.channel_ref)
        assert (await adapter.push([again]))[0].status == "ok"
        assert state.counters()["throttled"] == 1
        assert state.level("T") == 2

    async def test_throttled_past_our_patience_is_unavailable_with_a_wait(
        self, adapter: ShopifyChannel, shopify_channel: Shopify
    ) -> None:
        state, _ = shopify_channel
        [first] = await adapter.push([Push("T", 1, 1)])
        state.configure_bucket(20, 0.05)  # 10 points missing: 200 s to wait
        state.charge(15)
        started = time.monotonic()
        with pytest.raises(ConnectorUnavailable) as caught:
            await adapter.push([Push("T", 2, 2, previous=1, channel_ref=first.channel_ref)])
        assert time.monotonic() - started < 5, "it gave up without waiting"
        assert caught.value.reason == "rate_limited"
        assert caught.value.retry_after is not None
        assert caught.value.retry_after > 60
        # A bucket smaller than one mutation can never take it.
        state.configure_bucket(5, 1000)
        with pytest.raises(ConnectorUnavailable) as caught:
            await adapter.push([Push("T", 2, 2, previous=1, channel_ref=first.channel_ref)])
        assert caught.value.reason == "rate_limited"
        assert state.level("T") == 1


# -- Amazon ------------------------------------------------------------------------------


class TestAmazon(ListingContract):
    kind = "amazon"
    refused_status = 403
    sample: ClassVar[list[Push]] = [Push("AMZ/1 blue", 9, 1)]

    @pytest.fixture
    def sandbox(self, amazon_channel: Amazon) -> Sandbox:
        return amazon_channel

    def config(self, server: SandboxServer, **overrides: Any) -> ChannelConfig:
        return amazon_config(server, **overrides)

    @contextmanager
    def guarded(self, credential: str) -> Iterator[Sandbox]:
        state = AmazonState()
        with SandboxServer(create_amazon_app(state, token=credential)) as server:
            yield state, server

    def check_push(self, state: ChannelBook, outcomes: list[PushOutcome]) -> None:
        [change] = state.history("AMZ/1 blue")
        assert change.source == "push"
        assert change.ref

    def check_unlisted(self, state: ChannelBook) -> None:
        assert state.counters()["not_found"] == 1

    async def test_invalid_submission_is_rejected_with_its_issues(
        self,
        amazon_channel: Amazon,
    ) -> None:
        state, server = amazon_channel
        adapter = AmazonChannel(amazon_config(server, fulfillment_channel_code="AMAZON_NA"))
        try:
            [outcome] = await adapter.push([Push("FBA-1", 3, 1)])
        finally:
            await adapter.aclose()
        assert outcome.status == "rejected"
        assert outcome.error is not None
        assert "FBA_QUANTITY" in outcome.error
        assert state.level("FBA-1") == 0

    async def test_thirty_two_concurrent_pushes_are_sent_within_amazons_bucket(
        self, amazon_channel: Amazon
    ) -> None:
        """patchListingsItem allows 5 a second, burst 5: the times we send at fit that
        bucket, whatever the sandbox's thread makes of them on a busy machine (a thread
        starved for a second answers a 429 to calls we sent paced; the pacing is ours to
        test, the sandbox's scheduling is not; D-488)."""
        state, server = amazon_channel
        sent: list[float] = []

        class Stamped(httpx.AsyncHTTPTransport):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                if request.method == "PATCH":
                    sent.append(time.monotonic())
                return await super().handle_async_request(request)

        adapter = AmazonChannel(amazon_config(server), transport=Stamped())
        items = [Push(f"C-{i}", i, 1) for i in range(32)]
        try:
            results = await asyncio.gather(*(adapter.push([item]) for item in items))
        finally:
            await adapter.aclose()
        assert all(outcome.status == "ok" for [outcome] in results)
        assert state.levels() == {i.sku: i.quantity for i in items}
        firsts = sent[:32]  # a retry after a 429 the sandbox gave late comes after
        assert len(firsts) == 32
        # Every run of sends fits a bucket of 5 refilled at 5 a second.
        for i in range(32):
            for j in range(i, 32):
                assert j - i + 1 <= 5 + 5 * (firsts[j] - firsts[i]) + 1e-6, (i, j, firsts)

    async def test_429_is_retried_after_its_retry_after(
        self, adapter: AmazonChannel, amazon_channel: Amazon, records: list[CallRecord]
    ) -> None:
        state, server = amazon_channel
        state.limit_rates(patch_rate=2, patch_burst=1, get_rate=5, get_burst=10)
        # Someone else (another app of the seller) takes the only token.
        httpx.patch(
            f"{server.url}/listings/2021-08-01/items/A1SELLER/OTHER",
            params={"marketplaceIds": "ATVPDKIKX0DER"},
            json={
                "productType": "PRODUCT",
                "patches": [{"op": "replace", "path": "/x", "value": []}],
            },
            timeout=5,
        ).raise_for_status()
        started = time.monotonic()
        [outcome] = await adapter.push([Push("WAIT", 2, 1)])
        elapsed = time.monotonic() - started
        assert outcome.status == "ok"
        assert [r.outcome for r in records] == ["rate_limited", "ok"]
        retry_after = records[0].retry_after
        assert retry_after is not None
        assert 0.3 <= retry_after <= 0.5
        assert elapsed >= retry_after

    async def test_failing_or_down_is_unavailable(
        self, adapter: AmazonChannel, amazon_channel: Amazon
    ) -> None:
        _, server = amazon_channel
        put_faults(server, error_rate=1.0, error_status=503)
        with pytest.raises(ConnectorUnavailable) as caught:
            await adapter.push([Push("X", 1, 1)])
        assert (caught.value.reason, caught.value.status) == ("server_error", 503)
        server.stop()
        with pytest.raises(ConnectorUnavailable) as caught:
            await adapter.read(["X"], {})
        assert caught.value.reason == "connect_error"

    async def test_hanging_is_unavailable_after_its_timeouts(self, amazon_channel: Amazon) -> None:
        _, server = amazon_channel
        put_faults(server, hang=True)
        adapter = AmazonChannel(amazon_config(server, timeout_ms=100, max_attempts=2))
        try:
            with pytest.raises(ConnectorUnavailable) as caught:
                await adapter.push([Push("X", 1, 1)])
        finally:
            await adapter.aclose()
            put_faults(server)
        assert (caught.value.reason, caught.value.attempts) == ("timeout", 2)


# -- outbound webhook --------------------------------------------------------------------


class TestOutboundWebhook(ChannelContract):
    kind = "outbound_webhook"
    refused_status = 401
    can_read = False
    sample: ClassVar[list[Push]] = [Push("W-1", 5, 11), Push("W-2", 0, 4)]

    @pytest.fixture
    def sandbox(self, webhook_channel: Receiver) -> Sandbox:
        return webhook_channel

    def config(self, server: SandboxServer, **overrides: Any) -> ChannelConfig:
        return webhook_config(f"{server.url}/hooks/levels", **overrides)

    def credentials(
        self, state: ChannelBook, credential: str | None
    ) -> tuple[str | None, str | None]:
        assert isinstance(state, WebhookReceiverState)
        return None, credential if credential is not None else state.secret.decode()

    @contextmanager
    def guarded(self, credential: str) -> Iterator[Sandbox]:
        state = WebhookReceiverState(credential)
        with SandboxServer(create_receiver_app(state)) as server:
            yield state, server

    def check_push(self, state: ChannelBook, outcomes: list[PushOutcome]) -> None:
        assert isinstance(state, WebhookReceiverState)
        assert [(o.status, o.quantity) for o in outcomes] == [("ok", 5), ("ok", 0)]
        assert state.levels() == {"W-1": 5, "W-2": 0}
        assert (state.version("W-1"), state.version("W-2")) == (11, 4)
        [delivery] = state.deliveries()
        assert [c.ref for c in state.history()] == [delivery, delivery]
        assert state.counters() == {"deliveries": 1}

    def check_refused(self, state: ChannelBook) -> None:
        assert state.levels() == {}
        assert state.counters() == {"unauthorized": 1}

    async def test_receiver_refuses_replays_and_applies_a_delivery_once(
        self,
        webhook_channel: Receiver,
    ) -> None:
        state, server = webhook_channel
        body = b'{"levels":[{"sku":"R","available":3,"version":2}]}'

        def send(timestamp: int, delivery: str) -> httpx.Response:
            headers = {
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: signature(state.secret, body, timestamp),
                DELIVERY_HEADER: delivery,
                "Content-Type": "application/json",
            }
            return httpx.post(f"{server.url}/levels", content=body, headers=headers, timeout=5)

        now = int(time.time())
        assert send(now - 3600, "d-1").status_code == 401  # signed, but an hour old
        assert send(now, "d-1").json() == {"status": "applied"}
        assert send(now, "d-1").json() == {"status": "duplicate"}
        assert state.pushed("R") == [3]

    async def test_older_version_does_not_overwrite_a_newer_one(
        self,
        webhook_channel: Receiver,
    ) -> None:
        state, server = webhook_channel
        adapter = OutboundWebhookChannel(
            webhook_config(f"{server.url}/hooks/levels"), secret=state.secret.decode()
        )
        try:
            await adapter.push([Push("V", 8, 5)])
            await adapter.push([Push("V", 9, 4)])
        finally:
            await adapter.aclose()
        assert (state.level("V"), state.version("V")) == (8, 5)
        assert state.pushed("V") == [8, 9]

    async def test_retries_keep_the_delivery_id_and_sign_each_try_afresh(self) -> None:
        seen: list[httpx.Request] = []

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(503 if len(seen) == 1 else 204)

        cfg = webhook_config("http://127.0.0.1:9/hooks")  # answered by the MockTransport
        adapter = OutboundWebhookChannel(
            cfg, secret="s3cret", transport=httpx.MockTransport(answer)
        )
        try:
            await adapter.push([Push("S", 1, 1)])
        finally:
            await adapter.aclose()
        first, second = seen
        assert first.headers[DELIVERY_HEADER] == second.headers[DELIVERY_HEADER]
        for request in seen:
            stamp = int(request.headers[TIMESTAMP_HEADER])
            assert abs(stamp - time.time()) < 60
            assert request.headers[SIGNATURE_HEADER] == signature(b"s3cret", request.content, stamp)

    def test_signing_transport_stamps_each_request_with_its_own_clock_reading(self) -> None:
        stamps = iter([1_700_000_000.0, 1_700_000_007.0])
        transport = SigningTransport(
            b"k", httpx.MockTransport(lambda r: httpx.Response(200)), clock=lambda: next(stamps)
        )

        async def send_twice() -> list[str]:
            async with httpx.AsyncClient(transport=transport) as client:
                sent = [await client.post("http://x/", content=b"{}") for _ in range(2)]
            return [r.request.headers[TIMESTAMP_HEADER] for r in sent]

        assert asyncio.run(send_twice()) == ["1700000000", "1700000007"]


# -- the registry ------------------------------------------------------------------------


def test_every_channel_type_has_an_adapter_bound_to_the_contract() -> None:
    types = {get_args(c.model_fields["type"].annotation)[0] for c in ChannelConfig.__subclasses__()}
    assert set(ADAPTERS) == types
    assert {b.kind for b in (TestShopify, TestAmazon, TestOutboundWebhook)} == types


def test_make_channel_builds_the_adapter_of_each_type() -> None:
    settings = Settings.model_validate(
        {
            "connectors": [
                {
                    "id": "s",
                    "type": "shopify",
                    "url": "http://127.0.0.1:1/admin/api/2026-04/graphql.json",
                    "location_id": LOCATION,
                },
                {
                    "id": "a",
                    "type": "amazon",
                    "url": "http://127.0.0.1:1",
                    "seller_id": "A1",
                    "marketplace_ids": ["ATVPDKIKX0DER"],
                },
                {
                    "id": "w",
                    "type": "outbound_webhook",
                    "url": "http://127.0.0.1:1",
                    "secret_env": "W",
                },
            ]
        }
    )
    shopify_cfg, amazon_cfg, webhook_cfg = settings.connectors_of(ChannelConfig)
    assert isinstance(make_channel(shopify_cfg, token="t"), ShopifyChannel)
    assert isinstance(make_channel(amazon_cfg, token=None), AmazonChannel)
    assert isinstance(make_channel(webhook_cfg, token=None, secret="s"), OutboundWebhookChannel)
    with pytest.raises(ConfigError, match="environment variable W"):
        make_channel(webhook_cfg, token=None)
