"""``POST /webhooks/{connector}`` in process, on a real database: signatures on the raw
body, 401/413/422 with nothing stored, 202 once queued, duplicates once, and the queued
records applied by the ingest handler."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.connectors.signatures import generic_headers, sign_shopify
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.audit import audit
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.ingest import ingest_handler
from tests.support import WRITER_TOKEN

SECRET = b"whsec-0123456789"
HOOK = {"id": "hook", "type": "webhook", "secret_env": "HOOK_SECRET", "max_body_bytes": 4096}
SHOP = {"id": "shop", "type": "webhook", "preset": "shopify", "secret_env": "HOOK_SECRET"}
TABLES = ("webhook_delivery", "domain_event", "dead_letter", "sku", "inventory_ledger")


@pytest.fixture
async def hooked(
    config: dict[str, Any], clock: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, Container]]:
    monkeypatch.setenv("HOOK_SECRET", SECRET.decode())
    c = await build(Settings.model_validate({**config, "connectors": [HOOK, SHOP]}), clock=clock)
    transport = httpx.ASGITransport(app=create_inventory_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
        yield http, c
    await c.close()


def signed(body: bytes, at: float | None = None) -> dict[str, str]:
    return {
        **generic_headers(SECRET, body, int(at if at is not None else time.time())),
        "Content-Type": "application/json",
    }


def generic(event_id: str, **records: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, **records})


async def counts(c: Container) -> dict[str, int]:
    async with c.pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def apply_queued(c: Container) -> int:
    """Run the ingest handler over every queued ingest event, as the worker would."""
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT event_id, event_type, payload, occurred_at FROM domain_event "
            "WHERE event_type LIKE 'ingest.%' AND status = 'PENDING' ORDER BY id"
        )
        await conn.execute(
            "UPDATE domain_event SET status = 'SENT' WHERE event_type LIKE 'ingest.%'"
        )
    handle = ingest_handler(c.ingest)
    for r in rows:
        env = Envelope.new(
            r["event_type"], r["payload"], occurred_at=r["occurred_at"], id_=r["event_id"]
        )
        async with c.pool.acquire() as conn, conn.transaction():
            await handle(conn, env)
    return len(rows)


async def test_a_signed_delivery_is_queued_and_five_copies_apply_once(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = hooked
    await c.stock.receive(Receipt("A", 10, "r-1", None, None, None))
    body = generic(
        "evt-1",
        levels=[{"sku": "B", "on_hand": 4, "source_updated_at": "2030-01-01T00:00:00Z"}],
        sales=[{"transaction_id": "t-1", "sku": "A", "delta": -2}],
    )
    answers = [
        await http.post("/webhooks/hook", content=body, headers=signed(body)) for _ in range(5)
    ]
    assert [r.status_code for r in answers] == [202] * 5
    assert answers[0].json()["status"] == "queued"
    assert {r.json()["status"] for r in answers[1:]} == {"duplicate"}
    assert await apply_queued(c) == 2  # one message of levels, one of sales
    a, b = await c.stock.get_many(["A", "B"])
    assert (a.on_hand, b.on_hand) == (8, 4)
    m = c.metrics.registry.get_sample_value
    assert m("stockkeeper_webhook_requests_total", {"connector": "hook", "status": "202"}) == 5


async def test_an_event_id_again_with_another_body_is_refused_not_dropped(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = hooked
    await c.stock.receive(Receipt("A", 10, "r-1", None, None, None))
    first = generic("evt-9", sales=[{"transaction_id": "t-1", "sku": "A", "delta": -2}])
    r = await http.post("/webhooks/hook", content=first, headers=signed(first))
    assert r.json()["status"] == "queued"
    # The same delivery written again, other key order and whitespace: a duplicate.
    again = (
        b'{ "sales": [{"delta": -2, "sku": "A", "transaction_id": "t-1"}], "event_id": "evt-9" }'
    )
    r = await http.post("/webhooks/hook", content=again, headers=signed(again))
    assert (r.status_code, r.json()["status"]) == (202, "duplicate")
    # A sender that reuses an id for other news is told so: a 202 would drop its sale.
    before = await counts(c)
    other = generic("evt-9", sales=[{"transaction_id": "t-2", "sku": "A", "delta": -5}])
    r = await http.post("/webhooks/hook", content=other, headers=signed(other))
    assert (r.status_code, r.json()["type"]) == (409, "conflict")
    assert "evt-9" in r.json()["detail"]
    assert await counts(c) == before  # nothing of it stored
    order = shopify_order(3001, (1, "A", 1))
    assert (
        await http.post("/webhooks/shop", content=order, headers=shopify_headers(order, "w-9"))
    ).status_code == 202
    cancel_topic = shopify_headers(order, "w-9", "orders/cancelled")
    r = await http.post("/webhooks/shop", content=order, headers=cancel_topic)
    assert (r.status_code, r.json()["type"]) == (409, "conflict")  # the topic is its meaning
    await apply_queued(c)
    (a,) = await c.stock.get_many(["A"])
    assert a.on_hand == 7
    m = c.metrics.registry.get_sample_value
    assert m("stockkeeper_webhook_requests_total", {"connector": "hook", "status": "409"}) == 1


async def test_a_thousand_badly_signed_deliveries_store_nothing(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = hooked
    before = await counts(c)
    body = generic(
        "evt-x", levels=[{"sku": "B", "on_hand": 4, "source_updated_at": "2030-01-01T00:00:00Z"}]
    )
    good = signed(body)
    now = int(time.time())
    variants: list[tuple[bytes, dict[str, str]]] = [
        (body, {}),  # no signature at all
        (body, {**good, "X-Signature": "0" * 64}),  # wrong
        (body, {**good, "X-Signature": "not-hex"}),  # malformed
        (body + b" ", good),  # the body changed by one byte
        (body, signed(body, at=now - 3600)),  # stale: an old delivery replayed
        (body, {**good, "X-Timestamp": str(now + 1)}),  # timestamp swapped after signing
        (body, {**good, "X-Timestamp": "yesterday"}),
        (orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2), good),  # re-serialised
    ]
    statuses = set()
    for i in range(1000):
        content, headers = variants[i % len(variants)]
        r = await http.post("/webhooks/hook", content=content, headers=headers)
        statuses.add(r.status_code)
        if i < len(variants):
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["type"] == "unauthorized", r.json()
    assert statuses == {401}
    assert await counts(c) == before
    m = c.metrics.registry.get_sample_value
    assert m("stockkeeper_webhook_requests_total", {"connector": "hook", "status": "401"}) == 1000


async def test_size_and_format_are_checked_and_store_nothing(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = hooked
    before = await counts(c)
    big = generic("evt-big", levels=[{"sku": "B" * 100, "on_hand": 1}] * 60)
    assert len(big) > 4096
    r = await http.post("/webhooks/hook", content=big, headers=signed(big))
    assert (r.status_code, r.json()["type"]) == (413, "payload-too-large")
    for bad in (b"{not json", b'{"levels": []}', b'{"event_id": "e", "extra": 1}', b"[]"):
        r = await http.post("/webhooks/hook", content=bad, headers=signed(bad))
        assert (r.status_code, r.json()["type"]) == (422, "validation"), bad
    r = await http.post("/webhooks/nobody", content=b"{}", headers=signed(b"{}"))
    assert r.status_code == 404
    assert await counts(c) == before


async def test_a_connectors_body_limit_above_the_apis_is_the_one_that_holds(
    config: dict[str, Any], clock: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET.decode())
    bulk = {**HOOK, "id": "bulk", "max_body_bytes": 3 * 1024 * 1024}
    settings = {**config, "api": {**config["api"], "max_body_bytes": 1024 * 1024}}
    c = await build(Settings.model_validate({**settings, "connectors": [bulk]}), clock=clock)
    transport = httpx.ASGITransport(app=create_inventory_app(c))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            at = "2030-01-01T00:00:00Z"
            sku = "S" * 120
            levels = [
                {"sku": f"{sku}{i:06d}", "on_hand": i, "source_updated_at": at}
                for i in range(9_000)
            ]
            body = generic("evt-bulk", levels=levels)
            assert 1024 * 1024 < len(body) < 3 * 1024 * 1024  # above the API's, within its own
            r = await http.post("/webhooks/bulk", content=body, headers=signed(body))
            assert (r.status_code, r.json()["records"]) == (202, 9_000)
            big = generic("evt-big", levels=levels * 3)
            assert len(big) > 3 * 1024 * 1024
            r = await http.post("/webhooks/bulk", content=big, headers=signed(big))
            assert (r.status_code, r.json()["type"]) == (413, "payload-too-large")
            assert "3145728" in r.json()["detail"]  # the connector's limit, its 413
            # Every other route keeps the API's limit.
            r = await http.post(
                "/inventory/receipts",
                content=b" " * (1024 * 1024 + 1),
                headers={
                    "Authorization": f"Bearer {WRITER_TOKEN}",
                    "Content-Type": "application/json",
                },
            )
            assert r.status_code == 413
    finally:
        await c.close()


async def test_bad_records_in_a_good_delivery_are_dead_letters_and_the_rest_is_queued(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = hooked
    body = generic(
        "evt-2",
        levels=[
            {"sku": "OK", "on_hand": 3, "source_updated_at": "2030-01-01T00:00:00Z"},
            {"sku": "NEG", "on_hand": -3, "source_updated_at": "2030-01-01T00:00:00Z"},
        ],
    )
    r = await http.post("/webhooks/hook", content=body, headers=signed(body))
    assert r.status_code == 202
    assert (r.json()["records"], len(r.json()["refused"])) == (1, 1)
    await apply_queued(c)
    (ok,) = await c.stock.get_many(["OK"])
    assert ok.on_hand == 3
    async with c.pool.acquire() as conn:
        (dead,) = await conn.fetch("SELECT queue, error FROM dead_letter")
    assert dead["queue"] == "inventory.ingest"
    assert "on_hand" in dead["error"]


async def only_ab_applied(http: httpx.AsyncClient, c: Container, body: bytes) -> list[str]:
    """Deliver ``body`` (a level of SKU AB and three records to refuse): AB alone is
    applied, the three are dead letters; their errors."""
    r = await http.post("/webhooks/hook", content=body, headers=signed(body))
    assert r.status_code == 202, r.text
    assert (r.json()["records"], len(r.json()["refused"])) == (1, 3)
    await apply_queued(c)
    async with c.pool.acquire() as conn:
        assert [row["sku"] for row in await conn.fetch("SELECT sku FROM sku")] == ["AB"]
        errors = [row["error"] for row in await conn.fetch("SELECT error FROM dead_letter")]
    assert len(errors) == 3
    return errors


async def test_ids_follow_the_apis_rule_and_a_nul_is_never_a_500(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    # "A\u200bB" never becomes a second SKU beside "AB", whichever door it comes in by,
    # and U+0000 (which PostgreSQL cannot store) is a refused record or a 422 (D-399).
    http, c = hooked
    at = "2030-01-01T00:00:00Z"
    body = generic(
        "evt-ids",
        levels=[
            {"sku": "AB", "on_hand": 3, "source_updated_at": at},
            {"sku": "A\u200bB", "on_hand": 4, "source_updated_at": at},
            {"sku": "A\x00B", "on_hand": 5, "source_updated_at": at},
        ],
        sales=[{"transaction_id": "t\x00-1", "sku": "AB", "delta": -1}],
    )
    errors = await only_ab_applied(http, c, body)
    assert any("U+200B" in e for e in errors)
    assert any("U+0000" in e for e in errors)

    nul_event = generic("evt-\x00", levels=[])
    r = await http.post("/webhooks/hook", content=nul_event, headers=signed(nul_event))
    assert (r.status_code, r.json()["type"]) == (422, "validation"), r.text


async def test_a_record_whose_sku_is_a_dot_segment_is_a_dead_letter(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    # D-470: a SKU "." or ".." could never be read by its path (GET /inventory/.. is
    # GET / once any client has sent it); such records are refused, the rest flow on.
    http, c = hooked
    at = "2030-01-01T00:00:00Z"
    body = generic(
        "evt-dots",
        levels=[
            {"sku": "AB", "on_hand": 3, "source_updated_at": at},
            {"sku": ".", "on_hand": 4, "source_updated_at": at},
            {"sku": "..", "on_hand": 5, "source_updated_at": at},
        ],
        sales=[{"transaction_id": "t-dots", "sku": "..", "delta": -1}],
    )
    errors = await only_ab_applied(http, c, body)
    assert all("dot-segment" in e for e in errors), errors


def shopify_order(order_id: int, *lines: tuple[int, str, int]) -> bytes:
    return orjson.dumps(
        {
            "id": order_id,
            "line_items": [{"id": i, "sku": s, "quantity": q} for i, s, q in lines],
        }
    )


def shopify_headers(
    body: bytes, webhook_id: str, topic: str = "orders/create", age_s: float = 0
) -> dict[str, str]:
    fired = datetime.now(UTC) - timedelta(seconds=age_s)
    return {
        "X-Shopify-Hmac-Sha256": sign_shopify(SECRET, body),
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Topic": topic,
        # Shopify's own shape: nanoseconds and a Z.
        "X-Shopify-Triggered-At": fired.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z",
        "Content-Type": "application/json",
    }


async def test_shopify_orders_are_sales_once_and_cancellations_put_them_back(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = hooked
    await c.stock.receive(Receipt("TEE", 10, "r-1", None, None, None))
    order = shopify_order(1001, (1, "TEE", 3), (2, "TEE", 1))
    for _ in range(3):  # Shopify retries deliveries; ids may repeat or not
        r = await http.post("/webhooks/shop", content=order, headers=shopify_headers(order, "w-1"))
        assert r.status_code == 202
    r = await http.post("/webhooks/shop", content=order, headers=shopify_headers(order, "w-2"))
    assert r.json()["status"] == "queued"  # a new delivery id, the same transactions
    await apply_queued(c)
    (tee,) = await c.stock.get_many(["TEE"])
    assert tee.on_hand == 6
    cancel = shopify_order(1001, (1, "TEE", 3))
    r = await http.post(
        "/webhooks/shop", content=cancel, headers=shopify_headers(cancel, "w-3", "orders/cancelled")
    )
    assert r.status_code == 202
    await apply_queued(c)
    (tee,) = await c.stock.get_many(["TEE"])
    assert tee.on_hand == 9
    other = await http.post(
        "/webhooks/shop", content=b"{}", headers=shopify_headers(b"{}", "w-4", "products/update")
    )
    assert (other.status_code, other.json()["status"]) == (202, "ignored")
    bad = {**shopify_headers(order, "w-5"), "X-Shopify-Hmac-Sha256": sign_shopify(b"other", order)}
    assert (await http.post("/webhooks/shop", content=order, headers=bad)).status_code == 401


async def test_a_shopify_delivery_older_than_the_tolerance_is_refused_and_stores_nothing(
    hooked: tuple[httpx.AsyncClient, Container],
) -> None:
    http, c = hooked
    order = shopify_order(2001, (1, "TEE", 1))
    before = await counts(c)
    stale = shopify_headers(order, "w-old", age_s=301)  # the default tolerance is 300 s
    r = await http.post("/webhooks/shop", content=order, headers=stale)
    assert r.status_code == 401
    assert "stale" in r.json()["detail"]
    ahead = shopify_headers(order, "w-ahead", age_s=-301)  # a clock far ahead is no better
    assert (await http.post("/webhooks/shop", content=order, headers=ahead)).status_code == 401
    absent = shopify_headers(order, "w-none")
    del absent["X-Shopify-Triggered-At"]
    assert (await http.post("/webhooks/shop", content=order, headers=absent)).status_code == 401
    assert await counts(c) == before  # not even the delivery id is kept
    fresh = shopify_headers(order, "w-old", age_s=200)  # the same id, now inside the window
    r = await http.post("/webhooks/shop", content=order, headers=fresh)
    assert (r.status_code, r.json()["status"]) == (202, "queued")


async def test_a_shopify_cancel_of_a_sale_never_booked_puts_nothing_back(hooked: Any) -> None:
    """D-489: the create was refused (here as stale, after an outage past tolerance_s):
    its cancel returns no units it never took."""
    http, c = hooked
    await c.stock.receive(Receipt("TEE", 10, "r-1", None, None, None))
    order = shopify_order(3001, (1, "TEE", 3))
    stale = shopify_headers(order, "w-c1", age_s=900)
    assert (await http.post("/webhooks/shop", content=order, headers=stale)).status_code == 401
    cancel = shopify_headers(order, "w-c2", "orders/cancelled")
    assert (await http.post("/webhooks/shop", content=order, headers=cancel)).status_code == 202
    await apply_queued(c)
    (tee,) = await c.stock.get_many(["TEE"])
    assert tee.on_hand == 10


async def test_a_shopify_cancel_before_its_create_nets_to_nothing(hooked: Any) -> None:
    """D-489: Shopify does not order its topics; a cancel that lands first holds the
    line's sale back, so neither shows phantom units, in between or after."""
    http, c = hooked
    await c.stock.receive(Receipt("TEE", 10, "r-1", None, None, None))
    order = shopify_order(3002, (1, "TEE", 3))
    cancel = shopify_headers(order, "w-d1", "orders/cancelled")
    await http.post("/webhooks/shop", content=order, headers=cancel)
    await apply_queued(c)
    (between,) = await c.stock.get_many(["TEE"])
    await http.post("/webhooks/shop", content=order, headers=shopify_headers(order, "w-d2"))
    await apply_queued(c)
    (after,) = await c.stock.get_many(["TEE"])
    assert (between.on_hand, after.on_hand) == (10, 10)
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()
