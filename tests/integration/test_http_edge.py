"""The HTTP edge never reports a stored change as a failure (issue 13, points 8, 9, 12):
ids with any printable character round-trip through headers, ids past 2^63 are refused,
and a request without a valid token is refused before its body is read. Both apps in
process on a real PostgreSQL, over httpx."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stockkeeper.api.admin import create_admin_app
from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container
from stockkeeper.services.stock import Receipt
from tests.integration.orders_helpers import CARRIERS, SHIP_TO
from tests.support import ADMIN_TOKEN, WRITER_TOKEN, auth

PROBLEM = "application/problem+json"
W = auth(WRITER_TOKEN)
PAST_INT64 = "9223372036854775808"


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config["orders"] = {"payment_timeout_seconds": 600, "carriers": CARRIERS}
    return config


@pytest.fixture
async def http(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    await container.stock.receive(Receipt("TEA", 50, f"rcpt-{uuid.uuid4().hex}"))
    # raise_app_exceptions=False: an unhandled error is what a client would see (a 500),
    # not an exception in the test.
    transport = httpx.ASGITransport(app=create_inventory_app(container), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
        yield c


@pytest.fixture
async def admin(container: Container) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_admin_app(container), raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin", headers=auth(ADMIN_TOKEN)
    ) as c:
        yield c


def order(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "lines": [{"sku": "TEA", "quantity": 1}], "ship_to": SHIP_TO}


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    doc: dict[str, Any] = r.json()
    assert (doc["status"], doc["type"]) == (status, slug), doc
    return doc


# -- point 8: any printable id round-trips; controls and invisible characters are refused --


@pytest.mark.parametrize(
    "order_id",
    [
        pytest.param("заказ-1", id="cyrillic"),
        pytest.param("order-\U0001f4e6", id="emoji"),
        pytest.param("注文 7 ?#%", id="cjk-with-url-characters"),
    ],
)
async def test_an_order_with_a_non_latin1_id_answers_202_with_an_encoded_location(
    http: httpx.AsyncClient, order_id: str
) -> None:
    first = await http.post("/orders", json=order(order_id), headers=W)
    assert first.status_code == 202, first.text
    location = first.headers["location"]
    assert location == "/orders/" + quote(order_id, safe="")
    assert location.isascii()

    again = await http.post("/orders", json=order(order_id), headers=W)
    assert again.status_code == 200, again.text
    assert again.headers["location"] == location

    polled = await http.get(location, headers=W)
    assert polled.status_code == 200, polled.text
    assert polled.json()["order_id"] == order_id


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param("заказ\x7f", id="U+007F"),
        pytest.param("a\x85b", id="C1-NEL"),
        pytest.param("a\u2028b", id="U+2028"),
        pytest.param("a\u2029b", id="U+2029"),
        pytest.param("A\u200bB", id="zero-width-space"),
        pytest.param("A\u200dB", id="zero-width-joiner"),
        pytest.param("\ufeffAB", id="byte-order-mark"),
        pytest.param("A\u202eB", id="bidi-override"),
    ],
)
async def test_an_id_with_a_control_or_invisible_character_is_422(
    http: httpx.AsyncClient, container: Container, bad: str
) -> None:
    assert_problem(await http.post("/orders", json=order(bad), headers=W), 422, "validation")
    receipt = {"sku": bad, "quantity": 1, "reference_id": "r-1"}
    assert_problem(
        await http.post("/inventory/receipts", json=receipt, headers=auth(ADMIN_TOKEN)),
        422,
        "validation",
    )
    reserve = {"order_id": bad, "lines": [{"sku": "TEA", "quantity": 1}]}
    assert_problem(
        await http.post("/inventory/reserve", json=reserve, headers=W), 422, "validation"
    )
    assert_problem(await http.get(f"/inventory/{quote(bad)}", headers=W), 422, "validation")
    assert_problem(await http.get(f"/reservations/{quote(bad)}", headers=W), 422, "validation")
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sku WHERE sku <> 'TEA'") == 0
        assert await conn.fetchval("SELECT count(*) FROM orders") == 0


async def test_a_zero_width_character_cannot_make_a_second_sku(
    http: httpx.AsyncClient, container: Container
) -> None:
    made = await http.post(
        "/inventory/receipts",
        json={"sku": "AB", "quantity": 1, "reference_id": "r-ab"},
        headers=auth(ADMIN_TOKEN),
    )
    assert made.status_code == 201, made.text
    twin = await http.post(
        "/inventory/receipts",
        json={"sku": "A\u200bB", "quantity": 1, "reference_id": "r-a-zw-b"},
        headers=auth(ADMIN_TOKEN),
    )
    doc = assert_problem(twin, 422, "validation")
    # The rule's own words, without pydantic's "Value error, " before them.
    assert doc["errors"] == [
        {"field": "body.sku", "message": "must not contain U+200B (ZERO WIDTH SPACE)"}
    ]
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sku WHERE sku LIKE 'A%B'") == 1


# -- point 9: ids past 2^63 in admin paths are 422, never 500 --------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", f"/admin/wms/sync/{PAST_INT64}", id="wms-sync"),
        pytest.param("POST", f"/admin/dead-letters/{PAST_INT64}/replay", id="replay"),
        pytest.param("POST", f"/admin/dead-letters/{PAST_INT64}/discard", id="discard"),
        pytest.param("GET", f"/admin/dead-letters?after={PAST_INT64}", id="list-after"),
        pytest.param("GET", "/admin/wms/sync/0", id="wms-sync-zero"),
        pytest.param("POST", "/admin/dead-letters/-1/replay", id="replay-negative"),
    ],
)
async def test_an_id_out_of_range_is_422(admin: httpx.AsyncClient, method: str, path: str) -> None:
    doc = assert_problem(await admin.request(method, path), 422, "validation")
    assert doc["errors"], doc


async def test_the_largest_id_is_simply_not_found(admin: httpx.AsyncClient) -> None:
    largest = str(2**63 - 1)
    assert_problem(await admin.get(f"/admin/wms/sync/{largest}"), 404, "not-found")
    assert_problem(await admin.post(f"/admin/dead-letters/{largest}/replay"), 404, "not-found")


# -- point 12: authentication before the body is read ----------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty-object"),
        pytest.param("{not json", id="not-json"),
        pytest.param({"order_id": "o", "lines": "x"}, id="wrong-types"),
    ],
)
@pytest.mark.parametrize("path", ["/inventory/reserve", "/orders", "/inventory/receipts"])
async def test_an_anonymous_request_is_401_before_its_body_is_validated(
    http: httpx.AsyncClient, path: str, body: Any
) -> None:
    kwargs: dict[str, Any] = (
        {"content": body, "headers": {"Content-Type": "application/json"}}
        if isinstance(body, str)
        else {"json": body}
    )
    anonymous = await http.post(path, **kwargs)
    assert_problem(anonymous, 401, "unauthorized")
    assert anonymous.headers["www-authenticate"] == "Bearer"
    kwargs["headers"] = {**kwargs.get("headers", {}), **auth("not-a-known-token-at-all")}
    wrong = await http.post(path, **kwargs)
    assert_problem(wrong, 401, "unauthorized")


async def test_a_token_without_the_scope_is_403_before_its_body_is_validated(
    admin: httpx.AsyncClient, http: httpx.AsyncClient
) -> None:
    # The writer lacks "admin": adjustments answer 403, not the body's 422.
    assert_problem(await http.post("/inventory/adjustments", json={}, headers=W), 403, "forbidden")


async def test_an_anonymous_admin_request_is_401_before_its_body_is_validated(
    admin: httpx.AsyncClient,
) -> None:
    r = await admin.post("/admin/wms/sync", json={}, headers={"Authorization": ""})
    assert_problem(r, 401, "unauthorized")


# -- every 422 says what is wrong in `errors`, whichever layer refused the request --

A = auth(ADMIN_TOKEN)
REFUSED_LATE = [
    pytest.param(
        "POST",
        "/inventory/reserve",
        {"order_id": "o-ttl", "lines": [{"sku": "TEA", "quantity": 1}], "ttl_seconds": 10**8},
        "body.ttl_seconds",
        id="ttl-past-the-maximum",
    ),
    pytest.param(
        "POST",
        "/inventory/reserve",
        {"order_id": "o-unknown", "lines": [{"sku": "NO-SUCH-SKU", "quantity": 1}]},
        "body.lines",
        id="unknown-sku",
    ),
    pytest.param(
        "POST",
        "/inventory/reserve",
        {"order_id": "o-twice", "lines": [{"sku": "TEA", "quantity": 1}] * 2},
        "body.lines",
        id="sku-on-two-lines",
    ),
    pytest.param(
        "POST",
        "/orders",
        {**order("o-late"), "required_delivery_date": "2001-01-01"},
        "body.required_delivery_date",
        id="delivery-date-in-the-past",
    ),
    pytest.param(
        "POST",
        "/inventory/adjustments",
        {"sku": "TEA", "quantity": "on_hand", "delta": -51, "reason": "count", "reference_id": "a"},
        "body.delta",
        id="adjustment-below-zero",
    ),
    pytest.param("GET", "/inventory", None, "query.sku", id="no-sku-asked-for"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), REFUSED_LATE)
async def test_a_422_from_the_use_case_names_the_field_in_errors(
    http: httpx.AsyncClient, method: str, path: str, body: Any, field: str
) -> None:
    r = await http.request(method, path, json=body, headers=A)
    doc = assert_problem(r, 422, "validation")
    assert doc["errors"] == [{"field": field, "message": doc["detail"]}]


async def test_a_reused_idempotency_key_is_a_422_naming_the_header(
    http: httpx.AsyncClient,
) -> None:
    key = {**W, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await http.post("/inventory/release", json={"order_id": "o-1"}, headers=key)
    assert_problem(first, 404, "not-found")
    other = await http.post("/inventory/release", json={"order_id": "o-2"}, headers=key)
    doc = assert_problem(other, 422, "validation")
    assert doc["errors"] == [{"field": "header.Idempotency-Key", "message": doc["detail"]}]
    too_long = await http.post(
        "/inventory/release", json={"order_id": "o-1"}, headers={**W, "Idempotency-Key": "k" * 256}
    )
    doc = assert_problem(too_long, 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["header.Idempotency-Key"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/inventory/reserve", {"order_id": "o-bytes", "lines": [{"sku": "TEA", "quantity": 2}]}),
        ("/inventory/receipts", {"sku": "TEA", "quantity": 3, "reference_id": "rcpt-bytes"}),
        ("/inventory/release", {"order_id": "o-none"}),  # a problem answer too
    ],
)
async def test_a_repeat_under_its_key_replays_the_first_answer_byte_for_byte(
    http: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    """D-439: the answer is kept as the text it was sent as, not reordered by jsonb."""
    key = {**W, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = await http.post(path, json=body, headers=key)
    again = await http.post(path, json=body, headers=key)
    assert again.headers["Idempotency-Replayed"] == "true"
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["content-type"] == first.headers["content-type"]


async def test_a_sku_and_an_order_id_holding_a_slash_are_read_by_their_encoded_path(
    http: httpx.AsyncClient,
) -> None:
    """D-450: "/" in a SKU or an order id travels as %2F, which the server decodes before
    routing; the read routes take the rest of the path."""
    receipt = {"sku": "TEE/RED/M", "quantity": 4, "reference_id": f"r-{uuid.uuid4().hex}"}
    assert (await http.post("/inventory/receipts", json=receipt, headers=W)).status_code == 201
    body = {"order_id": "web/2026/7", "lines": [{"sku": "TEE/RED/M", "quantity": 1}]}
    made = await http.post("/inventory/reserve", json=body, headers=W)
    assert made.status_code == 201, made.text
    assert made.headers["Location"] == "/reservations/web%2F2026%2F7"
    one = await http.get("/inventory/TEE%2FRED%2FM", headers=W)
    assert one.status_code == 200, one.text
    assert (one.json()["sku"], one.json()["available"]) == ("TEE/RED/M", 3)
    ledger = await http.get("/inventory/TEE%2FRED%2FM/ledger", headers=W)
    assert ledger.status_code == 200, ledger.text
    assert [e["type"] for e in ledger.json()["entries"]] == ["RECEIPT", "ORDER_ALLOCATE"]
    held = await http.get(made.headers["Location"], headers=W)
    assert held.status_code == 200, held.text
    assert held.json()["order_id"] == "web/2026/7"
    plain = await http.get("/inventory/TEA/ledger", headers=W)  # a SKU without one
    assert plain.status_code == 200, plain.text
    assert_problem(await http.get("/inventory/NO%2FSUCH", headers=W), 404, "not-found")


async def test_an_order_id_holding_a_slash_is_polled_cancelled_and_paid_by_its_location(
    http: httpx.AsyncClient,
) -> None:
    """D-467: POST /orders takes "web/2026/8" and answers Location /orders/web%2F2026%2F8;
    the order's routes take the rest of the path, so that Location reads it back and its
    payment and cancel reach it (they were 404, the order unreachable)."""
    placed = await http.post("/orders", json=order("web/2026/8"), headers=W)
    assert placed.status_code == 202, placed.text
    where = placed.headers["Location"]
    assert where == "/orders/web%2F2026%2F8"
    polled = await http.get(where, headers=W)
    assert polled.status_code == 200, polled.text
    assert polled.json()["order_id"] == "web/2026/8"
    cancelled = await http.post(where + "/cancel", headers=W)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "CANCELLED"
    paid = {"status": "succeeded", "reference": "psp-1"}
    # The payment route reaches the order too: a cancelled order is not paid (409).
    assert_problem(await http.post(where + "/payment", json=paid, headers=W), 409, "conflict")
    assert_problem(await http.get("/orders/NO%2FSUCH", headers=W), 404, "not-found")


@pytest.mark.parametrize("dots", [".", ".."])
async def test_a_dot_segment_is_refused_as_an_id_at_every_entry(
    http: httpx.AsyncClient, container: Container, dots: str
) -> None:
    """D-470: `GET /inventory/..` is `GET /` by the time any client sends it (RFC 3986
    dot-segments), so a SKU or an order id "." or ".." could be written but never read
    by its path. Refused where it comes in, naming the field; "..." is an id."""

    def field_named(r: httpx.Response, field: str) -> None:
        doc = assert_problem(r, 422, "validation")
        assert any(e["field"].endswith(field) for e in doc["errors"]), doc
        assert "dot-segment" in r.text

    receipt = {"sku": dots, "quantity": 1, "reference_id": "r-dots"}
    field_named(await http.post("/inventory/receipts", json=receipt, headers=W), "sku")
    reserve = {"order_id": dots, "lines": [{"sku": "TEA", "quantity": 1}]}
    field_named(await http.post("/inventory/reserve", json=reserve, headers=W), "order_id")
    field_named(await http.post("/orders", json=order(dots), headers=W), "order_id")
    by_ref = {"sku": "TEA", "quantity": 1, "reference_id": dots}
    field_named(await http.post("/inventory/receipts", json=by_ref, headers=W), "reference_id")
    # A shopper's "." in an address line is a placeholder, not an id: still an order.
    dotted = {**order("o-dotted"), "ship_to": {**SHIP_TO, "line2": "."}}
    assert (await http.post("/orders", json=dotted, headers=W)).status_code == 202
    many = {"sku": "...", "quantity": 1, "reference_id": "r-three-dots"}
    assert (await http.post("/inventory/receipts", json=many, headers=W)).status_code == 201
    assert (await http.get("/inventory/...", headers=W)).json()["on_hand"] == 1
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sku WHERE sku LIKE '.%'") == 1
        assert await conn.fetchval("SELECT count(*) FROM reservation") == 0


# -- the probes answer HEAD as well as GET (D-393) --


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_health_and_readiness_answer_head_without_a_token(
    http: httpx.AsyncClient, admin: httpx.AsyncClient, path: str
) -> None:
    for client in (http, admin):
        r = await client.head(path, headers={"Authorization": ""})
        assert r.status_code == 200, (path, r.status_code, r.text)


async def test_the_oversell_counter_reads_zero_from_the_first_scrape(
    http: httpx.AsyncClient,
) -> None:
    # "stockkeeper_oversell_total (must stay 0)": a sample at 0, not a family with none
    # (D-395).
    text = (await http.get("/metrics")).text
    samples = [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "stockkeeper_oversell_total"
    ]
    assert samples, text
    assert {s.labels["source"] for s in samples} >= {"api"}
    assert sum(s.value for s in samples) == 0


# -- a problem's instance is a URI reference: the path percent-encoded (D-397) --


def _q(id_: str) -> str:
    return quote(id_, safe="")


@pytest.mark.parametrize(
    ("method", "path", "slug"),
    [
        pytest.param("GET", f"/inventory/{_q('заказ-1')}", "not-found", id="cyrillic-sku"),
        pytest.param("GET", f"/inventory/{_q('a' + chr(0x2028) + 'b')}", "validation", id="u2028"),
        pytest.param("GET", f"/orders/{_q('注文 7 ?#%')}", "not-found", id="cjk-and-url-chars"),
        pytest.param("POST", f"/orders/{_q('заказ-1')}/cancel", "not-found", id="idempotent"),
    ],
)
async def test_a_problems_instance_is_the_path_percent_encoded(
    http: httpx.AsyncClient, method: str, path: str, slug: str
) -> None:
    r = await http.request(method, path, headers={**W, "Idempotency-Key": uuid.uuid4().hex})
    doc = assert_problem(r, {"not-found": 404, "validation": 422}[slug], slug)
    assert doc["instance"] == path


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain"],
    ids=["none", "curl-d-form", "text"],
)
async def test_a_json_body_without_a_json_content_type_says_so(
    http: httpx.AsyncClient, content_type: str | None
) -> None:
    # curl -d without -H "Content-Type: application/json" sends a form type.
    body = b'{"order_id": "o-1", "lines": [{"sku": "TEA", "quantity": 1}]}'
    headers = {**W, **({"Content-Type": content_type} if content_type else {})}
    r = await http.post("/inventory/reserve", content=body, headers=headers)
    doc = assert_problem(r, 422, "validation")
    message = "the body must be JSON, sent with Content-Type: application/json"
    assert doc["errors"] == [{"field": "body", "message": message}]


async def test_a_body_that_is_not_valid_json_names_the_body_and_where_it_breaks(
    http: httpx.AsyncClient,
) -> None:
    """D-468: FastAPI puts the character offset of a JSON syntax error in its location
    (``body.8``), which read as a field named "8"; the field is the body, the offset is
    in the message."""
    body = b'{"order_id": "o-1",}'
    headers = {**W, "Content-Type": "application/json"}
    r = await http.post("/inventory/reserve", content=body, headers=headers)
    doc = assert_problem(r, 422, "validation")
    message = "not valid JSON at character 19: Expecting property name enclosed in double quotes"
    assert doc["errors"] == [{"field": "body", "message": message}]
    # A reason the parser cut off before its position ("starting at") reads whole.
    r = await http.post("/inventory/reserve", content=b'{"bad', headers=headers)
    doc = assert_problem(r, 422, "validation")
    message = "not valid JSON at character 1: Unterminated string starting"
    assert doc["errors"] == [{"field": "body", "message": message}]


# -- U+0000 anywhere is a 422, never the database's 500 (D-399) --

NUL = "a\x00b"
INVENTORY_NUL = [
    pytest.param(
        "/inventory/adjustments",
        {"sku": "TEA", "quantity": "on_hand", "delta": 1, "reason": NUL, "reference_id": "r"},
        "body.reason",
        id="adjustment-reason",
    ),
    pytest.param(
        "/inventory/release", {"order_id": "o-1", "reason": NUL}, "body.reason", id="release"
    ),
    pytest.param("/orders/o-1/cancel", {"reason": NUL}, "body.reason", id="order-cancel"),
]


@pytest.mark.parametrize(("path", "body", "field"), INVENTORY_NUL)
async def test_a_nul_in_a_reason_is_422(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], field: str
) -> None:
    r = await http.post(path, json=body, headers=A)
    doc = assert_problem(r, 422, "validation")
    assert [e["field"] for e in doc["errors"]] == [field]


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        pytest.param("/admin/dead-letters", {"queue": NUL}, "query.queue", id="dead-letter-queue"),
        pytest.param("/admin/skus", {"prefix": NUL}, "query.prefix", id="sku-prefix"),
        pytest.param("/admin/skus", {"after": NUL}, "query.after", id="sku-cursor"),
        pytest.param("/admin/reservations", {"sku": NUL}, "query.sku", id="reservations-sku"),
        pytest.param("/admin/orders", {"after": NUL}, "query.after", id="orders-cursor"),
    ],
)
async def test_a_nul_in_an_admin_filter_is_422(
    admin: httpx.AsyncClient, path: str, params: dict[str, str], field: str
) -> None:
    doc = assert_problem(await admin.get(path, params=params), 422, "validation")
    assert [e["field"] for e in doc["errors"]] == [field]


async def test_a_prefix_may_end_in_a_space_but_holds_no_invisible_character(
    admin: httpx.AsyncClient, container: Container
) -> None:
    await container.stock.receive(Receipt("TEA POT", 1, f"rcpt-{uuid.uuid4().hex}"))
    found = await admin.get("/admin/skus", params={"prefix": "TEA "})
    assert [i["sku"] for i in found.json()["items"]] == ["TEA POT"]
    refused = await admin.get("/admin/skus", params={"prefix": "TEA\u200b"})
    assert_problem(refused, 422, "validation")


async def test_a_nul_in_who_asked_for_a_wms_sync_is_422(admin: httpx.AsyncClient) -> None:
    body = {"reason": "count", "requested_by": NUL}
    doc = assert_problem(await admin.post("/admin/wms/sync", json=body), 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["body.requested_by"]


# -- D-481: times, cursors and path ids a client can send that the database cannot take --


@pytest.mark.parametrize(
    "when",
    [
        pytest.param("9999-12-31T23:59:59-14:00", id="past-9999-in-utc"),
        pytest.param("0001-01-01T00:00:00+01:00", id="before-year-1-in-utc"),
        pytest.param("0001-01-01T00:00:00Z", id="asyncpg-minus-infinity"),
        pytest.param("9999-12-31T23:59:59.999999Z", id="asyncpg-infinity"),
    ],
)
async def test_a_receipts_expiry_the_database_cannot_store_is_422(
    http: httpx.AsyncClient, container: Container, when: str
) -> None:
    receipt = {"sku": "OLD", "quantity": 1, "lot_number": "L", "expires_at": when}
    r = await http.post("/inventory/receipts", json={**receipt, "reference_id": "r-1"}, headers=A)
    doc = assert_problem(r, 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["body.expires_at"]
    async with container.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sku WHERE sku = 'OLD'") == 0


async def test_an_old_expiry_such_as_a_legacy_never_date_is_stored_as_sent(
    http: httpx.AsyncClient,
) -> None:
    receipt = {"sku": "OLD", "quantity": 1, "lot_number": "L", "reference_id": "r-1"}
    r = await http.post(
        "/inventory/receipts", json={**receipt, "expires_at": "1900-01-01T00:00:00Z"}, headers=A
    )
    assert r.status_code == 201, r.text
    (batch,) = (await http.get("/inventory/OLD", headers=A)).json()["batches"]
    assert batch["expires_at"].startswith("1900-01-01T00:00:00")


@pytest.mark.parametrize(
    ("path", "after"),
    [
        pytest.param("/admin/reservations", PAST_INT64, id="reservations-id"),
        pytest.param("/admin/wms/sync", PAST_INT64, id="wms-sync-id"),
        pytest.param("/admin/orders", f"2026-12-04T18:12:15Z~{PAST_INT64}", id="orders-id"),
        pytest.param("/admin/orders", "9999-12-31T23:59:59-14:00~1", id="orders-time-9999"),
        pytest.param("/admin/orders", "0001-01-01T00:00:00+01:00~1", id="orders-time-year-0"),
    ],
)
async def test_a_cursor_past_what_the_database_holds_is_422(
    admin: httpx.AsyncClient, path: str, after: str
) -> None:
    doc = assert_problem(await admin.get(path, params={"after": after}), 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["query.after"]


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        pytest.param("GET", "/admin/channels/A%E2%80%A8B/skus", "path.channel", id="channel-skus"),
        pytest.param("GET", "/admin/channels/A%00B/rules", "path.channel", id="channel-rules"),
        pytest.param(
            "GET", "/admin/channels/A%E2%80%8BB/unlisted", "path.channel", id="channel-unlisted"
        ),
        pytest.param("POST", "/admin/connectors/A%00B/poll", "path.connector", id="poll"),
    ],
)
async def test_a_channel_or_connector_id_with_a_refused_character_is_422(
    admin: httpx.AsyncClient, method: str, path: str, field: str
) -> None:
    doc = assert_problem(await admin.request(method, path), 422, "validation")
    assert [e["field"] for e in doc["errors"]] == [field]
    assert "\u2028" not in doc["detail"]
    assert "\x00" not in doc["detail"]


async def test_a_webhook_path_with_a_refused_character_is_422(http: httpx.AsyncClient) -> None:
    r = await http.post("/webhooks/A%E2%80%A8B", json={})
    doc = assert_problem(r, 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["path.connector"]


async def test_path_and_query_ids_are_named_as_fastapi_names_them(
    http: httpx.AsyncClient,
) -> None:
    doc = assert_problem(await http.get("/inventory/A%E2%80%8BB", headers=W), 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["path.sku"]
    r = await http.get("/inventory", params={"sku": "A\u200bB"}, headers=W)
    doc = assert_problem(r, 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["query.sku"]
    doc = assert_problem(await http.get("/orders/A%E2%80%8BB", headers=W), 422, "validation")
    assert [e["field"] for e in doc["errors"]] == ["path.order_id"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/inventory/NO%2FSUCH", id="sku"),
        pytest.param("/reservations/web%2F2026%2F99", id="reservation"),
        pytest.param("/inventory/NO%2FSUCH/ledger", id="ledger"),
    ],
)
async def test_a_problems_instance_keeps_an_ids_encoded_slash(
    http: httpx.AsyncClient, path: str
) -> None:
    doc = assert_problem(await http.get(path, headers=W), 404, "not-found")
    assert doc["instance"] == path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param(b"[" * 5000 + b"]" * 5000, "not valid JSON: nested too deeply", id="deep"),
        pytest.param(b'{"order_id": "\xff"}', "not UTF-8 at byte 14", id="not-utf8"),
    ],
)
async def test_a_body_that_cannot_be_read_names_the_body_and_why(
    http: httpx.AsyncClient, body: bytes, message: str
) -> None:
    """D-483: FastAPI's own "There was an error parsing the body" came with `errors`
    naming no field; the field is the body (D-468) and the message says why."""
    headers = {**W, "Content-Type": "application/json"}
    r = await http.post("/inventory/reserve", content=body, headers=headers)
    doc = assert_problem(r, 422, "validation")
    assert doc["errors"] == [{"field": "body", "message": message}]
