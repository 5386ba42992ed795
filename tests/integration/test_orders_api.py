"""The order routes of inventory-api, in process on a real PostgreSQL: the contract
(202 then polling), scopes, Idempotency-Key, and every bad input answered 422 with
nothing written."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container
from stockkeeper.services.stock import Receipt
from tests.conftest import FakeClock
from tests.integration.orders_helpers import CARRIERS, SHIP_TO, drive
from tests.support import ADMIN_TOKEN, READER_TOKEN, WRITER_TOKEN, auth

PROBLEM = "application/problem+json"
W = auth(WRITER_TOKEN)


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config["orders"] = {"payment_timeout_seconds": 600, "carriers": CARRIERS}
    return config


@pytest.fixture
async def http(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    await container.stock.receive(Receipt("TEA", 5, f"rcpt-{uuid.uuid4().hex}"))
    transport = httpx.ASGITransport(app=create_inventory_app(container))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


def order(order_id: str = "o-1") -> dict[str, Any]:
    return {"order_id": order_id, "lines": [{"sku": "TEA", "quantity": 2}], "ship_to": SHIP_TO}


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    doc: dict[str, Any] = r.json()
    assert (doc["status"], doc["type"]) == (status, slug), doc
    return doc


async def written(c: Container) -> tuple[int, int]:
    async with c.pool.acquire() as conn:
        orders = await conn.fetchval("SELECT count(*) FROM orders")
        events = await conn.fetchval(
            "SELECT count(*) FROM domain_event WHERE event_type LIKE 'order.%'"
        )
    return orders, events


async def test_placed_at_once_then_polled_until_decided(
    http: httpx.AsyncClient, container: Container
) -> None:
    r = await http.post("/orders", json=order(), headers=W)
    assert r.status_code == 202, r.text
    assert r.json() == {"order_id": "o-1", "status": "PENDING"}
    assert r.headers["location"] == "/orders/o-1"

    polled = await http.get("/orders/o-1", headers=auth(READER_TOKEN))
    assert polled.status_code == 200
    assert polled.headers["cache-control"] == "no-store"
    doc = polled.json()
    assert (doc["status"], doc["lines"], doc["ship_to"]) == (
        "PENDING",
        [{"sku": "TEA", "quantity": 2}],
        SHIP_TO,
    )
    assert "reason" not in doc
    assert "carrier" not in doc

    await drive(container)
    doc = (await http.get("/orders/o-1", headers=W)).json()
    assert doc["status"] == "AWAITING_PAYMENT"

    # The same order again: 200 with its status as it stands; other contents: 409.
    again = await http.post("/orders", json=order(), headers=W)
    assert (again.status_code, again.json()["status"]) == (200, "AWAITING_PAYMENT")
    other = order()
    other["lines"] = [{"sku": "TEA", "quantity": 1}]
    assert_problem(await http.post("/orders", json=other, headers=W), 409, "conflict")

    paid = await http.post(
        "/orders/o-1/payment", json={"status": "succeeded", "reference": "pay-1"}, headers=W
    )
    assert paid.status_code == 200, paid.text
    assert paid.json()["status"] == "PAID"
    await drive(container)
    doc = (await http.get("/orders/o-1", headers=W)).json()
    assert (doc["status"], doc["carrier"]["id"]) == ("READY_TO_SHIP", "post")

    cancelled = await http.post("/orders/o-1/cancel", json={"reason": "changed mind"}, headers=W)
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["reason"]) == ("CANCELLED", "changed mind")
    # No body at all is fine too; a repeat changes nothing.
    assert (await http.post("/orders/o-1/cancel", headers=W)).json()["status"] == "CANCELLED"


async def test_paying_a_failed_order_is_a_conflict(
    http: httpx.AsyncClient, container: Container
) -> None:
    body = order()
    body["lines"] = [{"sku": "TEA", "quantity": 50}]
    assert (await http.post("/orders", json=body, headers=W)).status_code == 202
    await drive(container)
    doc = (await http.get("/orders/o-1", headers=W)).json()
    assert doc["status"] == "FAILED"
    assert doc["shortages"] == [{"sku": "TEA", "requested": 50, "available": 5}]
    r = await http.post(
        "/orders/o-1/payment", json={"status": "succeeded", "reference": "p"}, headers=W
    )
    assert "FAILED" in assert_problem(r, 409, "conflict")["detail"]


async def test_a_payment_too_late_is_409_reservation_expired(
    http: httpx.AsyncClient, container: Container, clock: FakeClock
) -> None:
    await http.post("/orders", json=order(), headers=W)
    await drive(container)
    clock.advance(600)
    r = await http.post(
        "/orders/o-1/payment", json={"status": "succeeded", "reference": "p"}, headers=W
    )
    assert_problem(r, 409, "reservation-expired")
    assert (await http.get("/orders/o-1", headers=W)).json()["status"] == "EXPIRED"


async def test_idempotency_key_replays_the_first_answer(
    http: httpx.AsyncClient, container: Container
) -> None:
    key = {**W, "Idempotency-Key": "k-1"}
    first = await http.post("/orders", json=order(), headers=key)
    second = await http.post("/orders", json=order(), headers=key)
    assert (first.status_code, second.status_code) == (202, 202)
    assert second.headers.get("idempotency-replayed") == "true"
    assert second.json() == first.json()
    assert await written(container) == (1, 1)
    assert_problem(await http.post("/orders", json=order("o-2"), headers=key), 422, "validation")

    await drive(container)
    pay = {**W, "Idempotency-Key": "k-2"}
    body = {"status": "succeeded", "reference": "p"}
    a = await http.post("/orders/o-1/payment", json=body, headers=pay)
    b = await http.post("/orders/o-1/payment", json=body, headers=pay)
    assert a.status_code == b.status_code == 200
    assert b.headers.get("idempotency-replayed") == "true"


async def test_an_order_placed_with_a_key_writes_it_in_its_one_statement(
    http: httpx.AsyncClient, container: Container
) -> None:
    """The key goes in with the order (D-366): the same key with another order is 422
    and places nothing; a repeat of a placed order under a new key (200) and a refused
    order (422) have their key recorded after, and replayed too."""
    first = await http.post("/orders", json=order(), headers={**W, "Idempotency-Key": "k-1"})
    assert first.status_code == 202
    assert first.headers["location"].endswith("/orders/o-1")
    async with container.pool.acquire() as conn:
        stored = await conn.fetchrow(
            "SELECT status_code, response FROM idempotency_key WHERE key = 'k-1'"
        )
    assert (stored["status_code"], stored["response"]) == (202, first.json())

    other = await http.post("/orders", json=order("o-2"), headers={**W, "Idempotency-Key": "k-1"})
    assert_problem(other, 422, "validation")
    assert await written(container) == (1, 1)

    for key, body, status in (
        ("k-2", order(), 200),
        ("k-3", order("o-3") | {"lines": [{"sku": "NOPE", "quantity": 1}]}, 422),
    ):
        a = await http.post("/orders", json=body, headers={**W, "Idempotency-Key": key})
        b = await http.post("/orders", json=body, headers={**W, "Idempotency-Key": key})
        assert (a.status_code, b.status_code) == (status, status), (a.text, b.text)
        assert (b.json(), b.headers.get("idempotency-replayed")) == (a.json(), "true")
    assert await written(container) == (1, 1)


async def test_scopes(http: httpx.AsyncClient) -> None:
    assert_problem(await http.post("/orders", json=order()), 401, "unauthorized")
    reader = auth(READER_TOKEN)
    assert_problem(await http.post("/orders", json=order(), headers=reader), 403, "forbidden")
    pay = {"status": "succeeded", "reference": "p"}
    r = await http.post("/orders/o-1/payment", json=pay, headers=reader)
    assert_problem(r, 403, "forbidden")
    assert_problem(await http.post("/orders/o-1/cancel", headers=reader), 403, "forbidden")
    assert_problem(await http.get("/orders/o-1"), 401, "unauthorized")
    assert_problem(await http.get("/orders/o-1", headers=auth(ADMIN_TOKEN)), 404, "not-found")


def _with(**changes: Any) -> dict[str, Any]:
    body = order()
    for key, value in changes.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return body


BAD_ORDERS = {
    "no-lines": _with(lines=[]),
    "no-ship-to": _with(ship_to=None),
    "no-order-id": _with(order_id=None),
    "order-id-with-spaces-around": _with(order_id=" o-1"),
    "order-id-too-long": _with(order_id="o" * 129),
    "quantity-zero": _with(lines=[{"sku": "TEA", "quantity": 0}]),
    "quantity-as-text": _with(lines=[{"sku": "TEA", "quantity": "2"}]),
    "quantity-fraction": _with(lines=[{"sku": "TEA", "quantity": 1.5}]),
    "sku-twice": _with(lines=[{"sku": "TEA", "quantity": 1}, {"sku": "TEA", "quantity": 1}]),
    "unknown-sku": _with(lines=[{"sku": "COFFEE", "quantity": 1}]),
    "too-many-lines": _with(lines=[{"sku": f"S{i}", "quantity": 1} for i in range(201)]),
    "country-lowercase": _with(ship_to={**SHIP_TO, "country": "de"}),
    "country-alpha-3": _with(ship_to={**SHIP_TO, "country": "DEU"}),
    "address-without-city": _with(ship_to={k: v for k, v in SHIP_TO.items() if k != "city"}),
    "address-extra-key": _with(ship_to={**SHIP_TO, "planet": "Mars"}),
    "address-blank-name": _with(ship_to={**SHIP_TO, "name": " "}),
    "date-not-iso": _with(required_delivery_date="05/01/2030"),
    "date-short": _with(required_delivery_date="2030-1-5"),
    "date-impossible": _with(required_delivery_date="2030-02-30"),
    "date-with-time": _with(required_delivery_date="2030-01-05T00:00:00"),
    "date-as-number": _with(required_delivery_date=1893456000),
    "date-in-the-past": _with(required_delivery_date="2029-12-31"),
    "extra-field": _with(priority="high"),
}


@pytest.mark.parametrize("body", list(BAD_ORDERS.values()), ids=list(BAD_ORDERS))
async def test_bad_orders_are_422_and_write_nothing(
    http: httpx.AsyncClient, container: Container, body: dict[str, Any]
) -> None:
    assert_problem(await http.post("/orders", json=body, headers=W), 422, "validation")
    assert await written(container) == (0, 0)


async def test_bad_payments_and_order_ids(http: httpx.AsyncClient, container: Container) -> None:
    await http.post("/orders", json=order(), headers=W)
    await drive(container)
    for body in (
        {"status": "ok", "reference": "p"},
        {"status": "succeeded"},
        {"status": "succeeded", "reference": ""},
        {"status": "succeeded", "reference": "p", "amount": 3},
    ):
        r = await http.post("/orders/o-1/payment", json=body, headers=W)
        assert_problem(r, 422, "validation")
    r = await http.post("/orders/o-1/cancel", json={"why": "x"}, headers=W)
    assert_problem(r, 422, "validation")
    long_id = "o" * 129
    assert_problem(await http.get(f"/orders/{long_id}", headers=W), 422, "validation")
    pay = {"status": "succeeded", "reference": "p"}
    assert_problem(await http.post("/orders/nope/payment", json=pay, headers=W), 404, "not-found")
    assert_problem(await http.post("/orders/nope/cancel", headers=W), 404, "not-found")
    assert (await http.get("/orders/o-1", headers=W)).json()["status"] == "AWAITING_PAYMENT"


async def test_a_payment_before_the_saga_decided_is_a_conflict_to_retry(
    http: httpx.AsyncClient,
) -> None:
    await http.post("/orders", json=order(), headers=W)
    r = await http.post(
        "/orders/o-1/payment", json={"status": "succeeded", "reference": "p"}, headers=W
    )
    assert "not reserved yet" in assert_problem(r, 409, "conflict")["detail"]


async def test_a_payment_too_early_does_not_use_up_its_idempotency_key(
    http: httpx.AsyncClient, container: Container
) -> None:
    """D-479: "send the payment again shortly" is an answer of the moment; the payment
    provider's retry with the same key is the payment, not a replay of the 409."""
    await http.post("/orders", json=order(), headers=W)
    pay = {**W, "Idempotency-Key": "psp-evt-1"}
    body = {"status": "succeeded", "reference": "p"}
    early = await http.post("/orders/o-1/payment", json=body, headers=pay)
    assert "not reserved yet" in assert_problem(early, 409, "conflict")["detail"]
    await drive(container)
    paid = await http.post("/orders/o-1/payment", json=body, headers=pay)
    assert paid.status_code == 200, paid.text
    assert paid.headers.get("idempotency-replayed") is None
    assert paid.json()["status"] in {"PAID", "READY_TO_SHIP"}
    again = await http.post("/orders/o-1/payment", json=body, headers=pay)
    assert again.headers.get("idempotency-replayed") == "true"
    assert again.json() == paid.json()


async def test_openapi_documents_the_order_routes(http: httpx.AsyncClient) -> None:
    doc = (await http.get("/openapi.json")).json()
    paths = doc["paths"]
    assert set(paths["/orders"]) == {"post"}
    assert "202" in paths["/orders"]["post"]["responses"]
    assert set(paths["/orders/{order_id}"]) == {"get"}
    assert "post" in paths["/orders/{order_id}/payment"]
    assert "post" in paths["/orders/{order_id}/cancel"]
    assert "OrderOut" in doc["components"]["schemas"]


async def test_the_same_lines_in_another_order_are_the_same_order(
    http: httpx.AsyncClient, container: Container
) -> None:
    # An order names a SKU once, so the order of its lines means nothing (D-423): a
    # storefront that sends its cart again, sorted otherwise, repeats its order.
    await container.stock.receive(Receipt("MUG", 5, f"rcpt-{uuid.uuid4().hex}"))
    body = order()
    body["lines"] = [{"sku": "TEA", "quantity": 2}, {"sku": "MUG", "quantity": 1}]
    assert (await http.post("/orders", json=body, headers=W)).status_code == 202
    before = await written(container)
    again = {**body, "lines": body["lines"][::-1]}
    r = await http.post("/orders", json=again, headers=W)
    assert (r.status_code, r.json()["status"]) == (200, "PENDING"), r.text
    assert await written(container) == before
    other = {**body, "lines": [{"sku": "MUG", "quantity": 2}, {"sku": "TEA", "quantity": 1}]}
    assert_problem(await http.post("/orders", json=other, headers=W), 409, "conflict")

    reserve = {"order_id": "r-1", "lines": body["lines"]}
    assert (await http.post("/inventory/reserve", json=reserve, headers=W)).status_code == 201
    r = await http.post("/inventory/reserve", json={**reserve, "lines": again["lines"]}, headers=W)
    assert r.status_code == 200, r.text
    assert r.json()["lines"] == [
        {**li, "allocations": r.json()["lines"][i]["allocations"]}
        for i, li in enumerate(body["lines"])
    ]  # the reservation as it was made, lines in their first order
    tea, mug = await container.stock.get_many(["TEA", "MUG"])
    assert (tea.reserved, mug.reserved) == (2, 1)
