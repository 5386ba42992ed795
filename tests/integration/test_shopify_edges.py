"""The Shopify adapter against answers the sandbox never gives: THROTTLED without
``extensions.cost``, malformed JSON, an ``errors`` that is not a list, 5xx on a mutation
(the same idempotency key on every retry), and userErrors naming nothing. The channel is
an httpx transport answering as Shopify could (no network)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from stockkeeper.config import ShopifyChannelConfig
from stockkeeper.connectors.channels import Push
from stockkeeper.connectors.http import ConnectorRejected, ConnectorUnavailable
from stockkeeper.connectors.shopify import ShopifyChannel

GID = "gid://shopify/InventoryItem/1"
COST = {
    "requestedQueryCost": 10,
    "actualQueryCost": 10,
    "throttleStatus": {"maximumAvailable": 2000, "currentlyAvailable": 1990, "restoreRate": 100},
}
SET_OK = {
    "data": {
        "inventorySetQuantities": {
            "inventoryAdjustmentGroup": {"id": "gid://shopify/InventoryAdjustmentGroup/1"},
            "userErrors": [],
        }
    },
    "extensions": {"cost": COST},
}


class Shop:
    """Answers each request with the next of ``answers`` (the last one again after)."""

    def __init__(self, *answers: Callable[[], httpx.Response]) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(orjson.loads(request.content))
        self.times.append(time.monotonic())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer()


def json(status: int, body: Any) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, json=body)


def raw(status: int, content: bytes) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, content=content)


def adapter(shop: Shop, **overrides: Any) -> ShopifyChannel:
    cfg = ShopifyChannelConfig.model_validate(
        {
            "id": "shopify-edges",
            "type": "shopify",
            "url": "http://shop.test/admin/api/2026-04/graphql.json",
            "location_id": "gid://shopify/Location/1",
            "rate_limit_rps": 1000,
            "max_attempts": 3,
            "backoff_base_ms": 20,
            "backoff_max_ms": 40,
            **overrides,
        }
    )
    return ShopifyChannel(cfg, transport=httpx.MockTransport(shop))


async def push(shop: Shop, **overrides: Any) -> list[Any]:
    a = adapter(shop, **overrides)
    try:
        return await a.push([Push("A", 3, 1, previous=None, channel_ref=GID)])
    finally:
        await a.aclose()


async def test_throttled_without_a_cost_backs_off_instead_of_asking_again_at_once() -> None:
    throttled = {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]}
    shop = Shop(json(200, throttled))
    with pytest.raises(ConnectorUnavailable) as caught:
        await push(shop)
    assert caught.value.reason == "rate_limited"
    assert len(shop.times) == 5  # THROTTLED_TRIES
    gaps = [b - a for a, b in zip(shop.times, shop.times[1:], strict=False)]
    assert min(gaps) >= 0.01  # the backoff (20 ms, jitter down to half) between tries
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > 0
    # A throttled mutation was not run: each try has its own key.
    assert len({b["variables"]["idempotencyKey"] for b in shop.bodies}) == 5


async def test_throttled_once_then_set() -> None:
    throttled = {"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}]}
    shop = Shop(json(200, throttled), json(200, SET_OK))
    [outcome] = await push(shop)
    assert (outcome.status, outcome.quantity) == ("ok", 3)


async def test_a_5xx_mutation_is_retried_with_the_same_idempotency_key() -> None:
    shop = Shop(raw(502, b"<html>Bad Gateway</html>"), raw(503, b""), json(200, SET_OK))
    [outcome] = await push(shop)
    assert outcome.status == "ok"
    keys = [b["variables"]["idempotencyKey"] for b in shop.bodies]
    assert len(keys) == 3
    assert len(set(keys)) == 1  # applied once however many answers were lost


@pytest.mark.parametrize(
    "answer",
    [
        raw(200, b"{not json"),
        raw(200, b""),
        raw(200, b"\xff\xfe"),
        json(200, {"errors": "[API] Internal error"}),  # errors not a list
        json(200, {"data": None}),  # neither data nor errors
        json(200, {"data": {"inventorySetQuantities": {"userErrors": "none"}}}),
        json(200, [1, 2]),
    ],
)
async def test_a_malformed_answer_is_unavailable_after_its_retries(
    answer: Callable[[], httpx.Response],
) -> None:
    shop = Shop(answer)
    with pytest.raises(ConnectorUnavailable) as caught:
        await push(shop)
    assert caught.value.reason == "invalid_response"
    assert len(shop.bodies) == 3  # max_attempts
    assert len({b["variables"]["idempotencyKey"] for b in shop.bodies}) == 1


async def test_a_user_error_naming_nothing_refuses_the_call() -> None:
    refused = {
        "data": {
            "inventorySetQuantities": {
                "inventoryAdjustmentGroup": None,
                "userErrors": [{"code": None, "field": None, "message": "Something is off"}],
            }
        },
        "extensions": {"cost": COST},
    }
    with pytest.raises(ConnectorRejected, match="Something is off"):
        await push(Shop(json(200, refused)))


async def test_an_access_denied_error_refuses_and_a_timeout_error_is_unavailable() -> None:
    denied = {"errors": [{"message": "Access denied", "extensions": {"code": "ACCESS_DENIED"}}]}
    with pytest.raises(ConnectorRejected, match="ACCESS_DENIED"):
        await push(Shop(json(200, denied)))
    timeout = {"errors": [{"message": "Timeout", "extensions": {"code": "TIMEOUT"}}]}
    with pytest.raises(ConnectorUnavailable) as caught:
        await push(Shop(json(200, timeout)))
    assert caught.value.reason == "server_error"


async def test_a_bad_token_is_refused_at_once() -> None:
    shop = Shop(json(401, {"errors": "[API] Invalid API key or access token"}))
    with pytest.raises(ConnectorRejected) as caught:
        await push(shop)
    assert caught.value.status == 401
    assert len(shop.bodies) == 1


async def test_a_sku_search_that_outruns_its_pages_is_retried_not_unlisted() -> None:
    """D-486: a loose search answering page after page of other SKUs ("TEE-1", ...) with
    the exact "TEE" on page 12: past the lookup's 10 pages the SKU is unknown, not
    "not listed" (which would hold its pushes back for an hour)."""
    pages: list[Any] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        n = len(pages)
        pages.append(body["variables"]["after"])
        nodes = [{"id": f"gid://shopify/InventoryItem/{n + 10}", "sku": f"TEE-{n}"}]
        if n == 11:
            nodes = [{"id": "gid://shopify/InventoryItem/999", "sku": "TEE"}]
        info = {"hasNextPage": n < 11, "endCursor": f"c{n}"}
        data = {"inventoryItems": {"nodes": nodes, "pageInfo": info}}
        return httpx.Response(200, json={"data": data, "extensions": {"cost": COST}})

    cfg = ShopifyChannelConfig.model_validate(
        {
            "id": "shop",
            "type": "shopify",
            "url": "http://shop.test/graphql.json",
            "location_id": "gid://shopify/Location/1",
            "rate_limit_rps": 1000,
        }
    )
    channel = ShopifyChannel(cfg, transport=httpx.MockTransport(answer))
    try:
        with pytest.raises(ConnectorUnavailable, match="more pages after 10"):
            await channel.push([Push("TEE", 5, 1)])
    finally:
        await channel.aclose()
    assert len(pages) == 10
