"""The WMS end to end: ``stockkeeper up`` as a real process on PostgreSQL and RabbitMQ,
the sandbox WMS over TCP, and every check made against both sets of books.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.wms import WmsState
from tests.e2e.helpers import audit, client
from tests.e2e.messaging_helpers import wait_until
from tests.support import ADMIN_TOKEN, WRITER_TOKEN, ServerProcess, auth, base_config

pytestmark = pytest.mark.slow

CONNECTOR = "wms-main"


def wms_config(
    db_url: str, rabbit_url: str, prefix: str, wms_url: str, **overrides: Any
) -> dict[str, Any]:
    connector = {
        "id": CONNECTOR,
        "type": "wms",
        "url": wms_url,
        "rate_limit_rps": 500,
        "timeout_ms": 2000,
        "max_attempts": 3,
        "backoff_base_ms": 20,
        "backoff_max_ms": 200,
        "page_size": 1000,
        "incremental_interval_s": 0,
        "outbound_batch_size": 50,
        "outbound_wait_ms": 50,
        "outbound_backoff_base_ms": 100,
        "outbound_backoff_max_ms": 1000,
        "outbound_max_attempts": 30,
        **overrides,
    }
    return base_config(
        db_url,
        broker={"url": rabbit_url, "prefix": prefix, "retry_base_ms": 50, "retry_max_ms": 500},
        connectors=[connector],
        # One pool for all of `up`, within a worker's share of the suite's budget (D-153).
        database={"pool_size": 12},
    )


class Up:
    """``stockkeeper up`` and two HTTP clients on it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.api = client(server, connections=60)
        self.admin = httpx.AsyncClient(base_url=server.admin_url, timeout=60)

    async def close(self) -> None:
        await self.api.aclose()
        await self.admin.aclose()
        self.server.stop()

    async def receive(self, sku: str, qty: int, ref: str, **kw: Any) -> dict[str, Any]:
        r = await self.api.post(
            "/inventory/receipts",
            json={"sku": sku, "quantity": qty, "reference_id": ref, **kw},
            headers=auth(ADMIN_TOKEN),
        )
        assert r.status_code == 201, r.text
        doc: dict[str, Any] = r.json()
        return doc

    async def reserve(self, order_id: str, lines: list[tuple[str, int]]) -> httpx.Response:
        return await self.api.post(
            "/inventory/reserve",
            json={"order_id": order_id, "lines": [{"sku": s, "quantity": q} for s, q in lines]},
            headers=auth(WRITER_TOKEN),
        )

    async def sync(self, **body: Any) -> dict[str, Any]:
        """Force a sync and wait for it to end; return its final state."""
        r = await self.admin.post(
            "/admin/wms/sync",
            json={"reason": "test", "requested_by": "tests", **body},
            headers=auth(ADMIN_TOKEN),
        )
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "PENDING"
        rid = r.json()["sync_request_id"]
        seen: list[str] = []

        async def ended() -> bool:
            doc = (await self.admin.get(f"/admin/wms/sync/{rid}", headers=auth())).json()
            seen.append(doc["status"])
            return doc["status"] in ("DONE", "FAILED")

        await wait_until(ended, timeout=240, what=f"sync request {rid} to end", interval=0.2)
        doc: dict[str, Any] = (
            await self.admin.get(f"/admin/wms/sync/{rid}", headers=auth())
        ).json()
        assert set(seen) <= {"PENDING", "IN_PROGRESS", doc["status"]}, seen
        return doc


@pytest.fixture
async def up_factory(
    db_url: str, rabbit_url: str, broker_prefix: str, tmp_path: Path
) -> AsyncIterator[Any]:
    started: list[Up] = []

    def start(wms_url: str, **overrides: Any) -> Up:
        cfg = wms_config(db_url, rabbit_url, broker_prefix, wms_url, **overrides)
        up = Up(ServerProcess(cfg, tmp_path, "up").start(timeout=60))
        started.append(up)
        return up

    yield start
    for up in started:
        await up.close()


async def our_batches(db_url: str) -> dict[tuple[str, str, str | None], tuple[int, int]]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT sku, location, lot_number, on_hand, unavailable FROM sku_batch"
        )
    finally:
        await conn.close()
    return {
        (r["sku"], r["location"], r["lot_number"]): (r["on_hand"], r["unavailable"]) for r in rows
    }


def their_batches(state: WmsState) -> dict[tuple[str, str, str | None], tuple[int, int]]:
    return {
        (r["sku"], r["location"], r["lot_number"]): (r["on_hand"], r["unavailable"])
        for r in state.rows()
    }


async def fetch(db_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(db_url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def assert_audit_clean(up: Up) -> None:
    result = audit(up.server)
    assert result.returncode == 0, result.stdout + result.stderr


# -- force sync -------------------------------------------------------------------


async def test_force_sync_of_one_batch_makes_it_say_what_the_wms_counts(
    wms: tuple[WmsState, SandboxServer], up_factory: Any, db_url: str
) -> None:
    state, sandbox = wms
    state.put("A", "default", "L1", 7, unavailable=1)
    state.put("A", "default", "L2", 40)
    up: Up = up_factory(sandbox.url)
    one = await up.receive("A", 10, "r-1", lot_number="L1")
    two = await up.receive("A", 10, "r-2", lot_number="L2")

    done = await up.sync(sku_batch_id=one["batch_id"])
    assert (done["status"], done["kind"], done["adjustments"]) == ("DONE", "batch", 1)
    a = (await up.api.get("/inventory/A", headers=auth())).json()
    by_lot = {b["lot_number"]: b for b in a["batches"]}
    assert (by_lot["L1"]["on_hand"], by_lot["L1"]["unavailable"]) == (7, 1)
    assert by_lot["L2"]["on_hand"] == 10  # only the batch asked for
    ledger = (await up.api.get("/inventory/A/ledger", headers=auth())).json()["entries"]
    moves = [(e["batch_id"], e["type"], e["on_hand"], e["unavailable"]) for e in ledger]
    assert (one["batch_id"], "ADJUSTMENT", -3, 1) in moves
    assert all(b != two["batch_id"] or t == "RECEIPT" for b, t, _, _ in moves)

    done = await up.sync(sku="A")
    assert (done["status"], done["kind"]) == ("DONE", "sku")
    a = (await up.api.get("/inventory/A", headers=auth())).json()
    assert a["on_hand"] == 47
    assert_audit_clean(up)


async def test_a_sync_that_cannot_reach_the_wms_fails_with_the_reason(
    wms: tuple[WmsState, SandboxServer], up_factory: Any
) -> None:
    _, sandbox = wms
    up: Up = up_factory(sandbox.url, max_attempts=2)
    sandbox.stop()
    done = await up.sync()
    assert done["status"] == "FAILED"
    assert done["error"].startswith("WMS unavailable"), done


async def test_full_sync_of_20000_batches_matches_the_wms_batch_for_batch(
    wms: tuple[WmsState, SandboxServer], up_factory: Any, db_url: str
) -> None:
    state, sandbox = wms
    state.seed(20_000, skus=5_000, seed=3)
    up: Up = up_factory(sandbox.url)

    first = await up.sync()
    assert first["status"] == "DONE", first
    assert first["rows_seen"] == 20_000
    assert await our_batches(db_url) == their_batches(state)

    # The WMS counts again: 500 batches change. Only those are adjusted.
    rng = random.Random(5)
    rows = state.rows()
    changed = rng.sample(rows, 500)
    for r in changed:
        state.put(r["sku"], r["location"], r["lot_number"], r["on_hand"] + rng.randint(1, 9))
    second = await up.sync()
    assert (second["status"], second["adjustments"]) == ("DONE", 500), second
    assert await our_batches(db_url) == their_batches(state)
    entries = await fetch(
        db_url,
        "SELECT count(*) AS n FROM inventory_ledger WHERE reference_id = $1",
        f"wms-sync:{second['sync_request_id']}",
    )
    assert entries[0]["n"] == 500
    assert_audit_clean(up)


async def test_a_sync_racing_reservations_loses_no_update_and_never_oversells(
    wms: tuple[WmsState, SandboxServer], up_factory: Any, db_url: str
) -> None:
    state, sandbox = wms
    state.seed(2_000, skus=20, seed=11)
    up: Up = up_factory(sandbox.url, page_size=100)
    assert (await up.sync())["status"] == "DONE"
    skus = sorted({r["sku"] for r in state.rows()})
    # The WMS finds 3 more of everything; the sync of that races 300 buyers.
    for r in state.rows():
        state.put(r["sku"], r["location"], r["lot_number"], r["on_hand"] + 3, r["unavailable"])
    rng = random.Random(2)
    orders = {
        f"o-{i}": [(s, rng.randint(1, 40)) for s in rng.sample(skus, rng.randint(1, 3))]
        for i in range(300)
    }
    sync = asyncio.create_task(up.sync())
    answers = await asyncio.gather(*(up.reserve(o, lines) for o, lines in orders.items()))
    done = await sync
    assert done["status"] == "DONE", done

    granted: Counter[str] = Counter()
    for (_order_id, lines), r in zip(orders.items(), answers, strict=True):
        assert r.status_code in (201, 409), r.text
        if r.status_code == 201:
            for sku, qty in lines:
                granted[sku] += qty
    assert granted, "no reservation went through: the race did not happen"
    assert await our_batches(db_url) == their_batches(state)  # no count lost
    levels = (
        await up.api.get("/inventory", params=[("sku", s) for s in skus], headers=auth())
    ).json()["items"]
    for lv in levels:
        assert lv["reserved"] == granted[lv["sku"]]  # no reservation lost
        assert lv["shortfall"] == 0
        assert lv["available"] >= 0
    assert_audit_clean(up)


# -- outbound ---------------------------------------------------------------------


async def expected_wms_items(db_url: str) -> dict[str, int]:
    """What the WMS must have booked: one item per reservation event and batch."""
    rows = await fetch(
        db_url,
        "SELECT event_id, payload::text AS payload FROM domain_event WHERE event_type IN "
        "('inventory.allocated', 'inventory.released', 'inventory.confirmed', "
        "'inventory.expired')",
    )
    items: dict[str, int] = {}
    for r in rows:
        for line in json.loads(r["payload"])["lines"]:
            key = f"{r['event_id']}:{line['batch_id']}"
            items[key] = items.get(key, 0) + line["quantity"]
    return items


async def books_match(state: WmsState, db_url: str) -> bool:
    return set(state.books()["applied"]) == set(await expected_wms_items(db_url))


async def assert_books_agree(state: WmsState, db_url: str) -> None:
    """Each item booked once, and the WMS holds per batch what we hold."""
    books = state.books()
    expected = await expected_wms_items(db_url)
    assert set(books["applied"]) == set(expected)
    for event_id, qty in expected.items():
        assert books["applied"][event_id]["quantity"] == qty
    held = {(b["sku"], b["location"], b["lot_number"]): b["allocated"] for b in books["batches"]}
    ours = await fetch(
        db_url, "SELECT sku, location, lot_number, reserved + committed AS held FROM sku_batch"
    )
    for r in ours:
        assert held.get((r["sku"], r["location"], r["lot_number"]), 0) == r["held"], dict(r)


async def make_orders(up: Up, n: int, skus: list[str]) -> list[str]:
    rng = random.Random(n)
    ids = [f"o-{i}" for i in range(n)]
    answers = await asyncio.gather(
        *(up.reserve(o, [(s, rng.randint(1, 3)) for s in rng.sample(skus, 2)]) for o in ids)
    )
    assert [r.status_code for r in answers] == [201] * n
    return ids


async def test_allocations_and_releases_reach_the_wms_once_through_429s_and_5xx(
    wms: tuple[WmsState, SandboxServer], up_factory: Any, db_url: str
) -> None:
    state, sandbox = wms
    faults = {"throttle_rate": 0.25, "error_rate": 0.25, "retry_after": 0.05, "seed": 7}
    r = httpx.put(sandbox.url + "/_sandbox/faults", json=faults)
    assert r.status_code == 200, r.text
    up: Up = up_factory(sandbox.url, outbound_batch_size=10)
    skus = [f"S{i}" for i in range(10)]
    for s in skus:
        await up.receive(s, 1000, f"r-{s}", lot_number="LOT-1")
    ids = await make_orders(up, 120, skus)
    for o in ids[:40]:
        r = await up.api.post(
            "/inventory/release", json={"order_id": o}, headers=auth(WRITER_TOKEN)
        )
        assert r.status_code == 200
    for o in ids[40:80]:
        r = await up.api.post(
            "/inventory/confirm", json={"order_id": o}, headers=auth(WRITER_TOKEN)
        )
        assert r.status_code == 200

    await wait_until(
        lambda: books_match(state, db_url), timeout=120, what="every item in the WMS's books"
    )
    await assert_books_agree(state, db_url)
    calls = httpx.get(sandbox.url + "/_sandbox/calls").json()
    assert min(calls["throttled"], calls["errors"]) > 0, calls
    audit_rows = await fetch(db_url, "SELECT outcome, count(*) AS n FROM wms_call GROUP BY 1")
    outcomes = {r["outcome"]: r["n"] for r in audit_rows}
    assert min(outcomes.get("rate_limited", 0), outcomes.get("server_error", 0)) > 0, outcomes
    assert outcomes["ok"] > 0
    left = await fetch(db_url, "SELECT status, count(*) FROM wms_outbound_item GROUP BY 1")
    assert {r["status"] for r in left} == {"SENT"}


async def test_the_wms_down_for_30_seconds_keeps_reserve_fast_and_loses_nothing(
    wms: tuple[WmsState, SandboxServer], up_factory: Any, db_url: str
) -> None:
    """The WMS is off the order path. Timing is only checked against the WMS's own
    timeout: a reserve that waited for the WMS would take at least that long."""
    state, sandbox = wms
    timeout_ms = 5000
    up: Up = up_factory(
        sandbox.url, timeout_ms=timeout_ms, max_attempts=2, outbound_backoff_max_ms=2000
    )
    skus = [f"S{i}" for i in range(4)]
    for s in skus:
        await up.receive(s, 100_000, f"r-{s}")

    async def reserve_for(seconds: float, tag: str) -> list[float]:
        took: list[float] = []
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = await up.reserve(f"{tag}-{i}", [(skus[i % 4], 1), (skus[(i + 1) % 4], 1)])
            took.append(time.perf_counter() - t0)
            assert r.status_code == 201, r.text
            i += 1
        return took

    before = await reserve_for(5, "up")
    sandbox.stop()
    during = await reserve_for(30, "down")
    pending = await fetch(
        db_url, "SELECT count(*) AS n FROM wms_outbound_item WHERE status = 'PENDING'"
    )
    assert pending[0]["n"] > 0  # the backlog waits for the WMS ...
    sandbox.start()
    await wait_until(
        lambda: books_match(state, db_url), timeout=120, what="the backlog to drain into the WMS"
    )
    await assert_books_agree(state, db_url)  # ... and reaches it whole, once
    failed = await fetch(
        db_url, "SELECT count(*) AS n FROM wms_call WHERE outcome = 'connect_error'"
    )
    assert failed[0]["n"] > 0

    def p(xs: list[float], q: float) -> float:
        return sorted(xs)[int(q * (len(xs) - 1))] * 1000

    print(
        f"\nreserve latency ms: WMS up p50 {p(before, 0.5):.1f} p99 {p(before, 0.99):.1f} "
        f"(n={len(before)}); WMS down p50 {p(during, 0.5):.1f} p99 {p(during, 0.99):.1f} "
        f"(n={len(during)}), mean ratio {statistics.mean(during) / statistics.mean(before):.2f}"
    )
    assert max(during) * 1000 < timeout_ms
