"""The push side under a backlog (D-350, D-351): claims of the channel's largest batch,
the next batches claimed while calls are in flight, and nothing lost on a stop."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from stockkeeper.bootstrap import Container, build, channel_adapter
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.channel_webhook import WebhookReceiverState
from stockkeeper_sandbox.channel_webhook import create_app as create_receiver_app
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from stockkeeper_sandbox.shopify import create_app as create_shopify_app
from tests.conftest import FakeClock

SECRET_ENV = "SK_TEST_PIPELINE_SECRET"
SECRET = "pipeline-secret-0123456789"


@pytest.fixture
def shop() -> Iterator[tuple[ShopifyState, SandboxServer]]:
    state = ShopifyState()
    with SandboxServer(create_shopify_app(state)) as server:
        yield state, server


@pytest.fixture
def receiver() -> Iterator[tuple[WebhookReceiverState, SandboxServer]]:
    state = WebhookReceiverState(SECRET)
    with SandboxServer(create_receiver_app(state, None)) as server:
        yield state, server


async def rig(
    config: dict[str, Any], clock: FakeClock, channel: dict[str, Any]
) -> tuple[Container, Propagator]:
    config["connectors"] = [{"divergence_sample_s": 0, **channel}]
    config["propagation"] = {"shutdown_grace_s": 0.2}
    c = await build(Settings.model_validate(config), clock=clock)
    [cfg] = c.settings.connectors_of(ChannelConfig)
    return c, Propagator(c.propagation, {cfg.id: channel_adapter(cfg, c.metrics)}, c.pool)


async def due(c: Container, n: int) -> None:
    """``n`` SKUs due on every channel, recorded as the consumer records a bulk message."""
    async with c.pool.acquire() as conn, conn.transaction():
        await c.propagation.record_many(
            conn, [(f"P-{i:04d}", 1, i % 7 + 1) for i in range(n)], datetime.now(UTC), "erp"
        )


async def rows(c: Container, channel: str) -> list[dict[str, Any]]:
    async with c.pool.acquire() as conn:
        found = await conn.fetch(
            "SELECT sku, status, attempts, coalesce(leased_until > now(), false) AS leased "
            "FROM channel_sync_state WHERE channel = $1 ORDER BY sku",
            channel,
        )
    return [dict(r) for r in found]


async def test_a_backlog_goes_to_shopify_in_its_largest_batches(
    config: dict[str, Any],
    clock: FakeClock,
    shop: tuple[ShopifyState, SandboxServer],
) -> None:
    state, server = shop
    c, worker = await rig(
        config,
        clock,
        {
            "id": "shop",
            "type": "shopify",
            "url": graphql_url(server.url),
            "location_id": "gid://shopify/Location/1",
            "batch_size": 50,
            "concurrency": 2,
        },
    )
    try:
        await due(c, 700)
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run(stop))
        try:
            while (await c.propagation.status())["shop"].synced < 700:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await running
    finally:
        await c.close()
    assert state.levels() == {f"P-{i:04d}": i % 7 + 1 for i in range(700)}
    # The first claim, 2 batches of 50, came back full: a backlog. Then 250 a call
    # (250, 250, 100), Shopify's largest, each one mutation of 10 points, not 14 of 50.
    assert state.counters()["mutations"] == 5


async def test_the_next_batches_are_claimed_while_calls_are_in_flight_and_let_go_on_a_stop(
    config: dict[str, Any],
    clock: FakeClock,
    receiver: tuple[WebhookReceiverState, SandboxServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, server = receiver
    monkeypatch.setenv(SECRET_ENV, SECRET)
    c, worker = await rig(
        config,
        clock,
        {
            "id": "hooks",
            "type": "outbound_webhook",
            "url": f"{server.url}/levels",
            "secret_env": SECRET_ENV,
            "batch_size": 10,
            "concurrency": 2,
            "timeout_ms": 60_000,
        },
    )
    try:
        await due(c, 60)
        httpx.put(f"{server.url}/_sandbox/faults", json={"hang": True}).raise_for_status()
        stop = asyncio.Event()
        running = asyncio.ensure_future(worker.run(stop))
        try:
            # Two calls held by the receiver, and a batch claimed for each to follow.
            while sum(r["leased"] for r in await rows(c, "hooks")) < 40:
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.2)
            assert sum(r["leased"] for r in await rows(c, "hooks")) == 40
        finally:
            stop.set()
            await running
        # Stopped: the calls cancelled and the batches never sent are all due again,
        # their attempts given back.
        after = await rows(c, "hooks")
        assert {(r["status"], r["attempts"], r["leased"]) for r in after} == {("PENDING", 0, False)}
        assert state.levels() == {}
    finally:
        httpx.put(f"{server.url}/_sandbox/faults", json={"hang": False}).raise_for_status()
        await c.close()
