"""Per-channel availability rules through the admin API, on a real database and the
sandbox Shopify: the figure each channel is shown, a rule change re-pushing the SKUs it
affects (and only those), SKU overrides, the change log, and the per-channel SKU state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stockkeeper.api.admin import create_admin_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.channel_registry import make_channel
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from tests.support import ADMIN_TOKEN, auth, shopify_sandbox_channel

ADMIN = auth(ADMIN_TOKEN)


def channel(server: SandboxServer, **rules: Any) -> dict[str, Any]:
    return shopify_sandbox_channel(graphql_url(server.url), rules=rules)


@pytest.fixture
async def ruled(
    config: dict[str, Any], clock: Any, shopify_channel: tuple[ShopifyState, SandboxServer]
) -> AsyncIterator[tuple[httpx.AsyncClient, Container, ShopifyState]]:
    state, server = shopify_channel
    rules = {"buffer": 1, "skus": {"RARE": {"cap": 2}}}
    settings = Settings.model_validate({**config, "connectors": [channel(server, **rules)]})
    c = await build(settings, clock=clock)
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        yield http, c, state
    await c.close()


async def deliver(c: Container, sku: str) -> None:
    """What the propagation consumer does with the SKU's newest level."""
    async with c.pool.acquire() as conn, conn.transaction():
        lv = (await c.stock.get_many([sku]))[0]
        await c.propagation.record(conn, sku, lv.version, lv.available, c.clock(), None)


async def drain(c: Container) -> int:
    adapter = make_channel(c.settings.connectors_of(ChannelConfig)[0], token=None)
    pushed = 0
    try:
        while n := await c.propagation.push_next(adapter):
            pushed += n
    finally:
        await adapter.aclose()
    return pushed


async def test_the_rule_shapes_the_figure_and_a_change_repushes_what_it_affects(
    ruled: tuple[httpx.AsyncClient, Container, ShopifyState],
) -> None:
    http, c, shop = ruled
    await c.stock.receive(Receipt("TEE", 37, "r-1", "berlin"))
    await c.stock.receive(Receipt("TEE", 20, "r-2", "paris"))
    await c.stock.receive(Receipt("TEE", 100, "r-3", "leeds"))
    await c.stock.receive(Receipt("RARE", 9, "r-4", "berlin"))
    await c.stock.receive(Receipt("CAP", 3, "r-5", "paris"))
    for sku in ("TEE", "RARE", "CAP"):
        await deliver(c, sku)
    await drain(c)
    # The config's rule: a buffer of 1; RARE's override caps it at 2 (less the buffer).
    assert shop.levels() == {"TEE": 156, "RARE": 1, "CAP": 2}

    # The worked example of docs/channels.md: berlin and paris, 50 %, cap 25, buffer 2.
    rule = {"locations": ["berlin", "paris"], "buffer": 2, "cap": 25, "share_percent": 50}
    r = await http.put("/admin/channels/shop/rules", json=rule, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json() == {"channel": "shop", "sku": None, "repushed": 3}
    await drain(c)
    # TEE: floor(57 x 50 %) = 28, capped 25, less 2 = 23. RARE keeps its cap of 2 (its
    # override) from berlin's 9: min(2, 4) - 2 = 0. CAP: floor(1.5) = 1, less 2: 0.
    assert shop.levels() == {"TEE": 23, "RARE": 0, "CAP": 0}

    r = await http.get("/admin/channels/shop/skus/TEE", headers=ADMIN)
    assert r.status_code == 200
    doc = r.json()
    assert (doc["desired_quantity"], doc["pushed_quantity"], doc["status"]) == (23, 23, "SYNCED")
    assert doc["desired_rule"] == "locations=berlin,paris share=50% cap=25 buffer=2"
    assert doc["rule"] == rule

    # A SKU override re-pushes that SKU only.
    before = shop.pushed("TEE"), shop.pushed("CAP")
    r = await http.put(
        "/admin/channels/shop/rules/skus/CAP", json={"buffer": 0, "clear_cap": True}, headers=ADMIN
    )
    assert r.json()["repushed"] == 1
    await drain(c)
    assert shop.levels()["CAP"] == 1
    assert shop.pushed("TEE") == before[0]
    assert len(shop.pushed("CAP")) == len(before[1]) + 1

    # The same rule again changes no figure: nothing is pushed.
    r = await http.put("/admin/channels/shop/rules", json=rule, headers=ADMIN)
    assert r.json()["repushed"] == 0
    assert await drain(c) == 0

    # Removing the stored override falls back to the channel's rule; the log has it all.
    r = await http.delete("/admin/channels/shop/rules/skus/CAP", headers=ADMIN)
    assert r.json()["repushed"] == 1
    await drain(c)
    assert shop.levels()["CAP"] == 0
    got = (await http.get("/admin/channels/shop/rules", headers=ADMIN)).json()
    assert got["source"] == "stored"
    assert got["overrides"] == [
        {
            "sku": "RARE",
            "locations": None,
            "buffer": None,
            "cap": 2,
            "share_percent": None,
            "clear_cap": False,
            "source": "config",
        }
    ]
    log = (await http.get("/admin/channels/shop/rules/changes", headers=ADMIN)).json()["items"]
    assert [(e["sku"], e["changed_by"], e["repushed"]) for e in log] == [
        (None, "admin", 3),
        ("CAP", "admin", 1),
        (None, "admin", 0),
        ("CAP", "admin", 1),
    ]
    assert log[0]["before"] is None
    assert log[0]["after"]["cap"] == 25
    assert log[3]["after"] is None


async def test_new_stock_is_figured_by_the_stored_rule(
    ruled: tuple[httpx.AsyncClient, Container, ShopifyState],
) -> None:
    http, c, shop = ruled
    # A rule names locations we know (D-446): paris is, once stock was received there.
    await c.stock.receive(Receipt("SEED", 1, "r-0", "paris"))
    rule = {"locations": ["paris"], "share_percent": 10}
    assert (await http.put("/admin/channels/shop/rules", json=rule, headers=ADMIN)).json()[
        "repushed"
    ] == 1  # SEED: floor(0.1) = 0, never told the channel anything
    await c.stock.receive(Receipt("MUG", 95, "r-1", "paris"))
    await c.stock.receive(Receipt("MUG", 50, "r-2", "berlin"))
    await deliver(c, "MUG")
    await drain(c)
    assert shop.levels() == {"SEED": 0, "MUG": 9}


async def test_rules_are_checked_and_channels_must_exist(
    ruled: tuple[httpx.AsyncClient, Container, ShopifyState],
) -> None:
    http, _c, _shop = ruled
    bad = [{"share_percent": 101}, {"buffer": -1}, {"cap": "ten"}, {"colour": "red"}]
    for body in bad:
        r = await http.put("/admin/channels/shop/rules", json=body, headers=ADMIN)
        assert r.status_code == 422, body
    r = await http.put("/admin/channels/nope/rules", json={}, headers=ADMIN)
    assert r.status_code == 404
    assert (await http.get("/admin/channels/shop/rules")).status_code == 401
    r = await http.delete("/admin/channels/shop/rules/skus/NONE", headers=ADMIN)
    assert r.status_code == 404
    assert (await http.get("/admin/channels/shop/skus/NONE", headers=ADMIN)).status_code == 404


async def test_a_rule_naming_an_unknown_location_or_a_cap_it_clears_is_refused(
    ruled: tuple[httpx.AsyncClient, Container, ShopifyState],
) -> None:
    http, c, shop = ruled
    await c.stock.receive(Receipt("TEE", 8, "r-1", "berlin"))
    await deliver(c, "TEE")
    await drain(c)
    assert shop.levels() == {"TEE": 7}
    # A typo in a location would show the channel 0 of everything: refused (D-446).
    for path in ("/admin/channels/shop/rules", "/admin/channels/shop/rules/skus/TEE"):
        r = await http.put(path, json={"locations": ["berlin", "berln"]}, headers=ADMIN)
        assert r.status_code == 422, (path, r.text)
        assert r.headers["content-type"] == "application/problem+json"
        doc = r.json()
        assert doc["type"] == "validation"
        assert doc["errors"] == [{"field": "body.locations", "message": "unknown location: berln"}]
    # A cap and clear_cap together say two things: refused, not read as the cap.
    r = await http.put(
        "/admin/channels/shop/rules/skus/TEE", json={"cap": 3, "clear_cap": True}, headers=ADMIN
    )
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == "body"
    got = (await http.get("/admin/channels/shop/rules", headers=ADMIN)).json()
    assert (got["source"], [o["sku"] for o in got["overrides"]]) == ("config", ["RARE"])
    assert (await http.get("/admin/channels/shop/rules/changes", headers=ADMIN)).json()[
        "items"
    ] == []
    assert await drain(c) == 0
    assert shop.levels() == {"TEE": 7}


async def test_the_rules_name_locations_of_the_config_that_feed_nothing(
    config: dict[str, Any], clock: Any, shopify_channel: tuple[ShopifyState, SandboxServer]
) -> None:
    _, server = shopify_channel
    # The config is read before the database is: its typos are shown, not refused (D-449).
    rules = {"locations": ["berlin", "lodnon"], "skus": {"RARE": {"locations": ["pari"]}}}
    settings = Settings.model_validate({**config, "connectors": [channel(server, **rules)]})
    c = await build(settings, clock=clock)
    try:
        await c.stock.receive(Receipt("TEE", 3, "r-1", "berlin"))
        transport = httpx.ASGITransport(app=create_admin_app(c))
        async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
            got = (await http.get("/admin/channels/shop/rules", headers=ADMIN)).json()
            assert got["unknown_locations"] == ["lodnon", "pari"]
            await c.stock.receive(Receipt("TEE", 3, "r-2", "pari"))
            got = (await http.get("/admin/channels/shop/rules", headers=ADMIN)).json()
            assert got["unknown_locations"] == ["lodnon"]
    finally:
        await c.close()


async def test_a_sku_with_a_slash_has_its_state_and_override_on_the_channel(
    ruled: tuple[httpx.AsyncClient, Container, ShopifyState],
) -> None:
    http, c, shop = ruled
    await c.stock.receive(Receipt("TEE/RED/M", 5, "r-1", "berlin"))
    await deliver(c, "TEE/RED/M")
    await drain(c)
    assert shop.levels() == {"TEE/RED/M": 4}
    # A SKU is any printable text: its slashes come percent-encoded in the path (D-448).
    r = await http.get("/admin/channels/shop/skus/TEE%2FRED%2FM", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert (r.json()["sku"], r.json()["pushed_quantity"]) == ("TEE/RED/M", 4)
    r = await http.put(
        "/admin/channels/shop/rules/skus/TEE%2FRED%2FM", json={"cap": 2}, headers=ADMIN
    )
    assert r.json() == {"channel": "shop", "sku": "TEE/RED/M", "repushed": 1}
    await drain(c)
    assert shop.levels() == {"TEE/RED/M": 1}
    r = await http.delete("/admin/channels/shop/rules/skus/TEE%2FRED%2FM", headers=ADMIN)
    assert r.json()["repushed"] == 1


async def test_drift_repair_compares_with_the_ruled_figure_not_the_raw_stock(
    ruled: tuple[httpx.AsyncClient, Container, ShopifyState],
) -> None:
    _, c, shop = ruled
    await c.stock.receive(Receipt("TEE", 10, "r-1"))
    await c.stock.receive(Receipt("RARE", 9, "r-2"))
    for sku in ("TEE", "RARE"):
        await deliver(c, sku)
    await drain(c)
    assert shop.levels() == {"TEE": 9, "RARE": 1}  # a buffer of 1; RARE capped at 2
    adapter = make_channel(c.settings.connectors_of(ChannelConfig)[0], token=None)
    try:
        # The channel shows what the rule says: no drift, nothing to push.
        found = await c.propagation.reconcile(adapter)
        assert (found.checked, found.drifted) == (2, 0)
        assert await drain(c) == 0
        assert shop.levels() == {"TEE": 9, "RARE": 1}
        # A real drift is repaired back to the ruled figure, never to the raw stock.
        shop.set_level("TEE", 4)
        found = await c.propagation.reconcile(adapter)
        assert (found.checked, found.drifted) == (2, 1)
    finally:
        await adapter.aclose()
    await drain(c)
    assert shop.levels() == {"TEE": 9, "RARE": 1}


async def test_a_rule_edited_in_the_config_reaches_every_sku_at_the_next_start(
    config: dict[str, Any], clock: Any, shopify_channel: tuple[ShopifyState, SandboxServer]
) -> None:
    shop, server = shopify_channel
    first = {"buffer": 1, "skus": {"RARE": {"cap": 2}}}
    settings = Settings.model_validate({**config, "connectors": [channel(server, **first)]})
    c = await build(settings, clock=clock)
    for sku in ("TEE", "RARE", "MUG"):
        await c.stock.receive(Receipt(sku, 10, f"r-{sku}", "berlin"))
        await deliver(c, sku)
    await drain(c)
    await c.close()
    assert shop.levels() == {"TEE": 9, "RARE": 1, "MUG": 9}
    # The config now holds back 3, and MUG gets an override; no stock changes (D-447).
    edited = {"buffer": 3, "skus": {"RARE": {"cap": 2}, "MUG": {"cap": 5}}}
    c = await build(
        Settings.model_validate({**config, "connectors": [channel(server, **edited)]}),
        clock=clock,
    )
    adapters = {
        cfg.id: make_channel(cfg, token=None) for cfg in c.settings.connectors_of(ChannelConfig)
    }
    worker = Propagator(c.propagation, adapters, c.pool)
    stop = asyncio.Event()
    running = asyncio.ensure_future(worker.run(stop))
    try:
        deadline = time.monotonic() + 20
        while shop.levels() != {"TEE": 7, "RARE": 0, "MUG": 2}:
            assert time.monotonic() < deadline, shop.levels()
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
        await c.close()
    # Each SKU was told its new figure once.
    assert [len(shop.pushed(sku)) for sku in ("TEE", "RARE", "MUG")] == [2, 2, 2]
