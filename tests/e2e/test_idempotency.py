"""Repeats, at once and one after the other: one effect, the same answer.

One server for the module; every test works on its own SKUs, order ids and keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.helpers import assert_problem, client, receive, stock_of, table_counts
from tests.support import WRITER_TOKEN, ServerProcess, auth, base_config, running_server

pytestmark = pytest.mark.slow

N = 20


@pytest.fixture(scope="module")
def server(module_db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(base_config(module_db_url), tmp_path_factory.mktemp("idem")) as s:
        yield s


@pytest.fixture
async def http(server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with client(server, connections=N) as c:
        yield c


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:8]


async def ledger(http: httpx.AsyncClient, sku: str) -> list[dict[str, Any]]:
    resp = await http.get(f"/inventory/{sku}/ledger", params={"limit": 1000}, headers=auth())
    assert resp.status_code == 200, resp.text
    entries: list[dict[str, Any]] = resp.json()["entries"]
    return entries


async def reservations_of(db_url: str, order_id: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM reservation WHERE order_id = $1", order_id
        )
        return n
    finally:
        await conn.close()


def entry_types(entries: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["type"] for e in entries)


# -- the same order_id -------------------------------------------------------------------


async def test_same_order_twenty_times_at_once_reserves_once(
    http: httpx.AsyncClient, module_db_url: str, uid: str
) -> None:
    sku = f"IDEM-ORDER-{uid}"
    await receive(http, sku, 50)
    body = {"order_id": f"order-{uid}", "lines": [{"sku": sku, "quantity": 3}]}

    responses = await asyncio.gather(
        *(http.post("/inventory/reserve", json=body, headers=auth(WRITER_TOKEN)) for _ in range(N))
    )

    assert Counter(r.status_code for r in responses) == {201: 1, 200: N - 1}
    first = responses[[r.status_code for r in responses].index(201)].json()
    assert first["status"] == "PENDING"
    assert all(r.json() == first for r in responses), [r.json() for r in responses]
    level = await stock_of(http, sku)
    assert (level["reserved"], level["available"]) == (3, 47)
    assert entry_types(await ledger(http, sku)) == {"RECEIPT": 1, "ORDER_ALLOCATE": 1}
    assert await reservations_of(module_db_url, body["order_id"]) == 1


async def test_same_order_with_other_lines_is_a_conflict(http: httpx.AsyncClient, uid: str) -> None:
    sku = f"IDEM-OTHER-{uid}"
    await receive(http, sku, 50)
    order_id = f"order-{uid}"
    first = await http.post(
        "/inventory/reserve",
        json={"order_id": order_id, "lines": [{"sku": sku, "quantity": 3}]},
        headers=auth(WRITER_TOKEN),
    )
    assert first.status_code == 201, first.text

    other = await http.post(
        "/inventory/reserve",
        json={"order_id": order_id, "lines": [{"sku": sku, "quantity": 4}]},
        headers=auth(WRITER_TOKEN),
    )

    assert_problem(other, 409, "conflict")
    assert (await stock_of(http, sku))["reserved"] == 3


# -- Idempotency-Key -----------------------------------------------------------------------


async def test_same_key_twenty_times_at_once_on_reserve_has_one_effect(
    http: httpx.AsyncClient, module_db_url: str, uid: str
) -> None:
    sku = f"IDEM-KEY-{uid}"
    await receive(http, sku, 50)
    body = {"order_id": f"keyed-{uid}", "lines": [{"sku": sku, "quantity": 5}]}
    headers = {**auth(WRITER_TOKEN), "Idempotency-Key": f"key-{uid}"}

    responses = await asyncio.gather(
        *(http.post("/inventory/reserve", json=body, headers=headers) for _ in range(N))
    )

    # The first answer, replayed: the same status and body for every copy.
    assert Counter(r.status_code for r in responses) == {201: N}
    first = responses[0].json()
    assert all(r.json() == first for r in responses)
    replayed = [r for r in responses if r.headers.get("idempotency-replayed") == "true"]
    assert len(replayed) == N - 1
    level = await stock_of(http, sku)
    assert (level["reserved"], level["available"]) == (5, 45)
    assert entry_types(await ledger(http, sku)) == {"RECEIPT": 1, "ORDER_ALLOCATE": 1}
    assert await reservations_of(module_db_url, body["order_id"]) == 1


async def test_same_key_twenty_times_at_once_on_receipts_has_one_effect(
    http: httpx.AsyncClient, uid: str
) -> None:
    sku = f"IDEM-RCPT-KEY-{uid}"
    body = {"sku": sku, "quantity": 7, "reference_id": f"ref-{uid}"}
    headers = {**auth(WRITER_TOKEN), "Idempotency-Key": f"key-{uid}"}

    responses = await asyncio.gather(
        *(http.post("/inventory/receipts", json=body, headers=headers) for _ in range(N))
    )

    assert Counter(r.status_code for r in responses) == {201: N}, [r.text for r in responses]
    first = responses[0].json()
    assert all(r.json() == first for r in responses)
    assert (await stock_of(http, sku))["on_hand"] == 7
    assert entry_types(await ledger(http, sku)) == {"RECEIPT": 1}


@pytest.mark.parametrize("endpoint", ["reserve", "receipts"])
async def test_same_key_with_another_body_is_422(
    endpoint: str, http: httpx.AsyncClient, module_db_url: str, uid: str
) -> None:
    sku = f"IDEM-REUSE-{uid}"
    await receive(http, sku, 50)
    headers = {**auth(WRITER_TOKEN), "Idempotency-Key": f"key-{uid}"}
    if endpoint == "reserve":
        body: dict[str, Any] = {"order_id": f"o-{uid}", "lines": [{"sku": sku, "quantity": 1}]}
        other: dict[str, Any] = {"order_id": f"o-{uid}", "lines": [{"sku": sku, "quantity": 2}]}
    else:
        body = {"sku": sku, "quantity": 1, "reference_id": f"ref-{uid}"}
        other = {"sku": sku, "quantity": 2, "reference_id": f"ref-{uid}-b"}
    first = await http.post(f"/inventory/{endpoint}", json=body, headers=headers)
    assert first.status_code == 201, first.text
    level = await stock_of(http, sku)
    before = await table_counts(module_db_url)

    resp = await http.post(f"/inventory/{endpoint}", json=other, headers=headers)

    assert_problem(resp, 422, "validation")
    assert await table_counts(module_db_url) == before
    assert await stock_of(http, sku) == level
    # The original request still replays its first answer.
    again = await http.post(f"/inventory/{endpoint}", json=body, headers=headers)
    assert (again.status_code, again.json()) == (201, first.json())


async def test_key_replays_an_error_answer_too(http: httpx.AsyncClient, uid: str) -> None:
    sku = f"IDEM-ERR-{uid}"
    await receive(http, sku, 1)
    body = {"order_id": f"o-{uid}", "lines": [{"sku": sku, "quantity": 2}]}
    headers = {**auth(WRITER_TOKEN), "Idempotency-Key": f"key-{uid}"}
    first = await http.post("/inventory/reserve", json=body, headers=headers)
    assert_problem(first, 409, "insufficient-stock")
    await receive(http, sku, 5, reference_id=f"more-{uid}")

    again = await http.post("/inventory/reserve", json=body, headers=headers)

    # The same key answers as it did the first time, even though stock arrived since.
    assert_problem(again, 409, "insufficient-stock")
    assert again.json() == first.json()
    assert (await stock_of(http, sku))["reserved"] == 0


# -- reference_id on receipts --------------------------------------------------------------


async def test_receipt_with_the_same_reference_twice_counts_once(
    http: httpx.AsyncClient, uid: str
) -> None:
    sku = f"IDEM-REF-{uid}"
    body = {"sku": sku, "quantity": 9, "reference_id": f"ref-{uid}"}

    first = await http.post("/inventory/receipts", json=body, headers=auth(WRITER_TOKEN))
    second = await http.post("/inventory/receipts", json=body, headers=auth(WRITER_TOKEN))

    assert first.status_code == 201, first.text
    assert second.status_code == 200, second.text
    assert second.json() == first.json()
    assert (await stock_of(http, sku))["on_hand"] == 9
    assert entry_types(await ledger(http, sku)) == {"RECEIPT": 1}


async def test_receipt_with_the_same_reference_twenty_times_at_once_counts_once(
    http: httpx.AsyncClient, uid: str
) -> None:
    sku = f"IDEM-REF-RACE-{uid}"
    body = {"sku": sku, "quantity": 4, "reference_id": f"ref-{uid}"}

    responses = await asyncio.gather(
        *(http.post("/inventory/receipts", json=body, headers=auth(WRITER_TOKEN)) for _ in range(N))
    )

    assert Counter(r.status_code for r in responses) == {201: 1, 200: N - 1}, [
        r.text for r in responses
    ]
    first = next(r.json() for r in responses if r.status_code == 201)
    assert all(r.json() == first for r in responses)
    assert (await stock_of(http, sku))["on_hand"] == 4
    assert entry_types(await ledger(http, sku)) == {"RECEIPT": 1}


async def test_reference_reused_for_another_receipt_is_a_conflict(
    http: httpx.AsyncClient, module_db_url: str, uid: str
) -> None:
    sku = f"IDEM-REF-OTHER-{uid}"
    first = await http.post(
        "/inventory/receipts",
        json={"sku": sku, "quantity": 3, "reference_id": f"ref-{uid}"},
        headers=auth(WRITER_TOKEN),
    )
    assert first.status_code == 201, first.text
    before = await table_counts(module_db_url)

    resp = await http.post(
        "/inventory/receipts",
        json={"sku": sku, "quantity": 30, "reference_id": f"ref-{uid}"},
        headers=auth(WRITER_TOKEN),
    )

    assert_problem(resp, 409, "conflict")
    assert await table_counts(module_db_url) == before
    assert (await stock_of(http, sku))["on_hand"] == 3


# -- release, confirm, fulfil repeated -----------------------------------------------------


async def test_release_twenty_times_at_once_gives_the_stock_back_once(
    http: httpx.AsyncClient, uid: str
) -> None:
    sku = f"IDEM-REL-{uid}"
    await receive(http, sku, 10)
    order_id = f"o-{uid}"
    made = await http.post(
        "/inventory/reserve",
        json={"order_id": order_id, "lines": [{"sku": sku, "quantity": 6}]},
        headers=auth(WRITER_TOKEN),
    )
    assert made.status_code == 201, made.text

    responses = await asyncio.gather(
        *(
            http.post("/inventory/release", json={"order_id": order_id}, headers=auth(WRITER_TOKEN))
            for _ in range(N)
        )
    )

    assert Counter(r.status_code for r in responses) == {200: N}, [r.text for r in responses]
    assert {r.json()["status"] for r in responses} == {"CANCELLED"}
    level = await stock_of(http, sku)
    assert (level["reserved"], level["available"]) == (0, 10)
    assert entry_types(await ledger(http, sku)) == {
        "RECEIPT": 1,
        "ORDER_ALLOCATE": 1,
        "ORDER_RELEASE": 1,
    }


async def test_confirm_and_fulfil_repeated_move_the_stock_once(
    http: httpx.AsyncClient, uid: str
) -> None:
    sku = f"IDEM-FUL-{uid}"
    await receive(http, sku, 10)
    order_id = f"o-{uid}"
    made = await http.post(
        "/inventory/reserve",
        json={"order_id": order_id, "lines": [{"sku": sku, "quantity": 4}]},
        headers=auth(WRITER_TOKEN),
    )
    assert made.status_code == 201, made.text

    for step, status in (("confirm", "CONFIRMED"), ("fulfil", "FULFILLED")):
        responses = await asyncio.gather(
            *(
                http.post(f"/inventory/{step}", json={"order_id": order_id}, headers=auth())
                for _ in range(5)
            )
        )
        assert Counter(r.status_code for r in responses) == {200: 5}, [r.text for r in responses]
        assert {r.json()["status"] for r in responses} == {status}

    level = await stock_of(http, sku)
    assert (level["on_hand"], level["reserved"], level["committed"]) == (6, 0, 0)
    assert level["available"] == 6
    assert entry_types(await ledger(http, sku)) == {
        "RECEIPT": 1,
        "ORDER_ALLOCATE": 1,
        "ORDER_CONFIRM": 1,
        "FULFIL": 1,
    }
