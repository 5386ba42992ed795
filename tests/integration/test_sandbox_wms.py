"""The sandbox WMS over real TCP: paging, filters, changes, allocations, faults, restarts."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
import pytest

from stockkeeper_sandbox.server import (
    FaultController,
    Faults,
    SandboxServer,
    format_retry_after,
)
from stockkeeper_sandbox.wms import WmsState, create_app

TOKEN = "sandbox-wms-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Wms:
    state: WmsState
    faults: FaultController
    server: SandboxServer

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers=AUTH, timeout=5)


@pytest.fixture
def wms() -> Iterator[Wms]:
    state, faults = WmsState(), FaultController()
    with SandboxServer(create_app(state, token=TOKEN, faults=faults)) as server:
        yield Wms(state, faults, server)
    assert not [t for t in threading.enumerate() if t.name.startswith("sandbox-")]


def key(row: dict[str, object]) -> tuple[object, object, object]:
    return (row["sku"], row["location"], row["lot_number"])


def all_pages(client: httpx.Client, limit: int, **filters: str) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": limit, **filters}
        if cursor:
            params["cursor"] = cursor
        resp = client.get("/v1/stock", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["items"]) <= limit
        rows += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


@pytest.mark.parametrize("limit", [1, 7, 64, 5000])
def test_paging_covers_every_row_exactly_once(wms: Wms, limit: int) -> None:
    wms.state.seed(240, skus=40)  # six batches per SKU: ties in sku everywhere
    with wms.client() as client:
        rows = all_pages(client, limit)
    keys = [key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 240
    assert keys == [key(r) for r in wms.state.rows()]
    # Wire order: (sku, location, lot_number), a batch without a lot first.
    assert keys == sorted(keys, key=lambda k: (k[0], k[1], k[2] is not None, k[2] or ""))


def test_seed_is_deterministic() -> None:
    a, b = WmsState(), WmsState()
    a.seed(10_000, seed=3)
    b.seed(10_000, seed=3)
    strip = [{**r, "updated_at": None} for r in a.rows()]
    assert strip == [{**r, "updated_at": None} for r in b.rows()]
    assert len(strip) == 10_000


def test_seeded_batches_never_count_more_unavailable_than_on_hand() -> None:
    # Unavailable units (damaged, quarantined) are among those on hand: a seeded batch
    # with more showed a shortfall on a fresh install where nothing was promised (the
    # README's `stockkeeper sandbox wms --batches 1000` gave six).
    state = WmsState()
    state.seed(1000)
    assert [r for r in state.rows() if r["unavailable"] > r["on_hand"]] == []


def test_filters_narrow_the_snapshot(wms: Wms) -> None:
    s = wms.state
    s.put("A", "WH-1", None, 1)
    s.put("A", "WH-1", "L2", 2, expires_at=datetime(2031, 1, 1, tzinfo=UTC))
    s.put("A", "WH-2", "L1", 3)
    s.put("B", "WH-1", None, 4)
    s.put("AB", "WH-1", None, 5)
    with wms.client() as client:
        assert [r["on_hand"] for r in all_pages(client, 1, sku="A")] == [1, 2, 3]
        one = all_pages(client, 10, sku="A", location="WH-1", lot_number="L2")
        assert one == [
            {
                "sku": "A",
                "location": "WH-1",
                "lot_number": "L2",
                "expires_at": "2031-01-01T00:00:00+00:00",
                "on_hand": 2,
                "unavailable": 0,
                "updated_at": one[0]["updated_at"],
            }
        ]
        # An empty lot_number asks for the batch without a lot.
        assert [r["on_hand"] for r in all_pages(client, 10, sku="A", lot_number="")] == [1]
        assert [r["on_hand"] for r in all_pages(client, 2, location="WH-1")] == [1, 2, 5, 4]
        assert all_pages(client, 10, sku="C") == []


def test_bad_limits_cursors_and_tokens_are_422(wms: Wms) -> None:
    with wms.client() as client:
        for params in ({"limit": 0}, {"limit": 5001}, {"cursor": "not-a-cursor"}):
            assert client.get("/v1/stock", params=params).status_code == 422
        for since in ("garbage", "deadbeef-1", f"{wms.state.head().split('-')[0]}-99"):
            resp = client.get("/v1/stock/changes", params={"since": since})
            assert resp.status_code == 422, since


def test_a_token_is_required(wms: Wms) -> None:
    assert httpx.get(f"{wms.server.url}/v1/stock").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.get(f"{wms.server.url}/v1/stock/token", headers=wrong).status_code == 401
    # The control routes are for the tests and the demo: no token.
    assert httpx.get(f"{wms.server.url}/_sandbox/books").status_code == 200


def test_changes_since_a_token_give_each_batch_once_at_its_latest(wms: Wms) -> None:
    s = wms.state
    for sku in "ABCD":
        s.put(sku, "WH", None, 10)
    with wms.client() as client:
        since = client.get("/v1/stock/token").json()["token"]
        s.put("C", "WH", None, 11)
        s.put("A", "WH", None, 12)
        s.put("C", "WH", None, 13)  # C again: sent once, at its new place and value
        s.put("E", "WH", None, 14)
        body = client.get("/v1/stock/changes", params={"since": since}).json()
        assert [(r["sku"], r["on_hand"]) for r in body["items"]] == [
            ("A", 12),
            ("C", 13),
            ("E", 14),
        ]
        assert body["has_more"] is False
        assert body["next_token"] == client.get("/v1/stock/token").json()["token"]

        # Paged one at a time, the same answer; then nothing new.
        seen, token, more = [], since, True
        while more:
            page = client.get("/v1/stock/changes", params={"since": token, "limit": 1}).json()
            seen += [r["sku"] for r in page["items"]]
            token, more = page["next_token"], page["has_more"]
        assert seen == ["A", "C", "E"]
        empty = client.get("/v1/stock/changes", params={"since": token}).json()
        assert empty == {"items": [], "next_token": token, "has_more": False}
        # No token: every batch, from the start of the log.
        everything = client.get("/v1/stock/changes").json()["items"]
        assert sorted(r["sku"] for r in everything) == list("ABCDE")


def item(event_id: str, action: str = "allocate", quantity: int = 2) -> dict[str, object]:
    return {
        "event_id": event_id,
        "action": action,
        "order_id": "o-1",
        "sku": "A",
        "location": "WH",
        "lot_number": None,
        "quantity": quantity,
    }


def test_allocations_are_applied_once_per_event_id(wms: Wms) -> None:
    with wms.client() as client:
        first = client.post("/v1/allocations", json={"items": [item("e1"), item("e2")]})
        assert first.json() == {
            "results": [
                {"event_id": "e1", "status": "applied"},
                {"event_id": "e2", "status": "applied"},
            ]
        }
        again = client.post(
            "/v1/allocations", json={"items": [item("e2"), item("e3", "release", 1)]}
        )
        assert [r["status"] for r in again.json()["results"]] == ["duplicate", "applied"]
        client.post("/v1/allocations", json={"items": [item("e4", "confirm", 3)]})
        for bad in (
            [],
            [item("x", quantity=0)],
            [item("x", "steal")],
            [item(f"x{i}") for i in range(501)],
        ):
            assert client.post("/v1/allocations", json={"items": bad}).status_code == 422
    books = wms.state.books()
    assert set(books["applied"]) == {"e1", "e2", "e3", "e4"}
    assert books["applied"]["e2"]["duplicates"] == 1
    assert books["duplicates"] == 1
    assert books["batches"] == [
        {"sku": "A", "location": "WH", "lot_number": None, "allocated": 3, "confirmed": 3}
    ]


def test_past_rps_the_answer_is_429_with_retry_after(wms: Wms) -> None:
    with wms.client() as client:
        put = client.put("/_sandbox/faults", json={"rps": 5, "burst": 2})
        assert put.json()["rps"] == 5
        statuses = [client.get("/v1/stock/token") for _ in range(4)]
        assert [r.status_code for r in statuses] == [200, 200, 429, 429]
        wait = float(statuses[2].headers["Retry-After"])
        assert 0 < wait <= 0.2
        time.sleep(wait)
        assert client.get("/v1/stock/token").status_code == 200
        assert client.get("/_sandbox/calls").json() == {
            "total": 5,
            "ok": 3,
            "throttled": 2,
            "errors": 0,
            "hung": 0,
        }


def test_error_and_throttle_rates_repeat_with_a_seed(wms: Wms) -> None:
    faults = {"error_rate": 0.3, "throttle_rate": 0.2, "seed": 7, "retry_after": 0.05}
    runs = []
    with wms.client() as client:
        for _ in range(2):
            client.put("/_sandbox/faults", json=faults)  # the same seed again: same answers
            answers = [client.get("/v1/stock/token") for _ in range(40)]
            runs.append([r.status_code for r in answers])
        throttled = [r for r in answers if r.status_code == 429]
        assert {r.headers["Retry-After"] for r in throttled} == {"0.05"}
        calls = client.get("/_sandbox/calls").json()
    assert runs[0] == runs[1]
    assert set(runs[0]) == {200, 429, 503}
    assert calls["total"] == 80
    assert calls["throttled"] == 2 * runs[0].count(429)
    assert calls["errors"] == 2 * runs[0].count(503)
    assert calls["ok"] == 2 * runs[0].count(200)


def test_delay_is_added_to_every_call(wms: Wms) -> None:
    # A delay long enough that a control call slowed by it cannot pass for a busy machine.
    wms.faults.set(Faults(delay_ms=1000))
    with wms.client() as client:
        started = time.monotonic()
        assert client.get("/v1/stock/token").status_code == 200
        assert time.monotonic() - started >= 1.0
        # The control routes are never slowed down or failed.
        started = time.monotonic()
        client.get("/_sandbox/calls")
        assert time.monotonic() - started < 1.0


async def test_a_hang_lasts_until_the_faults_are_cleared(wms: Wms) -> None:
    wms.faults.set(Faults(hang=True))
    async with httpx.AsyncClient(base_url=wms.server.url, headers=AUTH, timeout=10) as client:
        call = asyncio.create_task(client.get("/v1/stock/token"))
        while wms.faults.calls()["hung"] < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert not call.done()
        cleared = await client.delete("/_sandbox/faults")
        assert cleared.json()["hang"] is False
        resp = await asyncio.wait_for(call, 5)
    assert resp.status_code == 200


def test_stop_refuses_connections_and_start_keeps_port_and_state(wms: Wms) -> None:
    wms.state.put("A", "WH", None, 7)
    url, port = wms.server.url, wms.server.port
    wms.faults.set(Faults(hang=True))  # a call in flight when it stops is dropped, too
    wms.server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/v1/stock", headers=AUTH)
    wms.faults.clear()
    wms.server.start()
    assert wms.server.port == port
    rows = httpx.get(f"{url}/v1/stock", headers=AUTH).json()["items"]
    assert [(r["sku"], r["on_hand"]) for r in rows] == [("A", 7)]


def test_control_routes_upsert_seed_and_show_books(wms: Wms) -> None:
    with wms.client() as client:
        put = client.put(
            "/_sandbox/stock", json={"items": [{"sku": "Z", "on_hand": -3, "location": "WH"}]}
        )
        assert put.json()["count"] == 1
        assert client.post("/_sandbox/seed", json={"batches": 10, "skus": 5}).status_code == 200
        assert client.get("/_sandbox/books").json() == {
            "applied": {},
            "duplicates": 0,
            "batches": [],
        }
        assert client.put("/_sandbox/faults", json={"error_rate": 2}).status_code == 422
    assert len(wms.state.rows()) == 11


@pytest.mark.parametrize(
    ("seconds", "header"), [(1.0, "1"), (2, "2"), (0.2, "0.2"), (0.05, "0.05"), (0.0001, "0.001")]
)
def test_retry_after_is_whole_or_decimal(seconds: float, header: str) -> None:
    assert format_retry_after(seconds) == header
