"""A rule change while a push of the old figure is in flight (D-487): that push still
lands, its acknowledgement fenced out, so the new figure is sent even when it equals
the one acknowledged before, and the channel ends showing the rule's figure."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx

from stockkeeper.bootstrap import build
from stockkeeper.config import OutboundWebhookChannelConfig, Settings, ShopifyChannelConfig
from stockkeeper.connectors.channels import ChannelAdapter
from stockkeeper.connectors.outbound_webhook import OutboundWebhookChannel
from stockkeeper.connectors.shopify import ShopifyChannel
from stockkeeper.domain.availability import AvailabilityRule
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.shopify import graphql_url
from tests.conftest import CHANNEL_WEBHOOK_SECRET
from tests.integration.test_propagation import record_all
from tests.support import shopify_sandbox_channel


class Held(httpx.AsyncBaseTransport):
    """Holds each request while ``hold`` is set (a slow channel), then sends it on."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.hold = False
        self.waiting = asyncio.Event()
        self.go = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.hold:
            self.waiting.set()
            await self.go.wait()
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def capped_while_in_flight(
    config: dict[str, Any],
    clock: Any,
    channel: dict[str, Any],
    adapter_of: Callable[[Held], ChannelAdapter],
    shows: Callable[[], dict[str, int]],
) -> dict[str, Any]:
    config["connectors"] = [channel]
    c = await build(Settings.model_validate(config), clock=clock)
    transport = Held()
    adapter = adapter_of(transport)
    name = channel["id"]
    try:
        worker = Propagator(c.propagation, {name: adapter}, c.pool)
        await c.stock.receive(Receipt("TEE", 10, "r-1"))
        await record_all(c, worker)
        assert await worker.push_once(name) == 1
        assert shows() == {"TEE": 10}
        await c.stock.receive(Receipt("TEE", 2, "r-2"))  # 12 available
        await record_all(c, worker)
        transport.hold = True
        flying = asyncio.ensure_future(worker.push_once(name))  # 12, to a slow channel
        await transport.waiting.wait()
        changed = await c.propagation.rules.set_rule(name, AvailabilityRule(cap=10), "op")
        assert changed.repushed == 1
        transport.hold = False
        transport.go.set()
        await flying  # 12 lands; its acknowledgement is fenced out
        while await worker.push_once(name):
            pass
        async with c.pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT status, pushed_quantity, desired_quantity FROM channel_sync_state"
            )
        return dict(row)
    finally:
        await adapter.aclose()
        await c.close()


async def test_on_a_webhook(
    config: dict[str, Any], clock: Any, webhook_channel: Any, monkeypatch: Any
) -> None:
    receiver, server = webhook_channel
    monkeypatch.setenv("HOOK_SECRET", CHANNEL_WEBHOOK_SECRET)
    hook = {
        "id": "hook",
        "type": "outbound_webhook",
        "url": f"{server.url}/levels",
        "secret_env": "HOOK_SECRET",
        "timeout_ms": 5000,
    }
    cfg = OutboundWebhookChannelConfig.model_validate(hook)
    row = await capped_while_in_flight(
        config,
        clock,
        hook,
        lambda t: OutboundWebhookChannel(cfg, secret=CHANNEL_WEBHOOK_SECRET, transport=t),
        receiver.levels,
    )
    assert row == {"status": "SYNCED", "pushed_quantity": 10, "desired_quantity": 10}
    assert receiver.levels() == {"TEE": 10}


async def test_on_shopify(config: dict[str, Any], clock: Any, shopify_channel: Any) -> None:
    shop, server = shopify_channel
    ch = shopify_sandbox_channel(graphql_url(server.url))
    cfg = ShopifyChannelConfig.model_validate(ch)
    row = await capped_while_in_flight(
        config, clock, ch, lambda t: ShopifyChannel(cfg, transport=t), shop.levels
    )
    assert row == {"status": "SYNCED", "pushed_quantity": 10, "desired_quantity": 10}
    assert shop.levels() == {"TEE": 10}
