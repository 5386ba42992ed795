"""Contract: every GraphQL document the Shopify adapter sends, with its variables,
validates against Shopify's own Admin API 2026-04 schema (the introspection in
/work/shared/specs/shopify/, published by Shopify), not only against our sandbox.

The requests are captured on their way to the sandbox by a recording transport, while
the adapter looks SKUs up, pushes (with a stale changeFromQuantity round, which reads
back), and reads back."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from graphql import GraphQLSchema, build_client_schema, parse, validate
from graphql.execution.values import get_variable_values

from stockkeeper.config import ShopifyChannelConfig
from stockkeeper.connectors.channels import AtLocation, Push
from stockkeeper.connectors.shopify import ShopifyChannel
from stockkeeper.connectors.shopify_wire import SET_AVAILABLE
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from stockkeeper_sandbox.shopify import create_app as create_shopify_app

SPECS = Path(__file__).resolve().parents[1] / "specs"  # the owners' own (D-253)
INTROSPECTION = SPECS / "shopify" / "admin-2026-04.introspection.json.gz"

pytestmark = pytest.mark.skipif(
    not INTROSPECTION.exists(), reason=f"Shopify's schema is not at {INTROSPECTION}"
)


@cache
def schema() -> GraphQLSchema:
    doc = json.loads(gzip.decompress(INTROSPECTION.read_bytes()))
    # Shopify's deprecations fail graphql-core's own schema self-check; documents are
    # validated against it without that check (see the specs' README).
    return build_client_schema(doc.get("data", doc), assume_valid=True)


class Recorder(httpx.AsyncBaseTransport):
    """Passes every request on to the sandbox and keeps its JSON body."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(orjson.loads(request.content))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def problems(body: dict[str, Any]) -> list[str]:
    """What Shopify's schema says is wrong with one request: the document and the
    variables, coerced as the server would."""
    document = parse(body["query"])
    found = [e.message for e in validate(schema(), document)]
    if found:
        return found
    (operation,) = document.definitions
    coerced = get_variable_values(
        schema(),
        operation.variable_definitions,  # type: ignore[attr-defined]
        body.get("variables") or {},
    )
    if isinstance(coerced, list):
        found += [e.message for e in coerced]
    return found


async def test_every_request_validates_against_shopify_2026_04(
    shopify_channel: tuple[ShopifyState, SandboxServer],
) -> None:
    state, server = shopify_channel
    recorded = Recorder()
    cfg = ShopifyChannelConfig.model_validate(
        {
            "id": "shopify-contract",
            "type": "shopify",
            "url": graphql_url(server.url),
            "location_id": "gid://shopify/Location/1",
            "rate_limit_rps": 1000,
        }
    )
    adapter = ShopifyChannel(cfg, transport=recorded)
    try:
        state.list_skus(["A", 'B "quoted"', "C"], quantity=4)
        # No refs: a lookup; a wrong changeFromQuantity for C: a stale round re-reads it.
        first = await adapter.push(
            [Push("A", 7, 1), Push('B "quoted"', 0, 1, previous=4), Push("C", 2, 1, previous=9)]
        )
        assert [o.status for o in first] == ["ok", "ok", "ok"]
        refs = {o.sku: o.channel_ref for o in first if o.channel_ref}
        await adapter.push([Push("A", 5, 2, previous=7, channel_ref=refs["A"])])
        assert await adapter.read(["A", "C"], refs) == {"A": 5, "C": 2}
    finally:
        await adapter.aclose()
    operations = {parse(b["query"]).definitions[0].name.value for b in recorded.bodies}  # type: ignore[attr-defined]
    assert operations == {
        "StockkeeperItemsBySku",
        "StockkeeperSetAvailable",
        "StockkeeperAvailable",
    }
    for body in recorded.bodies:
        assert problems(body) == [], body
        # What the schema cannot say (changeFromQuantity is a nullable Int there, but
        # 2026-04 refuses an input without it; the key of @idempotent must be there).
        if "inventorySetQuantities" in body["query"]:
            assert body["variables"]["idempotencyKey"]
            for quantity in body["variables"]["input"]["quantities"]:
                assert "changeFromQuantity" in quantity


async def test_a_multi_location_push_and_read_validate_against_shopify_2026_04() -> None:
    l1, l2 = "gid://shopify/Location/11", "gid://shopify/Location/22"
    state = ShopifyState(location_ids=[l1, l2])
    recorded = Recorder()
    with SandboxServer(create_shopify_app(state)) as server:
        cfg = ShopifyChannelConfig.model_validate(
            {
                "id": "shopify-contract",
                "type": "shopify",
                "url": graphql_url(server.url),
                "locations": [
                    {"location_id": l1, "our_locations": ["berlin"]},
                    {"location_id": l2, "our_locations": ["paris"]},
                ],
                "rate_limit_rps": 1000,
            }
        )
        adapter = ShopifyChannel(cfg, transport=recorded)
        try:
            state.list_skus(["A", "B"], quantity=0)
            state.set_level_at("B", l2, 9)  # B's changeFromQuantity at l2 is stale
            first = await adapter.push(
                [
                    Push(
                        "A",
                        7,
                        1,
                        previous=0,
                        locations=(AtLocation(l1, 5, 0), AtLocation(l2, 2, 0)),
                    ),
                    Push(
                        "B",
                        4,
                        1,
                        previous=0,
                        locations=(AtLocation(l1, 1, 0), AtLocation(l2, 3, 0)),
                    ),
                ]
            )
            assert [(o.status, o.locations) for o in first] == [
                ("ok", {l1: 5, l2: 2}),
                ("ok", {l1: 1, l2: 3}),
            ]
            refs = {o.sku: o.channel_ref for o in first if o.channel_ref}
            assert await adapter.read_locations(["A", "B"], refs) == {
                "A": {l1: 5, l2: 2},
                "B": {l1: 1, l2: 3},
            }
        finally:
            await adapter.aclose()
    mutations = [b for b in recorded.bodies if "inventorySetQuantities" in b["query"]]
    # One mutation carries every location of the batch, each with its changeFromQuantity.
    entries = [m["variables"]["input"]["quantities"] for m in mutations]
    assert [(q["inventoryItemId"], q["locationId"]) for q in entries[0]] == [
        (refs[sku], loc) for sku in ("A", "B") for loc in (l1, l2)
    ]
    # B is stale at l2 alone: re-read at that location, and the mutation (all or
    # nothing, so nothing was applied) sent again comparing from what l2 shows.
    rereads = [b["variables"] for b in recorded.bodies if "StockkeeperAvailable(" in b["query"]]
    assert rereads == [{"ids": [refs["B"]], "locationId": l2}]
    assert len(mutations) == 2
    assert [q["changeFromQuantity"] for q in entries[1]] == [0, 0, 0, 9]
    names = {parse(b["query"]).definitions[0].name.value for b in recorded.bodies}  # type: ignore[attr-defined]
    assert {"StockkeeperSetAvailable", "StockkeeperAvailable", "StockkeeperAvailableAt"} <= names
    for body in recorded.bodies:
        assert problems(body) == [], body
        if "inventorySetQuantities" in body["query"]:
            for quantity in body["variables"]["input"]["quantities"]:
                assert "changeFromQuantity" in quantity


def test_the_check_catches_what_2026_04_refuses() -> None:
    # A quantity without its required figure, a quantity of the wrong type, and a field
    # that does not exist: the same check must say so, or the test above proves nothing.
    quantity = {"inventoryItemId": "gid://shopify/InventoryItem/1", "changeFromQuantity": None}
    body = {
        "query": SET_AVAILABLE,
        "variables": {
            "idempotencyKey": "k",
            "input": {
                "name": "available",
                "reason": "correction",
                "quantities": [{**quantity, "locationId": "gid://shopify/Location/1"}],
            },
        },
    }
    assert any("quantity" in p for p in problems(body))
    body["variables"]["input"]["quantities"][0]["quantity"] = "seven"
    assert any("Int" in p for p in problems(body))
    wrong = {"query": "query { shop { noSuchField } }", "variables": {}}
    assert problems(wrong)
