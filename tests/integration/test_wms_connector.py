"""The WMS connector and its HTTP call policy against the sandbox WMS over real TCP."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.responses import Response

from stockkeeper.config import WmsConnectorConfig
from stockkeeper.connectors.http import (
    CallRecord,
    ConnectorRejected,
    ConnectorUnavailable,
    HttpCaller,
    parse_retry_after,
)
from stockkeeper.connectors.wms import OutboundItem, WmsClient, WmsTokenRejected
from stockkeeper.observability.metrics import Metrics
from stockkeeper_sandbox.server import FaultController, Faults, SandboxServer
from stockkeeper_sandbox.wms import WmsState, create_app

TOKEN = "connector-test-token"
ID = "wms-test"


@dataclass
class Wms:
    state: WmsState
    faults: FaultController
    server: SandboxServer


@pytest.fixture
def wms() -> Iterator[Wms]:
    state, faults = WmsState(), FaultController()
    with SandboxServer(create_app(state, token=TOKEN, faults=faults)) as server:
        yield Wms(state, faults, server)
    assert not [t for t in threading.enumerate() if t.name.startswith("sandbox-")]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def config(url: str, **overrides: Any) -> WmsConnectorConfig:
    settings: dict[str, Any] = {
        "id": ID,
        "type": "wms",
        "url": url,
        "rate_limit_rps": 1000,
        "timeout_ms": 2000,
        "max_attempts": 5,
        "backoff_base_ms": 5,
        "backoff_max_ms": 20,
        "page_size": 100,
    }
    return WmsConnectorConfig.model_validate(settings | overrides)


@pytest.fixture
def records() -> list[CallRecord]:
    return []


@pytest.fixture
async def client(wms: Wms, metrics: Metrics, records: list[CallRecord]) -> AsyncIterator[WmsClient]:
    async with WmsClient(
        config(wms.server.url), metrics=metrics, token=TOKEN, on_call=records.append
    ) as c:
        yield c


def tries(metrics: Metrics, operation: str, outcome: str) -> float:
    labels = {"connector": ID, "operation": operation, "outcome": outcome}
    return metrics.registry.get_sample_value("stockkeeper_connector_calls_total", labels) or 0.0


def waited(metrics: Metrics, reason: str) -> float:
    labels = {"connector": ID, "reason": reason}
    name = "stockkeeper_connector_rate_limit_wait_seconds_total"
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_snapshot_pages_through_every_row(
    wms: Wms, client: WmsClient, metrics: Metrics
) -> None:
    wms.state.seed(250, skus=50)
    rows, cursor, pages = [], None, 0
    while True:
        page = await client.stock_page(cursor=cursor)
        rows += page.items
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert (len(rows), pages) == (250, 3)
    assert {(r.sku, r.location, r.lot_number) for r in rows} == {
        (r["sku"], r["location"], r["lot_number"]) for r in wms.state.rows()
    }
    lotted = next(r for r in rows if r.lot_number is not None)
    assert lotted.expires_at is not None
    assert lotted.expires_at.tzinfo is not None
    assert tries(metrics, "stock_page", "ok") == 3
    one = await client.stock_page(sku=rows[0].sku, location=rows[0].location, lot_number="")
    assert one.items == (rows[0],)


async def test_a_bad_row_is_set_aside_and_the_others_pass(
    wms: Wms, client: WmsClient, metrics: Metrics
) -> None:
    wms.state.put("A", "WH", None, 5)
    wms.state.put("B", "WH", None, -2)  # the WMS sends nonsense for B
    wms.state.put("C", "", None, 7)  # no location: the default one
    page = await client.stock_page()
    assert [(r.sku, r.location, r.on_hand) for r in page.items] == [
        ("A", "WH", 5),
        ("C", "default", 7),
    ]
    [bad] = page.rejected
    assert (bad.position, bad.raw["sku"]) == (1, "B")
    assert "on_hand" in bad.error
    assert tries(metrics, "stock_page", "ok") == 1


async def test_retries_through_429_and_503_and_succeeds(
    wms: Wms, metrics: Metrics, records: list[CallRecord]
) -> None:
    wms.state.put("A", "WH", None, 5)
    wms.faults.set(Faults(throttle_rate=0.3, error_rate=0.3, retry_after=0.01, seed=11))
    cfg = config(wms.server.url, max_attempts=20)
    async with WmsClient(cfg, metrics=metrics, token=TOKEN, on_call=records.append) as client:
        tokens = [await client.head_token() for _ in range(15)]
    assert len(set(tokens)) == 1
    calls = wms.faults.calls()
    assert calls["throttled"] > 0
    assert calls["errors"] > 0
    assert tries(metrics, "head_token", "ok") == 15 == calls["ok"]
    assert tries(metrics, "head_token", "rate_limited") == calls["throttled"]
    assert tries(metrics, "head_token", "server_error") == calls["errors"]
    assert len(records) == calls["total"]
    assert {r.outcome for r in records} == {"ok", "rate_limited", "server_error"}
    assert all(r.retry_after == 0.01 for r in records if r.outcome == "rate_limited")


async def test_retry_after_is_waited_at_least(
    wms: Wms, client: WmsClient, metrics: Metrics, records: list[CallRecord]
) -> None:
    # One call in, the bucket is empty for 0.2 s: the next is told so by Retry-After.
    wms.faults.set(Faults(rps=5, burst=1))
    await client.head_token()
    started = time.monotonic()
    await client.head_token()
    elapsed = time.monotonic() - started
    first, second = records[1], records[2]
    assert (first.outcome, first.status, second.outcome) == ("rate_limited", 429, "ok")
    assert first.retry_after is not None
    assert first.retry_after > 0.1
    # The backoff alone is at most 20 ms: the wait came from Retry-After.
    assert elapsed >= first.retry_after
    assert waited(metrics, "retry_after") >= first.retry_after


async def test_gives_up_after_max_attempts(wms: Wms, metrics: Metrics) -> None:
    wms.faults.set(Faults(error_rate=1.0, error_status=502))
    async with WmsClient(config(wms.server.url, max_attempts=3), metrics=metrics, token=TOKEN) as c:
        with pytest.raises(ConnectorUnavailable) as caught:
            await c.head_token()
    assert (caught.value.reason, caught.value.status, caught.value.attempts) == (
        "server_error",
        502,
        3,
    )
    assert wms.faults.calls()["errors"] == 3
    assert tries(metrics, "head_token", "server_error") == 3


async def test_giving_up_on_429_carries_the_retry_after(wms: Wms) -> None:
    wms.faults.set(Faults(throttle_rate=1.0, retry_after=0.05))
    async with WmsClient(config(wms.server.url, max_attempts=2), token=TOKEN) as c:
        with pytest.raises(ConnectorUnavailable) as caught:
            await c.head_token()
    assert (caught.value.reason, caught.value.retry_after) == ("rate_limited", 0.05)


async def test_a_4xx_is_rejected_without_a_retry(
    wms: Wms, client: WmsClient, metrics: Metrics
) -> None:
    with pytest.raises(WmsTokenRejected) as caught:
        await client.changes("garbage")
    assert caught.value.status == 422
    assert "not a change token" in caught.value.body
    async with WmsClient(config(wms.server.url), metrics=metrics, token="wrong") as c:
        with pytest.raises(ConnectorRejected) as denied:
            await c.head_token()
    assert denied.value.status == 401
    assert wms.faults.calls()["total"] == 2
    assert tries(metrics, "changes", "client_error") == 1
    assert tries(metrics, "head_token", "client_error") == 1


async def test_a_hang_ends_at_timeout_ms(wms: Wms, metrics: Metrics) -> None:
    wms.faults.set(Faults(hang=True))
    cfg = config(wms.server.url, timeout_ms=200, max_attempts=1)
    async with WmsClient(cfg, metrics=metrics, token=TOKEN) as c:
        started = time.monotonic()
        with pytest.raises(ConnectorUnavailable) as caught:
            await c.head_token()
        elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout"
    assert 0.2 <= elapsed < 2
    assert tries(metrics, "head_token", "timeout") == 1


async def test_a_deadline_bounds_the_whole_call(wms: Wms) -> None:
    wms.faults.set(Faults(hang=True))
    cfg = config(wms.server.url, timeout_ms=5000, max_attempts=50)
    async with HttpCaller(cfg, token=TOKEN) as caller:
        started = time.monotonic()
        with pytest.raises(ConnectorUnavailable) as caught:
            await caller.call("token", "GET", "/v1/stock/token", lambda r: r, deadline_s=0.3)
        elapsed = time.monotonic() - started
    assert caught.value.reason == "timeout"
    assert 0.3 <= elapsed < 2


async def test_our_rate_limit_paces_the_calls(wms: Wms, metrics: Metrics) -> None:
    rps, calls = 20.0, 30  # a burst of 20, then 20 a second
    async with WmsClient(
        config(wms.server.url, rate_limit_rps=rps), metrics=metrics, token=TOKEN
    ) as c:
        started = time.monotonic()
        await asyncio.gather(*(c.head_token() for _ in range(calls)))
        elapsed = time.monotonic() - started
    assert elapsed >= (calls - rps) / rps
    assert waited(metrics, "own_limit") > 0


async def test_send_applies_each_event_once(wms: Wms, client: WmsClient, metrics: Metrics) -> None:
    items = [
        OutboundItem("e1", "allocate", "o1", "A", "WH", None, 3),
        OutboundItem("e2", "allocate", "o1", "A", "WH", "L1", 1),
    ]
    assert await client.send(items) == {"e1": "applied", "e2": "applied"}
    release = OutboundItem("e3", "release", "o1", "A", "WH", None, 3)
    assert await client.send([items[0], release]) == {"e1": "duplicate", "e3": "applied"}
    assert await client.send([]) == {}
    books = wms.state.books()
    assert set(books["applied"]) == {"e1", "e2", "e3"}
    assert books["duplicates"] == 1
    assert tries(metrics, "send", "ok") == 2
    with pytest.raises(ValueError, match="action"):
        OutboundItem("e4", "steal", "o1", "A", "WH", None, 1)


async def test_changes_follow_the_token(wms: Wms, client: WmsClient) -> None:
    wms.state.put("A", "WH", None, 1)
    since = await client.head_token()
    wms.state.put("B", "WH", None, 2)
    wms.state.put("A", "WH", None, 3)
    page = await client.changes(since)
    assert [(r.sku, r.on_hand) for r in page.items] == [("B", 2), ("A", 3)]
    assert (page.has_more, page.next_token) == (False, await client.head_token())
    first = await client.changes(None, limit=1)
    assert (len(first.items), first.has_more) == (1, True)


@pytest.fixture
def broken() -> Iterator[SandboxServer]:
    """A WMS that answers 200 with things the contract does not allow."""
    app = FastAPI()

    @app.get("/v1/stock")
    async def stock() -> Response:
        return Response(b'{"items": "nope"}', media_type="application/json")

    @app.get("/v1/stock/token")
    async def token() -> Response:
        return Response(b"<html>maintenance</html>", media_type="text/html")

    @app.post("/v1/allocations")
    async def allocations() -> dict[str, Any]:
        return {"results": [{"event_id": "e1", "status": "applied"}]}

    with SandboxServer(app) as server:
        yield server


async def test_an_invalid_answer_is_retried_then_unavailable(
    broken: SandboxServer, metrics: Metrics
) -> None:
    two = [OutboundItem(e, "allocate", "o", "A", "WH", None, 1) for e in ("e1", "e2")]
    async with WmsClient(config(broken.url, max_attempts=2), metrics=metrics) as c:
        calls: list[Callable[[], Awaitable[object]]] = [
            c.stock_page,
            c.head_token,
            lambda: c.send(two),
        ]
        for call in calls:
            with pytest.raises(ConnectorUnavailable) as caught:
                await call()
            assert caught.value.reason == "invalid_response"
            assert caught.value.attempts == 2
    assert "e2" in str(caught.value)
    for operation in ("stock_page", "head_token", "send"):
        assert tries(metrics, operation, "invalid_response") == 2


async def test_a_wms_that_comes_back_is_reached_again(wms: Wms, metrics: Metrics) -> None:
    wms.server.stop()
    cfg = config(wms.server.url, max_attempts=30, backoff_base_ms=20, backoff_max_ms=50)
    async with WmsClient(cfg, metrics=metrics, token=TOKEN) as c:
        call = asyncio.create_task(c.head_token())
        await asyncio.sleep(0.3)
        assert not call.done()
        await asyncio.to_thread(wms.server.start)
        assert await asyncio.wait_for(call, 5) == wms.state.head()
    assert tries(metrics, "head_token", "connect_error") >= 2
    assert tries(metrics, "head_token", "ok") == 1


def test_retry_after_header_forms() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after("0.2") == 0.2
    assert parse_retry_after(later, now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=5), usegmt=True), now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("-3") == 0.0


async def test_a_custom_transport_is_used(wms: Wms) -> None:
    # The seam for tests of callers: any httpx transport (here the real one, with retries
    # of refused connects turned off so ours are the only retries).
    transport = httpx.AsyncHTTPTransport(retries=0)
    async with WmsClient(config(wms.server.url), token=TOKEN, transport=transport) as c:
        assert await c.head_token() == wms.state.head()
