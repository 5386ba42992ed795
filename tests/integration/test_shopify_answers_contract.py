"""Contract, the other way: every answer the sandbox Shopify gives our documents is one
Shopify's own Admin API 2026-04 schema allows for them (a sandbox written by us can share
our misreading of the schema, and the adapter's models were written from the sandbox).

Each answer's ``data`` is executed back through the document against the schema, with a
resolver that reads each field from the answer by its response key: graphql-core then
checks every value against its field's type (non-null fields present, Int an Int, a list
a list, an abstract type resolved to a member) and keeps only what the document selects.
An answer passes when that execution raises no error. (The sandbox answers a fixed
selection whatever the document asks, docs/channels.md; fields beyond the document's
are not checked, as Shopify would not send them.)"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import orjson
import pytest
from graphql import (
    GraphQLAbstractType,
    GraphQLResolveInfo,
    execute,
    parse,
)

from stockkeeper.config import ShopifyChannelConfig
from stockkeeper.connectors.channels import AtLocation, Push
from stockkeeper.connectors.shopify import ShopifyChannel
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from stockkeeper_sandbox.shopify import create_app as create_shopify_app
from tests.integration.test_shopify_contract import INTROSPECTION, schema

pytestmark = pytest.mark.skipif(
    not INTROSPECTION.exists(), reason=f"Shopify's schema is not at {INTROSPECTION}"
)


class Exchanges(httpx.AsyncBaseTransport):
    """Passes every request on to the sandbox and keeps (request body, answer body)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        self.seen.append((orjson.loads(request.content), orjson.loads(content)))
        return httpx.Response(response.status_code, headers=response.headers, content=content)

    async def aclose(self) -> None:
        await self.inner.aclose()


def by_response_key(source: Any, info: GraphQLResolveInfo, **_args: Any) -> Any:
    return source.get(info.path.key) if isinstance(source, Mapping) else None


def member_of(value: Any, info: GraphQLResolveInfo, abstract: GraphQLAbstractType) -> str | None:
    # Our documents ask for InventoryItem fields only (... on InventoryItem); an object the
    # sandbox answers for another type would carry none of them.
    return "InventoryItem" if isinstance(value, Mapping) and value else None


def problems(body: dict[str, Any], answer: dict[str, Any]) -> list[str]:
    """What Shopify's schema says is wrong with the sandbox's answer to ``body``."""
    if answer.get("errors"):
        return []  # an error answer has no data to check (THROTTLED and the like)
    result = execute(
        schema(),
        parse(body["query"]),
        root_value=answer["data"],
        variable_values=body.get("variables") or {},
        field_resolver=by_response_key,
        type_resolver=member_of,
    )
    assert not isinstance(result, Mapping)
    found = [f"{'.'.join(map(str, e.path or []))}: {e.message}" for e in result.errors or []]
    return found or changed(result.data, answer["data"], "data")


def changed(kept: Any, given: Any, where: str) -> list[str]:
    """Where the execution had to coerce a selected value ("3" or 3.0 for an Int): the
    schema's serializers are lenient, Shopify's JSON is not."""
    if isinstance(kept, Mapping):
        if not isinstance(given, Mapping):
            return [f"{where}: {given!r} is not an object"]
        return [p for k, v in kept.items() for p in changed(v, given.get(k), f"{where}.{k}")]
    if isinstance(kept, list):
        if not isinstance(given, list) or len(given) != len(kept):
            return [f"{where}: {given!r} is not the list answered"]
        return [
            p
            for i, (a, b) in enumerate(zip(kept, given, strict=True))
            for p in changed(a, b, f"{where}.{i}")
        ]
    if type(kept) is not type(given) or kept != given:
        return [f"{where}: {given!r} is not of its field's type ({kept!r})"]
    return []


async def test_every_answer_fits_shopify_2026_04(
    shopify_channel: tuple[ShopifyState, SandboxServer],
) -> None:
    state, server = shopify_channel
    seen = Exchanges()
    cfg = ShopifyChannelConfig.model_validate(
        {
            "id": "shopify-answers",
            "type": "shopify",
            "url": graphql_url(server.url),
            "location_id": "gid://shopify/Location/1",
            "rate_limit_rps": 1000,
        }
    )
    adapter = ShopifyChannel(cfg, transport=seen)
    try:
        state.list_skus(["A", "B", "C"], quantity=4)
        state.unlist_skus(["GONE"])
        state.unstock(["C"])
        first = await adapter.push(
            [
                Push("A", 7, 1),
                Push("B", 2, 1, previous=9),  # stale: a userError, a re-read, a set
                Push("C", 1, 1),  # not stocked at the location: a userError
                Push("GONE", 1, 1),  # no item: an empty lookup
                Push("NEG", -1, 1),  # refused: a userError naming the quantity
            ]
        )
        assert {o.sku: o.status for o in first} == {
            "A": "ok",
            "B": "ok",
            "C": "unlisted",
            "GONE": "unlisted",
            "NEG": "rejected",
        }
        refs = {o.sku: o.channel_ref for o in first if o.channel_ref}
        await adapter.read(["A", "B", "C", "GONE"], refs)
    finally:
        await adapter.aclose()
    answered = {parse(b["query"]).definitions[0].name.value for b, _ in seen.seen}  # type: ignore[attr-defined]
    assert answered == {"StockkeeperItemsBySku", "StockkeeperSetAvailable", "StockkeeperAvailable"}
    refusals = [
        a["data"]["inventorySetQuantities"]["userErrors"]
        for b, a in seen.seen
        if "inventorySetQuantities" in b["query"] and "data" in a
    ]
    assert any(refusals)  # the userErrors were answered (and are checked) too
    for body, answer in seen.seen:
        assert problems(body, answer) == [], (body, answer)


def test_the_check_catches_an_answer_shopify_would_never_give() -> None:
    body = {
        "query": "query Q($ids: [ID!]!, $l: ID!) { nodes(ids: $ids) { ... on InventoryItem "
        '{ id inventoryLevel(locationId: $l) { quantities(names: ["available"]) '
        "{ name quantity } } } } }",
        "variables": {"ids": ["gid://shopify/InventoryItem/1"], "l": "gid://shopify/Location/1"},
    }
    level = {"quantities": [{"name": "available", "quantity": 3}]}
    good = {"data": {"nodes": [{"id": "gid://shopify/InventoryItem/1", "inventoryLevel": level}]}}
    assert problems(body, good) == []
    no_id = {"data": {"nodes": [{"id": None, "inventoryLevel": level}]}}  # id is ID!
    assert problems(body, no_id)
    text = {"quantities": [{"name": "available", "quantity": "3"}]}  # quantity is Int!
    assert problems(body, {"data": {"nodes": [{"id": "x", "inventoryLevel": text}]}})
    assert problems(body, {"data": {"nodes": {"id": "x"}}})  # a list, not an object


async def test_the_answers_of_a_shop_with_several_locations_fit_shopify_2026_04() -> None:
    l1, l2 = "gid://shopify/Location/11", "gid://shopify/Location/22"
    state = ShopifyState(location_ids=[l1, l2])
    seen = Exchanges()
    with SandboxServer(create_shopify_app(state)) as server:
        cfg = ShopifyChannelConfig.model_validate(
            {
                "id": "shopify-answers",
                "type": "shopify",
                "url": graphql_url(server.url),
                "locations": [
                    {"location_id": l1, "our_locations": ["berlin"]},
                    {"location_id": l2, "our_locations": ["paris"]},
                ],
                "rate_limit_rps": 1000,
            }
        )
        adapter = ShopifyChannel(cfg, transport=seen)
        try:
            state.list_skus(["A"], quantity=0)
            state.unlist_skus(["NONE"])
            state.set_level_at("A", l2, 9)  # stale at l2: re-read there
            at = (AtLocation(l1, 5, 0), AtLocation(l2, 2, 0))
            [outcome] = await adapter.push([Push("A", 7, 1, previous=0, locations=at)])
            assert outcome.status == "ok"
            refs = {"A": outcome.channel_ref or ""}
            assert await adapter.read_locations(["A", "NONE"], refs) == {
                "A": {l1: 5, l2: 2},
                "NONE": None,
            }
        finally:
            await adapter.aclose()
    names = {parse(b["query"]).definitions[0].name.value for b, _ in seen.seen}  # type: ignore[attr-defined]
    assert "StockkeeperAvailableAt" in names
    for body, answer in seen.seen:
        assert problems(body, answer) == [], (body, answer)
