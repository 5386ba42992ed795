"""Amazon as it really is: Login with Amazon tokens, a missing listing as
patchListingsItem reports it, ``merge`` keeping the seller's availability data, and
every request the adapter sends checked against Amazon's own Listings Items model
(``../shared/specs/amazon``) at a recording server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft4Validator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockkeeper.bootstrap import Container, build, channel_adapter
from stockkeeper.config import AmazonChannelConfig, ChannelConfig, Settings
from stockkeeper.connectors.amazon import AmazonChannel
from stockkeeper.connectors.channels import Push
from stockkeeper.connectors.lwa import CredentialsRefused, LwaCredentials
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.amazon import AmazonState
from stockkeeper_sandbox.amazon import create_app as create_amazon_app
from stockkeeper_sandbox.server import SandboxServer
from tests.conftest import FakeClock
from tests.integration.test_propagation import sync_all

SPECS = Path(__file__).resolve().parents[1] / "specs" / "amazon"  # the owners' own models
LISTINGS_SPEC = SPECS / "listingsItems_2021-08-01.json"
CLIENT_ID, CLIENT_SECRET, REFRESH = "amzn1.app.test", "app-secret", "Atzr|seller-refresh"


class Recorder:
    """An ASGI wrapper that keeps every request it serves: (method, path, query, body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.requests: list[tuple[str, str, str, bytes]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.requests.append((scope["method"], scope["path"], scope["query_string"].decode(), body))
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


@pytest.fixture
def amazon() -> Iterator[tuple[AmazonState, SandboxServer, Recorder]]:
    """The sandbox Amazon behind a recording server, with Login with Amazon on."""
    state = AmazonState()
    state.use_lwa(CLIENT_ID, CLIENT_SECRET, [REFRESH])
    recorder = Recorder(create_amazon_app(state))
    with SandboxServer(recorder) as server:
        yield state, server, recorder


def amazon_cfg(server: SandboxServer, **overrides: Any) -> AmazonChannelConfig:
    return AmazonChannelConfig.model_validate(
        {
            "id": "amazon-eu",
            "type": "amazon",
            "url": server.url,
            "seller_id": "A1SELLER",
            "marketplace_ids": ["A1PA6795UKMFR9"],
            "client_id_env": "AMZ_CLIENT_ID",
            "client_secret_env": "AMZ_CLIENT_SECRET",
            "refresh_token_env": "AMZ_REFRESH_TOKEN",
            "lwa_url": f"{server.url}/auth/o2/token",
            **overrides,
        }
    )


Amazon = tuple[AmazonState, SandboxServer, Recorder]


@contextlib.contextmanager
def feeds_sandbox() -> Iterator[Amazon]:
    """The sandbox Amazon taking feeds at 100 a second, Login with Amazon on, every
    request recorded: the state, the server and the recorder."""
    state = AmazonState(seller_id="A1SELLER", feed_rate=100.0)
    state.use_lwa(CLIENT_ID, CLIENT_SECRET, [REFRESH])
    recorder = Recorder(create_amazon_app(state))
    with SandboxServer(recorder) as server:
        yield state, server, recorder


def credentials(server: SandboxServer, refresh: str = REFRESH) -> LwaCredentials:
    return LwaCredentials(CLIENT_ID, CLIENT_SECRET, refresh, f"{server.url}/auth/o2/token")


@pytest.fixture
async def adapter(
    amazon: tuple[AmazonState, SandboxServer, Recorder],
) -> AsyncIterator[AmazonChannel]:
    _, server, _ = amazon
    a = AmazonChannel(amazon_cfg(server), lwa=credentials(server), metrics=Metrics())
    yield a
    await a.aclose()


# -- Login with Amazon ---------------------------------------------------------------


async def test_concurrent_calls_share_one_token_exchange(
    adapter: AmazonChannel, amazon: tuple[AmazonState, SandboxServer, Recorder]
) -> None:
    state, _, recorder = amazon
    outcomes = await asyncio.gather(*(adapter.push([Push(f"S-{i}", i, 1)]) for i in range(12)))
    assert all(o.status == "ok" for [o] in outcomes)
    assert state.counters()["token_exchanges"] == 1
    [token_call] = [r for r in recorder.requests if r[1] == "/auth/o2/token"]
    form = dict(x.split("=", 1) for x in token_call[3].decode().split("&"))
    assert form["grant_type"] == "refresh_token"
    assert form["client_id"] == CLIENT_ID


async def test_an_expired_token_is_refreshed_once_for_all_concurrent_calls(
    adapter: AmazonChannel, amazon: tuple[AmazonState, SandboxServer, Recorder]
) -> None:
    state, _, _ = amazon
    [first] = await adapter.push([Push("A", 1, 1)])
    assert first.status == "ok"
    state.expire_tokens()  # the hour has passed; our cache does not know yet
    outcomes = await asyncio.gather(*(adapter.push([Push(f"E-{i}", i, 1)]) for i in range(8)))
    assert all(o.status == "ok" for [o] in outcomes)
    counters = state.counters()
    assert counters["token_expired"] >= 1  # Amazon said so, and the adapter listened
    assert counters["token_exchanges"] == 2  # one refresh, not one per call
    assert state.levels()["E-7"] == 7


async def test_a_token_is_renewed_before_it_expires(
    amazon: tuple[AmazonState, SandboxServer, Recorder],
) -> None:
    state, server, _ = amazon
    now = [0.0]
    adapter = AmazonChannel(amazon_cfg(server), lwa=credentials(server))
    assert adapter.tokens is not None
    adapter.tokens.clock = lambda: now[0]
    try:
        await adapter.push([Push("A", 1, 1)])
        now[0] = 3600 - 61  # still fresh for more than the margin
        await adapter.push([Push("A", 2, 2)])
        assert state.counters()["token_exchanges"] == 1
        now[0] = 3600 - 59  # within the margin: a new one before Amazon refuses it
        await adapter.push([Push("A", 3, 3)])
    finally:
        await adapter.aclose()
    assert state.counters()["token_exchanges"] == 2
    assert state.counters().get("token_expired", 0) == 0


async def test_a_refused_refresh_token_fails_fast_and_is_counted_not_retried(
    amazon: tuple[AmazonState, SandboxServer, Recorder],
) -> None:
    state, server, _ = amazon
    metrics = Metrics()
    adapter = AmazonChannel(
        amazon_cfg(server), lwa=credentials(server, "Atzr|revoked"), metrics=metrics
    )
    try:
        for _ in range(3):
            with pytest.raises(CredentialsRefused) as refused:
                await adapter.push([Push("A", 1, 1)])
            assert "invalid_grant" in str(refused.value)
    finally:
        await adapter.aclose()
    assert state.counters()["token_refused"] == 1  # asked once, then paused
    assert state.counters().get("patches", 0) == 0
    exchanges = metrics.channel_token_exchanges.labels(channel="amazon-eu", result="refused")
    assert exchanges._value.get() == 1


async def test_a_refused_refresh_token_dead_letters_the_push_with_its_reason(
    config: dict[str, Any],
    clock: FakeClock,
    amazon: tuple[AmazonState, SandboxServer, Recorder],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, server, _ = amazon
    monkeypatch.setenv("AMZ_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AMZ_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AMZ_REFRESH_TOKEN", "Atzr|revoked")
    config["connectors"] = [amazon_cfg(server).model_dump(mode="json", exclude_none=True)]
    c: Container = await build(Settings.model_validate(config), clock=clock)
    [cfg] = c.settings.connectors_of(ChannelConfig)
    adapter = channel_adapter(cfg, c.metrics)
    try:
        await c.stock.receive(Receipt("DL-1", 4, "r-1"))
        await sync_all(c, Propagator(c.propagation, {cfg.id: adapter}, c.pool))
        async with c.pool.acquire() as conn:
            error = await conn.fetchval(
                "SELECT error FROM dead_letter WHERE queue = 'channel.propagation'"
            )
    finally:
        await adapter.aclose()
        await c.close()
    assert error is not None
    assert "invalid_grant" in error
    assert state.counters()["token_refused"] == 1


def test_lwa_needs_all_three_variables_and_not_token_env() -> None:
    base = {
        "id": "a",
        "type": "amazon",
        "url": "https://sellingpartnerapi-eu.amazon.com",
        "seller_id": "A1",
        "marketplace_ids": ["A1PA6795UKMFR9"],
    }
    with pytest.raises(ValueError, match="needs all of"):
        AmazonChannelConfig.model_validate(base | {"refresh_token_env": "R"})
    with pytest.raises(ValueError, match="exclude each other"):
        AmazonChannelConfig.model_validate(
            base
            | {
                "client_id_env": "I",
                "client_secret_env": "S",
                "refresh_token_env": "R",
                "token_env": "T",
            }
        )


# -- what patchListingsItem says of a missing listing ------------------------------------


async def test_a_missing_listing_is_an_invalid_submission_then_a_404_read(
    adapter: AmazonChannel, amazon: tuple[AmazonState, SandboxServer, Recorder]
) -> None:
    state, _, recorder = amazon
    state.unlist_skus(["GONE"])
    [outcome] = await adapter.push([Push("GONE", 3, 1)])
    assert outcome.status == "unlisted"
    calls = [(m, p.rsplit("/", 1)[-1]) for m, p, _, _ in recorder.requests if "listings" in p]
    assert calls == [("PATCH", "GONE"), ("GET", "GONE")]


async def test_an_invalid_submission_for_a_listed_sku_stays_rejected(
    amazon: tuple[AmazonState, SandboxServer, Recorder],
) -> None:
    _, server, _ = amazon
    adapter = AmazonChannel(
        amazon_cfg(server, fulfillment_channel_code="AMAZON_EU"), lwa=credentials(server)
    )
    try:
        [outcome] = await adapter.push([Push("FBA-1", 3, 1)])
    finally:
        await adapter.aclose()
    assert outcome.status == "rejected"
    assert outcome.error is not None
    assert "FBA_QUANTITY" in outcome.error


# -- merge keeps what the seller set -------------------------------------------------------


async def test_a_push_keeps_lead_time_and_restock_date(
    adapter: AmazonChannel, amazon: tuple[AmazonState, SandboxServer, Recorder]
) -> None:
    state, _, _ = amazon
    seller_set = {
        "fulfillment_channel_code": "DEFAULT",
        "quantity": 1,
        "lead_time_to_ship_max_days": 3,
        "restock_date": "2027-01-15",
    }
    state.set_offer("KEEP", [seller_set])
    [outcome] = await adapter.push([Push("KEEP", 7, 1)])
    assert outcome.status == "ok"
    assert state.offer("KEEP") == [seller_set | {"quantity": 7}]


# -- every request against Amazon's own model ----------------------------------------------


def listings_validator(definition: str) -> Draft4Validator:
    spec = json.loads(LISTINGS_SPEC.read_text())
    schema = {"$ref": f"#/definitions/{definition}", "definitions": spec["definitions"]}
    return Draft4Validator(schema)


async def test_every_request_and_answer_fits_the_listings_items_model(
    adapter: AmazonChannel, amazon: tuple[AmazonState, SandboxServer, Recorder]
) -> None:
    state, server, recorder = amazon
    spec = json.loads(LISTINGS_SPEC.read_text())
    state.unlist_skus(["GONE"])
    await adapter.push([Push("SKU/1 blue", 5, 1)])
    await adapter.push([Push("GONE", 1, 1)])
    await adapter.read(["SKU/1 blue"], {})
    patch_body = listings_validator("ListingsItemPatchRequest")
    operations = spec["paths"]["/listings/2021-08-01/items/{sellerId}/{sku}"]
    seen = set()
    for method, path, query, body in recorder.requests:
        if path == "/auth/o2/token":
            continue
        assert path.startswith("/listings/2021-08-01/items/A1SELLER/")
        op = operations[method.lower()]
        params = {p["name"]: p for p in op["parameters"] if p.get("in") == "query"}
        given = dict(x.split("=", 1) for x in query.split("&"))
        assert set(given) <= set(params), (method, given)
        assert {n for n, p in params.items() if p.get("required")} <= set(given)
        if method == "PATCH":
            errors = list(patch_body.iter_errors(json.loads(body)))
            assert not errors, errors
        seen.add(method)
    assert seen == {"PATCH", "GET"}
    # The sandbox's answers fit the model too (a sandbox can share our misreading).
    submission = listings_validator("ListingsItemSubmissionResponse")
    item = listings_validator("Item")
    async with httpx.AsyncClient(base_url=server.url) as client:
        token = await adapter.tokens.token() if adapter.tokens else ""
        headers = {"x-amz-access-token": token}
        market = {"marketplaceIds": "A1PA6795UKMFR9"}
        for sku in ("OK-1", "GONE"):
            answer = await client.patch(
                f"/listings/2021-08-01/items/A1SELLER/{sku}",
                params=market,
                headers=headers,
                json={
                    "productType": "PRODUCT",
                    "patches": [
                        {
                            "op": "merge",
                            "path": "/attributes/fulfillment_availability",
                            "value": [{"fulfillment_channel_code": "DEFAULT", "quantity": 2}],
                        }
                    ],
                },
            )
            assert answer.status_code == 200
            assert not list(submission.iter_errors(answer.json()))
        read = await client.get(
            "/listings/2021-08-01/items/A1SELLER/OK-1",
            params=market | {"includedData": "summaries,attributes,fulfillmentAvailability"},
            headers=headers,
        )
        assert not list(item.iter_errors(read.json()))
