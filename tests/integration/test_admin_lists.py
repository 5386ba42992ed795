"""The admin lists and "poll now" in process, on a real database: keyset pages that
add up to the whole, filters that hold, and a real marketplace poller woken by a poll
request through PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from stockkeeper.api.admin import create_admin_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import MarketplaceConnectorConfig, Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.pollers import MarketplacePoller
from stockkeeper_sandbox.marketplace import MarketplaceState
from stockkeeper_sandbox.server import SandboxServer
from tests.e2e.messaging_helpers import wait_until
from tests.support import ADMIN_TOKEN, READER_TOKEN, auth


@pytest.fixture
def config(
    config: dict[str, Any], broker_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("SHOP_HOOK_SECRET", "s3cret")
    config["broker"] = {"prefix": broker_prefix, "poll_ms": 50}
    config["connectors"] = [
        {"id": "wms-main", "type": "wms", "url": "http://127.0.0.1:9"},
        {
            "id": "shop",
            "type": "outbound_webhook",
            "url": "http://127.0.0.1:9/hook",
            "secret_env": "SHOP_HOOK_SECRET",
        },
    ]
    return config


@pytest.fixture
async def client(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(container))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin", headers=auth(ADMIN_TOKEN)
    ) as c:
        yield c


async def walk(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a list, page by page."""
    items: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        query = {**params, **({"after": after} if after else {})}
        r = await client.get(path, params=query)
        assert r.status_code == 200, r.text
        doc = r.json()
        items += doc["items"]
        after = doc["next"]
        if after is None:
            return items


async def test_skus_page_by_keyset_search_by_prefix_and_filter(
    container: Container, client: httpx.AsyncClient
) -> None:
    for i in range(7):
        await container.stock.receive(Receipt(f"TEA-{i}", i + 1, f"r-tea-{i}"))
    await container.stock.receive(Receipt("TEAPOT", 3, "r-pot"))
    await container.stock.receive(Receipt("COFFEE", 2, "r-coffee"))
    await container.reservations.reserve(ReserveRequest("o-1", (OrderLine("TEAPOT", 3),)))

    everything = await walk(client, "/admin/skus", limit=2)
    assert [s["sku"] for s in everything] == sorted(
        ["COFFEE", "TEAPOT", *(f"TEA-{i}" for i in range(7))]
    )
    tea = await walk(client, "/admin/skus", prefix="TEA-", limit=3)
    assert [s["sku"] for s in tea] == [f"TEA-{i}" for i in range(7)]
    sold_out = await walk(client, "/admin/skus", sold_out="true")
    assert {s["sku"] for s in sold_out} == {"TEAPOT"}
    pot = next(s for s in sold_out if s["sku"] == "TEAPOT")
    assert (pot["on_hand"], pot["reserved"], pot["available"]) == (3, 3, 0)
    assert await walk(client, "/admin/skus", short="true") == []
    assert (await client.get("/admin/skus", params={"limit": 501})).status_code == 422


async def test_reservations_by_status_sku_and_expiry(
    container: Container, client: httpx.AsyncClient, clock: Any
) -> None:
    await container.stock.receive(Receipt("MILK", 100, "r-milk"))
    await container.stock.receive(Receipt("BREAD", 100, "r-bread"))
    for i in range(5):
        await container.reservations.reserve(
            ReserveRequest(f"o-{i}", (OrderLine("MILK", 1),), ttl_seconds=60 * (i + 1))
        )
    await container.reservations.reserve(ReserveRequest("o-bread", (OrderLine("BREAD", 2),)))
    await container.reservations.release("o-0")

    pending = await walk(client, "/admin/reservations", status="PENDING", limit=2)
    assert [r["order_id"] for r in pending] == ["o-1", "o-2", "o-3", "o-4", "o-bread"]
    bread = await walk(client, "/admin/reservations", sku="BREAD")
    assert [(r["order_id"], r["lines"]) for r in bread] == [
        ("o-bread", [{"sku": "BREAD", "quantity": 2}])
    ]
    soon = await walk(client, "/admin/reservations", expiring_within_s=180, limit=1)
    assert [r["order_id"] for r in soon] == ["o-1", "o-2"]  # o-0 is released
    bad = await client.get("/admin/reservations", params={"expiring_within_s": 1, "after": "x"})
    assert bad.status_code == 422


async def test_the_expiring_reservations_keep_the_sku_and_status_filters(
    container: Container, client: httpx.AsyncClient
) -> None:
    await container.stock.receive(Receipt("MILK", 100, "r-milk"))
    await container.stock.receive(Receipt("BREAD", 100, "r-bread"))
    for i, sku in enumerate(["MILK", "BREAD", "MILK", "BREAD"]):
        await container.reservations.reserve(
            ReserveRequest(f"o-{i}", (OrderLine(sku, 1),), ttl_seconds=60 * (i + 1))
        )
    await container.reservations.confirm("o-1")

    bread = await walk(client, "/admin/reservations", sku="BREAD", expiring_within_s=600)
    assert [r["order_id"] for r in bread] == ["o-3"]
    paged = await walk(client, "/admin/reservations", sku="MILK", expiring_within_s=600, limit=1)
    assert [r["order_id"] for r in paged] == ["o-0", "o-2"]
    # Only a PENDING reservation expires: any other status leaves nothing due.
    confirmed = await walk(client, "/admin/reservations", status="CONFIRMED", expiring_within_s=600)
    assert confirmed == []
    pending = await walk(client, "/admin/reservations", status="PENDING", expiring_within_s=600)
    assert [r["order_id"] for r in pending] == ["o-0", "o-2", "o-3"]


async def test_sync_requests_are_listed_newest_first(
    container: Container, client: httpx.AsyncClient
) -> None:
    ids = []
    for i in range(4):
        r = await client.post(
            "/admin/wms/sync", json={"reason": f"check {i}", "requested_by": "tests"}
        )
        assert r.status_code == 202, r.text
        ids.append(r.json()["sync_request_id"])
    listed = await walk(client, "/admin/wms/sync", limit=3)
    assert [s["sync_request_id"] for s in listed][:4] == ids[::-1]
    assert {s["status"] for s in listed} == {"PENDING"}
    assert await walk(client, "/admin/wms/sync", status="DONE") == []


async def test_channel_skus_not_in_sync(container: Container, client: httpx.AsyncClient) -> None:
    async with container.pool.acquire() as conn:
        await conn.executemany(
            "INSERT INTO channel_sync_state (channel, sku, desired_version, desired_quantity,"
            " pushed_version, status, last_error) VALUES ('shop', $1, $2, 5, $3, $4, $5)",
            [
                ("A", 2, 2, "SYNCED", None),
                ("B", 3, 2, "PENDING", None),
                ("C", 1, 0, "UNLISTED", None),
                ("D", 4, 1, "PENDING", "503 from the channel"),
                ("E", 4, 4, "DEAD", "400 bad request"),
            ],
        )
    rows = await walk(client, "/admin/channels/shop/skus", limit=2)
    assert [r["sku"] for r in rows] == ["B", "C", "D", "E"]
    b = rows[0]
    assert (b["desired_version"], b["acknowledged_version"]) == (3, 2)
    unlisted = await walk(client, "/admin/channels/shop/skus", state="unlisted")
    assert [r["sku"] for r in unlisted] == ["C"]
    failing = await walk(client, "/admin/channels/shop/skus", state="failing")
    assert [r["sku"] for r in failing] == ["D", "E"]
    assert (await client.get("/admin/channels/nope/skus")).status_code == 404


async def test_orders_list_by_status_and_age(
    container: Container, client: httpx.AsyncClient, clock: Any
) -> None:
    async with container.pool.acquire() as conn:
        for i, status in enumerate(["PENDING", "PAID", "PENDING"]):
            at = clock() - timedelta(hours=3 - i)
            await conn.execute(
                "INSERT INTO orders (order_id, status, lines, ship_to, created_at, updated_at)"
                " VALUES ($1, $2, '[]', '{}', $3, $3)",
                f"ord-{i}",
                status,
                at,
            )
    pending = await walk(client, "/admin/orders", status="PENDING", limit=1)
    assert [o["order_id"] for o in pending] == ["ord-0", "ord-2"]
    old = await walk(client, "/admin/orders", older_than_s=2 * 3600 - 1)
    assert [o["order_id"] for o in old] == ["ord-0", "ord-1"]
    assert old[0]["age_s"] == pytest.approx(3 * 3600, abs=5)


async def test_a_cursor_passed_back_as_it_came_pages_on(
    container: Container, client: httpx.AsyncClient, clock: Any
) -> None:
    # Orders placed at the same instant (a tie in the sort key) and a time cursor: each
    # `next` pasted into the URL as it came (curl, a shell script) reads the next page.
    async with container.pool.acquire() as conn:
        for i, hours in enumerate([3, 2, 2]):
            await conn.execute(
                "INSERT INTO orders (order_id, status, lines, ship_to, created_at, updated_at)"
                " VALUES ($1, 'PENDING', '[]', '{}', $2, $2)",
                f"ord-{i}",
                clock() - timedelta(hours=hours, microseconds=250),
            )
    seen: list[str] = []
    url = "/admin/orders?limit=1"
    while True:
        r = await client.get(url)
        assert r.status_code == 200, r.text
        seen += [o["order_id"] for o in r.json()["items"]]
        cursor = r.json()["next"]
        if cursor is None:
            break
        assert cursor == quote(cursor, safe="~:"), cursor  # nothing to percent-encode
        url = f"/admin/orders?limit=1&after={cursor}"
    assert seen == ["ord-0", "ord-1", "ord-2"]


async def test_poll_now_needs_a_polled_connector_and_the_admin_scope(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/admin/connectors/wms-main/poll")).status_code == 404
    assert (await client.post("/admin/connectors/nope/poll")).status_code == 404
    r = await client.post("/admin/connectors/nope/poll", headers=auth(READER_TOKEN))
    assert r.status_code == 403


async def test_poll_now_wakes_the_real_poller_at_once(
    config: dict[str, Any], clock: Any, market: tuple[MarketplaceState, SandboxServer]
) -> None:
    state, server = market
    # An interval far beyond the test: only a poll request can make it poll again.
    cfg = {"id": "mp", "type": "marketplace", "url": server.url, "interval_s": 3600}
    c = await build(Settings.model_validate({**config, "connectors": [cfg]}), clock=clock)
    stop = asyncio.Event()
    poller = MarketplacePoller(c, c.settings.connectors_of(MarketplaceConnectorConfig)[0])
    task = asyncio.ensure_future(poller.run(stop))

    async def queued() -> int:
        async with c.pool.acquire() as conn:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM domain_event WHERE event_type = 'ingest.mp'"
            )
        return n

    async def pages() -> int:
        async with c.pool.acquire() as conn:
            n: int = await conn.fetchval("SELECT pages FROM source_cursor WHERE connector = 'mp'")
        return n or 0

    transport = httpx.ASGITransport(app=create_admin_app(c))
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://admin", headers=auth(ADMIN_TOKEN)
        ) as admin:
            await wait_until(lambda: _ge(pages, 1), timeout=30, what="the first poll")
            state.sell("t-1", "A", 2)  # news the poller will not see for an hour
            first = await admin.post("/admin/connectors/mp/poll")
            assert first.status_code == 202, first.text
            await wait_until(lambda: _ge(queued, 1), timeout=30, what="the requested poll")
            async with c.pool.acquire() as conn:
                assert await conn.fetchval("SELECT count(*) FROM poll_request") == 0
            # Without a poller, a request stays pending and a second is the same one.
            stop.set()
            await task
            one = await admin.post("/admin/connectors/mp/poll")
            two = await admin.post("/admin/connectors/mp/poll")
            assert one.status_code == two.status_code == 202
            assert one.json() == two.json()
            assert one.json()["status"] == "PENDING"
            assert one.json()["requested_by"] == "admin"
    finally:
        stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await c.close()


async def _ge(count: Any, n: int) -> bool:
    return bool(await count() >= n)
