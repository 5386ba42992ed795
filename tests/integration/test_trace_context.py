"""Tracing off, the W3C trace context still travels (D-406): a request's traceparent
(the caller's, else a new one) is stored with the outbox rows it writes and put in the
message headers, and a coalesced batch carries its own first request's (log lines: tests/unit)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.messaging.broker import Delivery
from stockkeeper.observability import tracing
from stockkeeper.workers.dispatcher import Dispatcher
from tests.support import auth

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def config(config: dict[str, Any], broker_prefix: str) -> dict[str, Any]:
    config["broker"] = {"prefix": broker_prefix, "poll_ms": 50}
    return config


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    assert not tracing.enabled()
    transport = httpx.ASGITransport(app=create_inventory_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://inv") as c:
        yield c


async def receive(client: httpx.AsyncClient, ref: str, **headers: str) -> None:
    body = {"sku": "SKU-T", "quantity": 3, "reference_id": ref}
    r = await client.post("/inventory/receipts", json=body, headers={**auth(), **headers})
    assert r.status_code == 201, r.text


async def published(c: Container) -> list[Delivery]:
    """Dispatch the outbox and take what reached channel.propagation."""
    broker = await c.connected_broker()
    while await Dispatcher(c.pool, broker, c.metrics).dispatch_once():
        pass
    got: list[Delivery] = []

    async def keep(d: Delivery) -> None:
        got.append(d)
        await d.ack()

    sub = await broker.consume("channel.propagation", keep, prefetch=16)
    try:
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    finally:
        await sub.cancel()
    return got


async def test_a_callers_traceparent_reaches_the_outbox_and_the_message_headers(
    client: httpx.AsyncClient, container: Container
) -> None:
    await receive(client, "r-1", traceparent=CALLER)
    async with container.pool.acquire() as conn:
        stored = await conn.fetch("SELECT DISTINCT trace_context FROM domain_event")
    assert [r["trace_context"] for r in stored] == [CALLER]
    (level,) = await published(container)
    assert level.routing_key == "inventory.level_changed"
    assert level.headers["traceparent"] == CALLER


async def test_without_one_each_request_and_each_message_gets_a_new_trace(
    client: httpx.AsyncClient, container: Container
) -> None:
    await receive(client, "r-1")
    await receive(client, "r-2", traceparent="00-not-a-trace-01")  # malformed: a new one
    got = await published(container)
    assert len(got) == 2
    seen = [d.headers["traceparent"] for d in got]
    for tp in seen:
        assert tracing.valid_traceparent(tp) == tp
        assert tp.endswith("-00")  # nothing recorded it: not sampled
    assert seen[0].split("-")[1] != seen[1].split("-")[1]


async def test_a_coalesced_batch_carries_its_own_first_requests_context(
    config: dict[str, Any], clock: Any
) -> None:
    """The coalescer's flusher is started by one request and outlives it: a later batch
    runs in the context of its own first request, not that one's."""
    config["concurrency"] = {
        "coalesce_window_ms": 200,
        "coalesce_max_batch": 2,
        "coalesce_max_in_flight": 1,
    }
    c = await build(Settings.model_validate(config), clock=clock)
    try:
        transport = httpx.ASGITransport(app=create_inventory_app(c))
        async with httpx.AsyncClient(transport=transport, base_url="http://inv") as client:
            await receive(client, "r-1")
            parents = {f"o-{i}": f"00-{i:032x}-{i + 100:016x}-01" for i in (1, 2, 3)}

            async def reserve(order: str) -> None:
                body = {"order_id": order, "lines": [{"sku": "SKU-T", "quantity": 1}]}
                headers = {**auth(), "traceparent": parents[order]}
                r = await client.post("/inventory/reserve", json=body, headers=headers)
                assert r.status_code == 201, r.text

            # o-1 starts the flusher; o-1 and o-2 are one batch, o-3 the next one.
            await asyncio.gather(*(reserve(o) for o in parents))
        async with c.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT payload->>'order_id' AS o, trace_context FROM domain_event"
                " WHERE event_type = 'inventory.allocated'"
            )
    finally:
        await c.close()
    carried = {r["o"]: r["trace_context"] for r in rows}
    assert carried["o-1"] == parents["o-1"]
    assert carried["o-3"] == parents["o-3"]
