"""Bad requests get their status and a problem+json answer, and write nothing at all.

One server for the module. "Nothing written" is checked twice: every table a request
can write to keeps its row count (no request deletes rows, so a new row would show),
and GET /inventory/BAD-1 answers exactly as before: figures, version and updated_at.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    PROBLEM_CONTENT_TYPE,
    assert_problem,
    client,
    stock_of,
    table_counts,
)
from tests.support import (
    ADMIN_TOKEN,
    READER_TOKEN,
    WRITER_TOKEN,
    ServerProcess,
    auth,
    base_config,
    running_server,
)

pytestmark = pytest.mark.slow

SKU = "BAD-1"
STOCK = 10
TEN_MB = 10 * 1024 * 1024


@pytest.fixture(scope="module")
def server(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(base_config(module_db_url), tmp_path_factory.mktemp("bad")) as s:
        resp = httpx.post(
            s.url + "/inventory/receipts",
            json={"sku": SKU, "quantity": STOCK, "reference_id": "seed"},
            headers=auth(),
        )
        assert resp.status_code == 201, resp.text
        yield s


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with client(server) as c:
        yield c


async def rejected(
    http: httpx.AsyncClient,
    db_url: str,
    method: str,
    path: str,
    status: int,
    slug: str,
    **kwargs: Any,
) -> httpx.Response:
    """Send the request; it must fail with ``status``/``slug`` and leave no trace."""
    before = await table_counts(db_url)
    stock_before = await stock_of(http, SKU)
    resp = await http.request(method, path, **kwargs)
    assert_problem(resp, status, slug)
    assert await table_counts(db_url) == before
    assert await stock_of(http, SKU) == stock_before
    return resp


def reserve_body(quantity: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"order_id": "bad-order", "lines": [{"sku": SKU, "quantity": quantity}], **extra}


BAD_QUANTITIES = [
    pytest.param(0, id="zero"),
    pytest.param(-1, id="negative"),
    pytest.param(2**31, id="past-int32"),
    pytest.param(10**30, id="huge"),
    pytest.param(1.5, id="fraction"),
    pytest.param(1.0, id="float-one"),
    pytest.param("3", id="string"),
    pytest.param(True, id="bool"),
    pytest.param(None, id="null"),
]


# -- 422 validation ------------------------------------------------------------------------


@pytest.mark.parametrize("quantity", BAD_QUANTITIES)
async def test_bad_quantity_on_reserve(
    quantity: Any, http: httpx.AsyncClient, module_db_url: str
) -> None:
    resp = await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/reserve",
        422,
        "validation",
        json=reserve_body(quantity),
        headers=auth(WRITER_TOKEN),
    )
    assert any("quantity" in e["field"] for e in resp.json()["errors"]), resp.json()


@pytest.mark.parametrize("quantity", BAD_QUANTITIES)
async def test_bad_quantity_on_receipts(
    quantity: Any, http: httpx.AsyncClient, module_db_url: str
) -> None:
    await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/receipts",
        422,
        "validation",
        json={"sku": SKU, "quantity": quantity, "reference_id": "bad-receipt"},
        headers=auth(WRITER_TOKEN),
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            {"order_id": "bad-unknown", "lines": [{"sku": "NO-SUCH-SKU", "quantity": 1}]},
            id="unknown-sku",
        ),
        pytest.param(
            {
                "order_id": "bad-unknown-2",
                "lines": [{"sku": SKU, "quantity": 1}, {"sku": "NO-SUCH-SKU", "quantity": 1}],
            },
            id="known-and-unknown-sku",
        ),
        pytest.param({"order_id": "bad-empty", "lines": []}, id="no-lines"),
        pytest.param(
            {"order_id": "bad-dup", "lines": [{"sku": SKU, "quantity": 1}] * 2},
            id="sku-twice",
        ),
        pytest.param(reserve_body(colour="red"), id="unknown-field"),
        pytest.param(reserve_body(ttl_seconds=7 * 86_400 + 1), id="ttl-over-max"),
        pytest.param(reserve_body(ttl_seconds=0), id="ttl-zero"),
        pytest.param({**reserve_body(), "order_id": " padded"}, id="order-id-whitespace"),
        pytest.param({**reserve_body(), "order_id": "a\x00b"}, id="order-id-nul"),
        pytest.param({**reserve_body(), "order_id": "x" * 129}, id="order-id-too-long"),
        pytest.param({"lines": [{"sku": SKU, "quantity": 1}]}, id="no-order-id"),
        pytest.param(reserve_body(location="no such place"), id="bad-location"),
    ],
)
async def test_invalid_reserve_body(
    body: dict[str, Any], http: httpx.AsyncClient, module_db_url: str
) -> None:
    await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/reserve",
        422,
        "validation",
        json=body,
        headers=auth(WRITER_TOKEN),
    )


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b'{"order_id": "bad-json", "lines": [', id="truncated"),
        pytest.param(b"{'order_id': 'single-quotes'}", id="not-json"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(
            b'{"order_id": "\xff\xfe"}',
            id="not-utf8",
        ),
    ],
)
async def test_malformed_json(content: bytes, http: httpx.AsyncClient, module_db_url: str) -> None:
    await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/reserve",
        422,
        "validation",
        content=content,
        headers={**auth(WRITER_TOKEN), "Content-Type": "application/json"},
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"sku": "bad\nsku", "quantity": 1, "reference_id": "r"}, id="sku-newline"),
        pytest.param({"sku": "", "quantity": 1, "reference_id": "r"}, id="sku-empty"),
        pytest.param({"sku": "S" * 129, "quantity": 1, "reference_id": "r"}, id="sku-too-long"),
        pytest.param({"sku": SKU, "quantity": 1}, id="no-reference"),
        pytest.param(
            {"sku": SKU, "quantity": 1, "reference_id": "r", "expires_at": "2031-01-01T00:00:00"},
            id="naive-expiry",
        ),
        pytest.param(
            {"sku": SKU, "quantity": 1, "reference_id": "r", "location": "-leading-dash"},
            id="bad-location",
        ),
    ],
)
async def test_invalid_receipt_body(
    body: dict[str, Any], http: httpx.AsyncClient, module_db_url: str
) -> None:
    await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/receipts",
        422,
        "validation",
        json=body,
        headers=auth(WRITER_TOKEN),
    )


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"delta": -(STOCK + 1)}, id="below-zero"),
        pytest.param({"delta": 0}, id="delta-zero"),
        pytest.param({"delta": 1, "set": 1}, id="delta-and-set"),
        pytest.param({}, id="neither"),
        pytest.param({"set": -1}, id="set-negative"),
    ],
)
async def test_invalid_adjustment(
    body: dict[str, Any], http: httpx.AsyncClient, module_db_url: str
) -> None:
    await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/adjustments",
        422,
        "validation",
        json={"sku": SKU, "quantity": "on_hand", "reason": "count", "reference_id": "adj", **body},
        headers=auth(ADMIN_TOKEN),
    )


async def test_idempotency_key_too_long(http: httpx.AsyncClient, module_db_url: str) -> None:
    await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/reserve",
        422,
        "validation",
        json=reserve_body(),
        headers={**auth(WRITER_TOKEN), "Idempotency-Key": "k" * 256},
    )


# -- 413 -----------------------------------------------------------------------------------
#
# Over a raw socket: the server answers 413 and closes the connection without reading
# the rest of the body. A client that writes all 10 MB before it reads (httpx does) gets
# a connection reset on that close instead of the answer; curl, which reads while it
# sends, sees the 413. So the request is sent as far as the server reads it, then read.


def raw_post(port: int, head: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST /inventory/reserve with ``head`` and as much of ``body`` as given; the answer."""
    lines = [
        "POST /inventory/reserve HTTP/1.1",
        "Host: 127.0.0.1",
        *(
            f"{k}: {v}"
            for k, v in {**auth(WRITER_TOKEN), "Content-Type": "application/json", **head}.items()
        ),
    ]
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        while not _complete(data):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, payload


def _complete(data: bytes) -> bool:
    """A whole response with a Content-Length is in ``data``."""
    head, sep, payload = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    found = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return found is not None and len(payload) >= int(found.group(1))


def assert_raw_problem(answer: tuple[int, dict[str, str], bytes], status: int, slug: str) -> None:
    code, headers, payload = answer
    assert code == status, answer
    assert headers["content-type"].startswith(PROBLEM_CONTENT_TYPE), headers
    doc = json.loads(payload[: int(headers["content-length"])])
    assert {"type", "title", "status", "detail"} <= set(doc), doc
    assert (doc["type"], doc["status"]) == (slug, status), doc


def ten_mb_body() -> bytes:
    doc = reserve_body()
    doc["order_id"] = "x" * TEN_MB  # still JSON: the size alone must refuse it
    return json.dumps(doc).encode()


async def test_ten_megabyte_body_is_413(server: ServerProcess, module_db_url: str) -> None:
    body = ten_mb_body()
    before = await table_counts(module_db_url)

    answer = raw_post(server.port, {"Content-Length": str(len(body))}, body[: 64 * 1024])

    assert_raw_problem(answer, 413, "payload-too-large")
    assert answer[1]["connection"] == "close"
    assert answer[1]["x-request-id"], answer[1]  # like every other answer (D-483)
    assert await table_counts(module_db_url) == before


async def test_oversized_chunked_body_is_413(server: ServerProcess, module_db_url: str) -> None:
    body = ten_mb_body()[: 1024 * 1024 + 64 * 1024]  # past the 1 MiB limit; no end marker
    before = await table_counts(module_db_url)

    answer = raw_post(
        server.port, {"Transfer-Encoding": "chunked"}, f"{len(body):x}\r\n".encode() + body
    )

    assert await table_counts(module_db_url) == before
    assert_raw_problem(answer, 413, "payload-too-large")


# -- 401 / 403 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        pytest.param({}, "Bearer", id="missing"),
        pytest.param(auth("not-a-known-token-at-all"), 'Bearer error="invalid_token"', id="wrong"),
        pytest.param({"Authorization": f"Basic {WRITER_TOKEN}"}, "Bearer", id="basic-scheme"),
        pytest.param({"Authorization": "Bearer"}, "Bearer", id="empty-bearer"),
    ],
)
async def test_unauthenticated_reserve_is_401(
    headers: dict[str, str], challenge: str, http: httpx.AsyncClient, module_db_url: str
) -> None:
    resp = await rejected(
        http,
        module_db_url,
        "POST",
        "/inventory/reserve",
        401,
        "unauthorized",
        json=reserve_body(),
        headers=headers,
    )
    assert resp.headers["www-authenticate"] == challenge


async def test_reads_need_a_token_too(http: httpx.AsyncClient) -> None:
    for path in (f"/inventory/{SKU}", f"/inventory/{SKU}/ledger", f"/inventory?sku={SKU}"):
        resp = await http.get(path)
        assert_problem(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("token", "path", "body"),
    [
        pytest.param(READER_TOKEN, "/inventory/reserve", reserve_body(), id="reader-reserve"),
        pytest.param(
            READER_TOKEN,
            "/inventory/receipts",
            {"sku": SKU, "quantity": 1, "reference_id": "reader"},
            id="reader-receipt",
        ),
        pytest.param(READER_TOKEN, "/inventory/release", {"order_id": "any"}, id="reader-release"),
        pytest.param(
            WRITER_TOKEN,
            "/inventory/adjustments",
            {"sku": SKU, "quantity": "on_hand", "delta": 5, "reason": "x", "reference_id": "w"},
            id="writer-adjustment",
        ),
    ],
)
async def test_missing_scope_is_403(
    token: str, path: str, body: dict[str, Any], http: httpx.AsyncClient, module_db_url: str
) -> None:
    await rejected(
        http, module_db_url, "POST", path, 403, "forbidden", json=body, headers=auth(token)
    )


# -- 404 / 405 -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/inventory/NO-SUCH-SKU", None, id="stock"),
        pytest.param("GET", "/inventory/NO-SUCH-SKU/ledger", None, id="ledger"),
        pytest.param("GET", "/reservations/no-such-order", None, id="reservation"),
        pytest.param("POST", "/inventory/release", {"order_id": "no-such-order"}, id="release"),
        pytest.param("POST", "/inventory/confirm", {"order_id": "no-such-order"}, id="confirm"),
        pytest.param("POST", "/inventory/fulfil", {"order_id": "no-such-order"}, id="fulfil"),
        pytest.param(
            "POST",
            "/inventory/adjustments",
            {
                "sku": "NO-SUCH-SKU",
                "quantity": "on_hand",
                "delta": 1,
                "reason": "x",
                "reference_id": "adj-404",
            },
            id="adjust-unknown-sku",
        ),
        pytest.param("GET", "/no/such/route", None, id="route"),
    ],
)
async def test_unknown_thing_is_404(
    method: str, path: str, body: dict[str, Any] | None, http: httpx.AsyncClient, module_db_url: str
) -> None:
    await rejected(
        http, module_db_url, method, path, 404, "not-found", json=body, headers=auth(ADMIN_TOKEN)
    )


async def test_wrong_method_is_405(http: httpx.AsyncClient, module_db_url: str) -> None:
    await rejected(
        http,
        module_db_url,
        "PUT",
        "/inventory/reserve",
        405,
        "method-not-allowed",
        json=reserve_body(),
        headers=auth(WRITER_TOKEN),
    )


# -- open endpoints ------------------------------------------------------------------------


async def test_health_and_readiness_need_no_token(http: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz"):
        resp = await http.get(path)
        assert resp.status_code == 200, resp.text


async def test_openapi_lists_the_reserve_call(http: httpx.AsyncClient) -> None:
    resp = await http.get("/openapi.json", headers=auth(READER_TOKEN))
    assert resp.status_code == 200
    doc = resp.json()
    assert "post" in doc["paths"]["/inventory/reserve"]
    # Each write route's repeat answer is in the contract beside its first (D-482).
    for path, first in (
        ("/inventory/reserve", "201"),
        ("/inventory/receipts", "201"),
        ("/inventory/adjustments", "201"),
        ("/orders", "202"),
    ):
        answers = doc["paths"][path]["post"]["responses"]
        assert {first, "200"} <= set(answers), (path, sorted(answers))
        assert set(answers["200"]["content"]) == {"application/json"}, path
        assert answers["200"]["content"] == answers[first]["content"], path


async def test_metrics_need_no_token_and_count_reservations(http: httpx.AsyncClient) -> None:
    made = await http.post(
        "/inventory/reserve",
        json={"order_id": "metrics-order", "lines": [{"sku": SKU, "quantity": 1}]},
        headers=auth(WRITER_TOKEN),
    )
    assert made.status_code == 201, made.text

    resp = await http.get("/metrics")

    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    assert 'stockkeeper_reservations_total{result="created"}' in resp.text
    released = await http.post(
        "/inventory/release", json={"order_id": "metrics-order"}, headers=auth(WRITER_TOKEN)
    )
    assert released.status_code == 200, released.text
