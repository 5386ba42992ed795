"""Many clients racing for the same stock through real HTTP: never oversold, all or none.

One server process per concurrency strategy, 300 (or 200 multi-line) reservations fired
at once with asyncio.gather; the outcome is checked over HTTP, in the database and with
``stockkeeper audit``.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.e2e.helpers import assert_problem, audit, client, receive, stock_of
from tests.support import WRITER_TOKEN, auth, base_config, running_server

pytestmark = pytest.mark.slow

STRATEGIES = ["conditional", "row_lock", "optimistic"]
LOSING = {"insufficient-stock", "conflict"}


def concurrency(strategy: str) -> dict[str, Any]:
    # optimistic: every request for the hot SKU reads the same batch version and only one
    # compare-and-swap per round wins; with the server's pool of 10 connections up to 9
    # requests lose each round and back off. With the default of 5 retries a trial run
    # here answered 66 of the 300 requests "409 conflict" (retries used up) while stock
    # was still left; the total still reached 100 only because other requests were
    # queued behind them, so a request that could have been served was refused. With 50
    # retries (backoff capped at 128 ms) every request gets its turn, and all 200 losers
    # were "insufficient-stock" in repeated runs. The other strategies wait on row locks
    # instead of retrying and keep the default.
    return {"strategy": strategy, "max_retries": 50 if strategy == "optimistic" else 5}


async def reservation_count(db_url: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM reservation")
        return n
    finally:
        await conn.close()


def assert_no_deadlock_logged(log: Path) -> None:
    text = log.read_text(errors="replace").lower()
    assert "deadlock" not in text, text[-4000:]
    assert "traceback" not in text, text[-4000:]


@pytest.mark.parametrize("coalesce", [1, 64], ids=["direct", "coalesced"])
@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_300_clients_for_100_units_get_exactly_100(
    strategy: str, coalesce: int, db_url: str, tmp_path: Path
) -> None:
    cfg = base_config(db_url, concurrency=concurrency(strategy) | {"coalesce_max_batch": coalesce})
    with running_server(cfg, tmp_path) as server:
        async with client(server, connections=300) as http:
            await receive(http, "HOT-1", 100)

            async def reserve(i: int) -> Any:
                return await http.post(
                    "/inventory/reserve",
                    json={"order_id": f"race-{i:03d}", "lines": [{"sku": "HOT-1", "quantity": 1}]},
                    headers=auth(WRITER_TOKEN),
                )

            responses = await asyncio.gather(*(reserve(i) for i in range(300)))
            statuses = Counter(r.status_code for r in responses)
            assert statuses == {201: 100, 409: 200}, statuses

            for r in responses:
                if r.status_code == 201:
                    body = r.json()
                    assert body["status"] == "PENDING"
                    [line] = body["lines"]
                    assert line["sku"] == "HOT-1"
                    assert sum(a["quantity"] for a in line["allocations"]) == 1
                else:
                    assert_problem(r, 409, LOSING)

            level = await stock_of(http, "HOT-1")
            assert level["on_hand"] == 100
            assert level["available"] == 0
            assert level["reserved"] == 100
            assert level["shortfall"] == 0

        assert await reservation_count(db_url) == 100
        result = audit(server)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "clean" in result.stdout
        assert_no_deadlock_logged(server.log_path)


SKUS = [f"MULTI-{c}" for c in "ABCDE"]
STOCK_PER_SKU = 40


def multi_line_orders(n: int, seed: int = 20240601) -> list[dict[str, Any]]:
    """``n`` orders of 2 to 5 lines over SKUS, the lines in random order (fixed seed)."""
    rng = random.Random(seed)
    orders = []
    for i in range(n):
        skus = rng.sample(SKUS, rng.randint(2, 5))
        lines = [{"sku": s, "quantity": rng.randint(1, 3)} for s in skus]
        orders.append({"order_id": f"multi-{i:03d}", "lines": lines})
    return orders


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_multi_line_orders_in_any_order_never_deadlock_or_oversell(
    strategy: str, db_url: str, tmp_path: Path
) -> None:
    orders = multi_line_orders(200)
    cfg = base_config(db_url, concurrency=concurrency(strategy))
    with running_server(cfg, tmp_path) as server:
        async with client(server, connections=200) as http:
            for sku in SKUS:
                await receive(http, sku, STOCK_PER_SKU)

            responses = await asyncio.gather(
                *(
                    http.post("/inventory/reserve", json=o, headers=auth(WRITER_TOKEN))
                    for o in orders
                )
            )
            statuses = Counter(r.status_code for r in responses)
            assert set(statuses) <= {201, 409}, [
                (r.status_code, r.text) for r in responses if r.status_code not in (201, 409)
            ]
            # Demand is several times the stock: some orders win, some lose.
            assert statuses[201] > 0
            assert statuses[409] > 0

            granted: Counter[str] = Counter()
            for order, r in zip(orders, responses, strict=True):
                if r.status_code == 201:
                    body = r.json()
                    assert body["order_id"] == order["order_id"]
                    asked = {li["sku"]: li["quantity"] for li in order["lines"]}
                    got = {
                        li["sku"]: sum(a["quantity"] for a in li["allocations"])
                        for li in body["lines"]
                    }
                    assert got == asked, (order, body)
                    granted.update(asked)
                else:
                    doc = assert_problem(r, 409, LOSING)
                    if doc["type"] == "insufficient-stock":
                        assert doc["shortages"], doc

            for sku in SKUS:
                level = await stock_of(http, sku)
                assert level["on_hand"] == STOCK_PER_SKU
                assert level["reserved"] <= STOCK_PER_SKU, level
                assert level["reserved"] == granted[sku], (sku, level, granted)
                assert level["available"] == STOCK_PER_SKU - granted[sku]

        assert await reservation_count(db_url) == statuses[201]
        result = audit(server)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_no_deadlock_logged(server.log_path)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_mixed_writers_at_once_leave_the_books_consistent(
    strategy: str, db_url: str, tmp_path: Path
) -> None:
    """Receipts of new lots, reservations, releases and confirmations of the same SKUs,
    all at once: every writer takes batch and SKU locks, in whichever order its kind of
    change needs, so this is where a lock-order mistake between two kinds would show."""
    rng = random.Random(7)
    skus = SKUS[:3]
    cfg = base_config(db_url, concurrency=concurrency(strategy))
    with running_server(cfg, tmp_path) as server:
        async with client(server, connections=100) as http:
            for sku in skus:
                await receive(http, sku, 30)
            for i in range(40):
                made = await http.post(
                    "/inventory/reserve",
                    json={"order_id": f"pre-{i}", "lines": [{"sku": skus[i % 3], "quantity": 1}]},
                    headers=auth(WRITER_TOKEN),
                )
                assert made.status_code == 201, made.text

            calls = [("/inventory/release", {"order_id": f"pre-{i}"}) for i in range(20)]
            calls += [("/inventory/confirm", {"order_id": f"pre-{i}"}) for i in range(20, 40)]
            calls += [
                (
                    "/inventory/receipts",
                    {
                        "sku": rng.choice(skus),
                        "quantity": rng.randint(1, 5),
                        "reference_id": f"lot-{i}",
                        "lot_number": f"L{i}",
                        "expires_at": f"2099-01-{i + 1:02d}T00:00:00Z",
                    },
                )
                for i in range(20)
            ]
            calls += [
                (
                    "/inventory/reserve",
                    {
                        "order_id": f"new-{i}",
                        "lines": [
                            {"sku": s, "quantity": rng.randint(1, 4)}
                            for s in rng.sample(skus, rng.randint(1, 3))
                        ],
                    },
                )
                for i in range(40)
            ]
            rng.shuffle(calls)
            responses = await asyncio.gather(
                *(http.post(path, json=body, headers=auth(WRITER_TOKEN)) for path, body in calls)
            )

            for (path, _), r in zip(calls, responses, strict=True):
                if path == "/inventory/reserve" and r.status_code == 409:
                    assert_problem(r, 409, LOSING)
                else:
                    expected = 201 if path in ("/inventory/reserve", "/inventory/receipts") else 200
                    assert r.status_code == expected, (path, r.status_code, r.text)

        result = audit(server)
        assert result.returncode == 0, result.stdout + result.stderr
        assert_no_deadlock_logged(server.log_path)
