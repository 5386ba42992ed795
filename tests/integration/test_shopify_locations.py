"""Shopify locations (D-280): two of our locations mapped to two Shopify locations, on
a real database and the sandbox shop over TCP. Stock changes at one of our locations
push only the figure of the Shopify location it feeds; a drift at one Shopify location
is repaired there only; the per-channel SKU state shows the figure per location."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from stockkeeper.api.admin import create_admin_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import ChannelConfig, Settings, ShopifyChannelConfig
from stockkeeper.connectors.channel_registry import make_channel
from stockkeeper.connectors.channels import AtLocation, Push
from stockkeeper.connectors.shopify import ShopifyChannel
from stockkeeper.services.stock import Adjustment, Receipt
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from stockkeeper_sandbox.shopify import create_app as create_shopify_app
from tests.conftest import FakeClock
from tests.integration.test_propagation import record_all
from tests.support import ADMIN_TOKEN, auth

BERLIN_GID = "gid://shopify/Location/11"
PARIS_GID = "gid://shopify/Location/22"
CHANNEL = "shopify-eu"


@pytest.fixture
def shop() -> Iterator[tuple[ShopifyState, SandboxServer]]:
    state = ShopifyState(location_ids=[BERLIN_GID, PARIS_GID])
    with SandboxServer(create_shopify_app(state)) as server:
        yield state, server


@pytest.fixture
async def rig(
    config: dict[str, Any], clock: FakeClock, shop: tuple[ShopifyState, SandboxServer]
) -> AsyncIterator[tuple[Container, Propagator]]:
    config["connectors"] = [
        {
            "id": CHANNEL,
            "type": "shopify",
            "url": graphql_url(shop[1].url),
            "rate_limit_rps": 1000,
            "locations": [
                {"location_id": BERLIN_GID, "our_locations": ["berlin"]},
                {"location_id": PARIS_GID, "our_locations": ["paris"]},
            ],
        }
    ]
    c = await build(Settings.model_validate(config), clock=clock)
    adapters = {
        cfg.id: make_channel(cfg, token=None) for cfg in c.settings.connectors_of(ChannelConfig)
    }
    yield c, Propagator(c.propagation, adapters, c.pool)
    for adapter in adapters.values():
        await adapter.aclose()
    await c.close()


async def record_and_push(c: Container, worker: Propagator) -> None:
    await record_all(c, worker)
    while await worker.push_once(CHANNEL):
        pass


def at(state: ShopifyState, sku: str) -> tuple[int | None, int | None]:
    return state.level_at(sku, BERLIN_GID), state.level_at(sku, PARIS_GID)


async def test_each_location_gets_its_figure_and_only_changed_ones_are_sent(
    rig: tuple[Container, Propagator], shop: tuple[ShopifyState, SandboxServer]
) -> None:
    c, worker = rig
    state, _ = shop
    await c.stock.receive(Receipt("MUG", 5, "r-1", location="berlin"))
    await c.stock.receive(Receipt("MUG", 3, "r-2", location="paris"))
    await c.stock.receive(Receipt("CUP", 2, "r-3", location="paris"))
    await record_and_push(c, worker)
    assert at(state, "MUG") == (5, 3)
    assert at(state, "CUP") == (0, 2)
    mutations, sets = state.counters()["mutations"], state.counters()["location_sets"]
    assert mutations == 1  # both SKUs, both locations: one inventorySetQuantities
    # Stock arrives in Berlin only: only the Berlin figure is sent.
    await c.stock.receive(Receipt("MUG", 4, "r-4", location="berlin"))
    await record_and_push(c, worker)
    assert at(state, "MUG") == (9, 3)
    assert state.counters()["mutations"] == mutations + 1
    assert state.counters()["location_sets"] == sets + 1
    assert state.pushed("MUG") == [5, 9]  # Berlin's book: 5 then 9
    # The per-channel SKU state shows the figure pushed at each Shopify location.
    app = create_admin_app(c)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        r = await client.get(f"/admin/channels/{CHANNEL}/skus/MUG", headers=auth(ADMIN_TOKEN))
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["desired_quantity"], doc["pushed_quantity"]) == (12, 12)
    shown = {loc["location_id"]: loc for loc in doc["locations"]}
    assert shown[BERLIN_GID]["pushed_quantity"] == 9
    assert shown[PARIS_GID]["pushed_quantity"] == 3
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        r = await client.get("/admin/status", headers=auth(ADMIN_TOKEN))
    assert r.json()["channels"][CHANNEL]["locations"] == [BERLIN_GID, PARIS_GID]


async def test_a_move_between_our_locations_moves_the_figures(
    rig: tuple[Container, Propagator], shop: tuple[ShopifyState, SandboxServer]
) -> None:
    c, worker = rig
    state, _ = shop
    await c.stock.receive(Receipt("TEE", 4, "r-1", location="berlin"))
    await record_and_push(c, worker)
    assert at(state, "TEE") == (4, 0)
    # The total stays 4, the split changes: pushed all the same (no NOOP on the total).
    await c.stock.receive(Receipt("TEE", 2, "r-2", location="paris"))
    level = await c.stock.get("TEE")
    (batch,) = [b for b in level.batches if b.location == "berlin"]
    await c.stock.adjust(Adjustment("TEE", "on_hand", "moved", "adj-1", batch.batch_id, -2))
    await record_and_push(c, worker)
    assert at(state, "TEE") == (2, 2)


async def test_drift_at_one_location_is_repaired_there_only(
    rig: tuple[Container, Propagator], shop: tuple[ShopifyState, SandboxServer]
) -> None:
    c, worker = rig
    state, _ = shop
    await c.stock.receive(Receipt("HAT", 6, "r-1", location="berlin"))
    await c.stock.receive(Receipt("HAT", 7, "r-2", location="paris"))
    await c.stock.receive(Receipt("CAP", 1, "r-3", location="paris"))
    await record_and_push(c, worker)
    assert at(state, "HAT") == (6, 7)
    # Someone edits Paris behind our back; the total Shopify shows moves too.
    state.set_level_at("HAT", PARIS_GID, 30)
    sets = state.counters()["location_sets"]
    found = await c.propagation.reconcile(worker.adapters[CHANNEL])
    assert (found.checked, found.drifted) == (2, 1)
    assert at(state, "HAT") == (6, 30)  # the repair marks it due; the sender pushes
    while await worker.push_once(CHANNEL):
        pass
    assert at(state, "HAT") == (6, 7)
    assert state.counters()["location_sets"] == sets + 1  # Paris alone was set
    assert state.counters().get("stale", 0) == 0  # compared from what Paris showed
    assert state.pushed("HAT") == [6]  # Berlin was never written again
    # In sync now: a second repair finds nothing.
    assert (await c.propagation.reconcile(worker.adapters[CHANNEL])).drifted == 0


async def test_a_stale_location_is_read_again_and_set_there(
    rig: tuple[Container, Propagator], shop: tuple[ShopifyState, SandboxServer]
) -> None:
    c, worker = rig
    state, _ = shop
    await c.stock.receive(Receipt("BAG", 5, "r-1", location="berlin"))
    await c.stock.receive(Receipt("BAG", 5, "r-2", location="paris"))
    await record_and_push(c, worker)
    state.set_level_at("BAG", PARIS_GID, 1)  # a sale in Paris we have not heard of
    await c.stock.receive(Receipt("BAG", 1, "r-3", location="paris"))
    await record_and_push(c, worker)
    assert at(state, "BAG") == (5, 6)
    assert state.counters()["stale"] == 1


async def test_a_rule_change_that_moves_the_split_but_not_the_sum_is_pushed(
    rig: tuple[Container, Propagator], shop: tuple[ShopifyState, SandboxServer]
) -> None:
    c, worker = rig
    state, _ = shop
    await c.stock.receive(Receipt("JUG", 10, "r-1", location="berlin"))
    await c.stock.receive(Receipt("JUG", 4, "r-2", location="paris"))
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as client:
        r = await client.put(
            f"/admin/channels/{CHANNEL}/rules", json={"cap": 8}, headers=auth(ADMIN_TOKEN)
        )
        assert r.status_code == 200, r.text
        await record_and_push(c, worker)
        assert at(state, "JUG") == (8, 4)
        # A buffer of 1 instead of the cap: 9 + 3, the same 12 in all (D-445).
        r = await client.put(
            f"/admin/channels/{CHANNEL}/rules", json={"buffer": 1}, headers=auth(ADMIN_TOKEN)
        )
        assert r.json()["repushed"] == 1
    while await worker.push_once(CHANNEL):
        pass
    assert at(state, "JUG") == (9, 3)


# -- the adapter and the sandbox shop, without a database ---------------------------------


@pytest.fixture
async def adapter(shop: tuple[ShopifyState, SandboxServer]) -> AsyncIterator[ShopifyChannel]:
    cfg = ShopifyChannelConfig.model_validate(
        {
            "id": CHANNEL,
            "type": "shopify",
            "url": graphql_url(shop[1].url),
            "rate_limit_rps": 1000,
            "locations": [
                {"location_id": BERLIN_GID, "our_locations": ["berlin"]},
                {"location_id": PARIS_GID, "our_locations": ["paris"]},
            ],
        }
    )
    channel = ShopifyChannel(cfg)
    yield channel
    await channel.aclose()


async def test_a_location_that_does_not_stock_the_item_is_left_out(
    adapter: ShopifyChannel, shop: tuple[ShopifyState, SandboxServer]
) -> None:
    state, _ = shop
    state.list_skus(["ONLY-BERLIN"])
    state.unstock(["ONLY-BERLIN"], PARIS_GID)
    spots = (AtLocation(BERLIN_GID, 4), AtLocation(PARIS_GID, 2))
    [outcome] = await adapter.push([Push("ONLY-BERLIN", 6, 1, locations=spots)])
    assert (outcome.status, outcome.quantity, outcome.locations) == ("ok", 4, {BERLIN_GID: 4})
    assert outcome.error == f"not stocked at {PARIS_GID}"
    assert at(state, "ONLY-BERLIN") == (4, None)
    state.unlist_skus(["NOWHERE"])
    shown = await adapter.read_locations(["ONLY-BERLIN", "NOWHERE"], {})
    assert shown == {"ONLY-BERLIN": {BERLIN_GID: 4, PARIS_GID: None}, "NOWHERE": None}
    # Stocked nowhere we map: the SKU is unlisted on the channel.
    state.list_skus(["AWAY"])
    state.unstock(["AWAY"])
    [away] = await adapter.push([Push("AWAY", 1, 1, locations=(AtLocation(PARIS_GID, 1),))])
    assert away.status == "unlisted"


async def test_the_sandbox_answers_per_location_as_shopify_does(
    shop: tuple[ShopifyState, SandboxServer],
) -> None:
    state, server = shop
    state.list_skus(["MUG"], quantity=3)
    gid = state.gid("MUG")
    url = graphql_url(server.url)
    mutation = (
        "mutation M($input: InventorySetQuantitiesInput!, $k: String!) {"
        " inventorySetQuantities(input: $input) @idempotent(key: $k) {"
        " userErrors { code field message } } }"
    )

    def entry(location: str, quantity: int, change_from: int | None) -> dict[str, Any]:
        return {
            "inventoryItemId": gid,
            "locationId": location,
            "quantity": quantity,
            "changeFromQuantity": change_from,
        }

    async with httpx.AsyncClient() as client:
        body = {
            "name": "available",
            "reason": "correction",
            "quantities": [entry(PARIS_GID, 5, 0), entry("gid://shopify/Location/99", 1, None)],
        }
        r = await client.post(url, json={"query": mutation, "variables": {"input": body, "k": "1"}})
        errors = r.json()["data"]["inventorySetQuantities"]["userErrors"]
        assert [(e["code"], e["field"]) for e in errors] == [
            ("INVALID_LOCATION", ["input", "quantities", "1", "locationId"])
        ]
        assert at(state, "MUG") == (3, 0)  # all or nothing
        body["quantities"] = [entry(PARIS_GID, 5, 0), entry(BERLIN_GID, 1, 3)]
        r = await client.post(url, json={"query": mutation, "variables": {"input": body, "k": "2"}})
        assert r.json()["data"]["inventorySetQuantities"]["userErrors"] == []
    assert at(state, "MUG") == (1, 5)
    assert state.levels_by_location() == {BERLIN_GID: {"MUG": 1}, PARIS_GID: {"MUG": 5}}


def test_the_sandbox_control_routes_set_and_show_levels_per_location(
    shop: tuple[ShopifyState, SandboxServer],
) -> None:
    state, server = shop
    state.list_skus(["MUG"], quantity=2)
    body = {"sku": "MUG", "location_id": PARIS_GID, "quantity": 8}
    r = httpx.put(f"{server.url}/_sandbox/locations/levels", json=body, timeout=5)
    assert r.status_code == 200
    assert at(state, "MUG") == (2, 8)
    items = httpx.get(f"{server.url}/_sandbox/items", timeout=5).json()
    assert items["location_ids"] == [BERLIN_GID, PARIS_GID]
    assert items["levels"] == {BERLIN_GID: {"MUG": 2}, PARIS_GID: {"MUG": 8}}
    unknown = {**body, "location_id": "gid://shopify/Location/99"}
    assert (
        httpx.put(f"{server.url}/_sandbox/locations/levels", json=unknown, timeout=5).status_code
        == 404
    )
