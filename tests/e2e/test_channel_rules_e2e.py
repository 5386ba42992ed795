"""A rule change end to end: ``run dispatcher``, ``run propagator`` and ``run admin-api``
as real processes on PostgreSQL and RabbitMQ, the sandbox Shopify over HTTP. A PUT of
the channel's rule re-pushes the SKUs whose figure it changes, and only those."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.e2e.test_propagation import (
    SECRET,
    SECRET_ENV,
    Shop,
    settings_for,
    shop,  # noqa: F401 - the fixture
    shopify_cfg,
    shows,
    start_pipeline,
)
from tests.support import ADMIN_TOKEN, auth, free_port

pytestmark = pytest.mark.slow


async def admin_ready(port: int) -> bool:
    async with httpx.AsyncClient() as http:
        try:
            return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
        except httpx.TransportError:
            return False


async def test_a_rule_change_through_the_admin_api_re_pushes_what_it_affects(
    db_url: str,
    rabbit_url: str,
    broker_prefix: str,
    tmp_path: Path,
    shop: Shop,  # noqa: F811
    shopify_channel: tuple[ShopifyState, SandboxServer],
) -> None:
    state, server = shopify_channel
    cfg = settings_for(db_url, rabbit_url, broker_prefix, [shopify_cfg(server)])
    admin_port = free_port()
    cfg["api"] = {**cfg["api"], "inventory_port": free_port(), "admin_port": admin_port}
    with Children(tmp_path) as children:
        start_pipeline(children, cfg)
        admin = Child(
            ["run", "admin-api"], cfg, tmp_path, label="admin-api", extra_env={SECRET_ENV: SECRET}
        )
        children.all.append(admin)
        admin.start()
        await shop.receive("BIG", 40)
        await shop.receive("SMALL", 3)
        await wait_until(shows(state, "BIG", 40), timeout=30, what="BIG", children=children)
        await wait_until(shows(state, "SMALL", 3), timeout=30, what="SMALL", children=children)
        small_pushes = len(state.pushed("SMALL"))

        async def ready() -> bool:
            return await admin_ready(admin_port)

        await wait_until(ready, timeout=30, what="admin-api", children=children)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{admin_port}") as http:
            r = await http.put(
                "/admin/channels/shopify-main/rules",
                json={"cap": 25},
                headers=auth(ADMIN_TOKEN),
            )
            assert r.status_code == 200, r.text
            assert r.json()["repushed"] == 1  # BIG only: SMALL's figure is unchanged
            await wait_until(
                shows(state, "BIG", 25), timeout=30, what="BIG capped", children=children
            )

            async def booked() -> bool:
                # The sandbox shows the figure when the call arrives; the propagator books
                # it when the answer is back: wait for that, not for the sandbox alone.
                r = await http.get(
                    "/admin/channels/shopify-main/skus/BIG", headers=auth(ADMIN_TOKEN)
                )
                return bool(r.json()["pushed_quantity"] == 25)

            await wait_until(booked, timeout=30, what="BIG booked", children=children)
            doc = (
                await http.get("/admin/channels/shopify-main/skus/BIG", headers=auth(ADMIN_TOKEN))
            ).json()
            assert (doc["pushed_quantity"], doc["desired_rule"]) == (
                25,
                "locations=all share=100% cap=25 buffer=0",
            )
            # New stock is figured by the stored rule from now on.
            await shop.receive("SMALL", 30)
            await wait_until(
                shows(state, "SMALL", 25), timeout=30, what="SMALL capped", children=children
            )
    assert len(state.pushed("SMALL")) == small_pushes + 1
