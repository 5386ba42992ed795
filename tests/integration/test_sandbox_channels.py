"""The sandbox channels on the wire, without the adapters: what they enforce and answer."""

from __future__ import annotations

from typing import Any

import httpx

from stockkeeper_sandbox.amazon import AmazonState
from stockkeeper_sandbox.amazon import create_app as create_amazon_app
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url

Shopify = tuple[ShopifyState, SandboxServer]
Amazon = tuple[AmazonState, SandboxServer]
LOCATION = "gid://shopify/Location/1"
SET = """mutation Set($input: InventorySetQuantitiesInput!, $key: String!) {
  inventorySetQuantities(input: $input) @idempotent(key: $key) {
    inventoryAdjustmentGroup { id } userErrors { code field message } } }"""
LISTINGS = "/listings/2021-08-01/items/A1/"


def graphql(server: SandboxServer, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        graphql_url(server.url), json={"query": query, "variables": variables}, timeout=5
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def set_input(gid: str, quantity: int, change_from: int | None, **extra: Any) -> dict[str, Any]:
    item = {"inventoryItemId": gid, "locationId": LOCATION, "quantity": quantity}
    return {
        "name": "available",
        "reason": "correction",
        "quantities": [item | {"changeFromQuantity": change_from} | extra],
    }


def test_shopify_idempotency_key_applies_a_mutation_once(shopify_channel: Shopify) -> None:
    state, server = shopify_channel
    state.list_skus(["A"])
    gid = state.gid("A")
    assert gid is not None
    first = graphql(server, SET, {"input": set_input(gid, 5, 0), "key": "k-1"})
    again = graphql(server, SET, {"input": set_input(gid, 5, 0), "key": "k-1"})
    assert first["data"] == again["data"]
    assert first["data"]["inventorySetQuantities"]["userErrors"] == []
    assert state.pushed("A") == [5]
    other = graphql(server, SET, {"input": set_input(gid, 6, 5), "key": "k-1"})
    [error] = other["data"]["inventorySetQuantities"]["userErrors"]
    assert error["code"] == "IDEMPOTENCY_KEY_PARAMETER_MISMATCH"
    assert state.counters()["replayed"] == 1


def test_shopify_mutation_is_all_or_nothing(shopify_channel: Shopify) -> None:
    state, server = shopify_channel
    state.list_skus(["A", "B"], quantity=3)
    gid_a, gid_b = state.gid("A"), state.gid("B")
    quantities = [
        {"inventoryItemId": gid_a, "locationId": LOCATION, "quantity": 9, "changeFromQuantity": 3},
        {"inventoryItemId": gid_b, "locationId": LOCATION, "quantity": 9, "changeFromQuantity": 1},
    ]
    variables = {"input": set_input("x", 0, 0) | {"quantities": quantities}, "key": "k"}
    answer = graphql(server, SET, variables)["data"]["inventorySetQuantities"]
    assert answer["inventoryAdjustmentGroup"] is None
    assert answer["userErrors"] == [
        {
            "code": "CHANGE_FROM_QUANTITY_STALE",
            "field": ["input", "quantities", "1", "changeFromQuantity"],
            "message": "The changeFromQuantity value does not match persisted value.",
        }
    ]
    assert state.levels() == {"A": 3, "B": 3}


def test_shopify_requires_change_from_quantity_and_the_idempotent_directive(
    shopify_channel: Shopify,
) -> None:
    state, server = shopify_channel
    state.list_skus(["A"])
    gid = state.gid("A")
    assert gid is not None
    without_field = set_input(gid, 1, None)
    del without_field["quantities"][0]["changeFromQuantity"]
    [error] = graphql(server, SET, {"input": without_field, "key": "k"})["errors"]
    assert error["extensions"]["code"] == "INVALID_VARIABLE"
    undirected = SET.replace(" @idempotent(key: $key)", "")
    [error] = graphql(server, undirected, {"input": set_input(gid, 1, None)})["errors"]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert state.pushed("A") == []


def test_shopify_reports_its_cost_and_throttles_past_the_bucket(shopify_channel: Shopify) -> None:
    state, server = shopify_channel
    state.configure_bucket(30, 1)
    query = """query($first: Int!, $query: String!) {
      inventoryItems(first: $first, query: $query) { nodes { id sku } } }"""
    ok = graphql(server, query, {"first": 20, "query": 'sku:"A"'})
    cost = ok["extensions"]["cost"]
    assert (cost["requestedQueryCost"], cost["actualQueryCost"]) == (22, 3)
    assert cost["throttleStatus"]["maximumAvailable"] == 30
    assert 27 <= cost["throttleStatus"]["currentlyAvailable"] <= 28  # 22 taken, 19 refunded
    throttled = graphql(server, query, {"first": 28, "query": 'sku:"A"'})
    assert [e["extensions"]["code"] for e in throttled["errors"]] == ["THROTTLED"]
    assert throttled["extensions"]["cost"]["actualQueryCost"] is None
    too_big = graphql(server, query, {"first": 2000, "query": ""})
    assert [e["extensions"]["code"] for e in too_big["errors"]] == ["MAX_COST_EXCEEDED"]


def test_control_routes_set_levels_list_unlist_and_reset(shopify_channel: Shopify) -> None:
    state, server = shopify_channel
    with httpx.Client(base_url=f"{server.url}/_sandbox", timeout=5) as control:
        control.put("/levels", json={"items": [{"sku": "A", "quantity": 4}]}).raise_for_status()
        control.post("/unlist", json={"skus": ["B"]}).raise_for_status()
        assert control.get("/levels").json() == {"levels": {"A": 4}}
        [change] = control.get("/history", params={"sku": "A"}).json()["history"]
        assert (change["quantity"], change["source"]) == (4, "channel")
        assert not state.listed("B")
        control.post("/list", json={"skus": ["B"], "quantity": 2}).raise_for_status()
        assert state.levels() == {"A": 4, "B": 2}
        control.post("/reset").raise_for_status()
        assert control.get("/levels").json() == {"levels": {}}
        assert control.get("/bucket").json()["maximumAvailable"] == 2000


def test_amazon_answers_errors_in_its_own_shape(amazon_channel: Amazon) -> None:
    state, server = amazon_channel
    state.unlist_skus(["NONE"])
    with httpx.Client(base_url=server.url, timeout=5) as client:
        market = {"marketplaceIds": "ATVPDKIKX0DER"}
        bad = client.patch(LISTINGS + "A", params=market, json={"patches": []})
        assert bad.status_code == 400
        assert bad.json()["errors"][0]["code"] == "InvalidInput"
        missing = client.get(LISTINGS + "NONE", params=market)
        assert missing.status_code == 404
        assert missing.json()["errors"][0]["code"] == "NOT_FOUND"
        no_market = client.get(LISTINGS + "A")
        assert no_market.status_code == 400


def test_amazon_rate_limit_is_a_429_with_retry_after() -> None:
    state = AmazonState(patch_rate=1, patch_burst=1)
    body = {"productType": "PRODUCT", "patches": [{"op": "replace", "path": "/x", "value": []}]}
    with (
        SandboxServer(create_amazon_app(state)) as server,
        httpx.Client(base_url=server.url, timeout=5) as client,
    ):
        params = {"marketplaceIds": "ATVPDKIKX0DER"}
        assert client.patch(LISTINGS + "A", params=params, json=body).status_code == 200
        throttled = client.patch(LISTINGS + "A", params=params, json=body)
    assert throttled.status_code == 429
    assert throttled.json()["errors"][0]["code"] == "QuotaExceeded"
    assert 0 < float(throttled.headers["Retry-After"]) <= 1
    assert state.counters()["throttled"] == 1


def test_amazon_invalid_availability_is_an_invalid_submission(amazon_channel: Amazon) -> None:
    state, server = amazon_channel
    patch = {"op": "replace", "path": "/attributes/fulfillment_availability"}
    body = {
        "productType": "PRODUCT",
        "patches": [patch | {"value": [{"fulfillment_channel_code": "DEFAULT", "quantity": -1}]}],
    }
    answer = httpx.patch(
        f"{server.url}{LISTINGS}NEG", params={"marketplaceIds": "X1"}, json=body, timeout=5
    ).json()
    assert answer["status"] == "INVALID"
    assert answer["issues"][0]["code"] == "INVALID_VALUE"
    assert state.level("NEG") == 0


def test_shopify_inventory_items_pages_by_cursor(shopify_channel: Shopify) -> None:
    _, server = shopify_channel
    query = """query($first: Int!, $after: String, $query: String!) {
      inventoryItems(first: $first, after: $after, query: $query) {
        nodes { id sku } pageInfo { hasNextPage endCursor } } }"""
    search = 'sku:"A" OR sku:"B \\"quoted\\"" OR sku:C'
    first = graphql(server, query, {"first": 2, "query": search})["data"]["inventoryItems"]
    assert [n["sku"] for n in first["nodes"]] == ["A", 'B "quoted"']
    assert first["pageInfo"]["hasNextPage"] is True
    after = first["pageInfo"]["endCursor"]
    rest = graphql(server, query, {"first": 2, "after": after, "query": search})
    page = rest["data"]["inventoryItems"]
    assert [n["sku"] for n in page["nodes"]] == ["C"]
    assert page["pageInfo"]["hasNextPage"] is False
    bad = graphql(server, query, {"first": 2, "after": "nonsense", "query": search})
    assert bad["errors"][0]["extensions"]["code"] == "INVALID_VARIABLE"
