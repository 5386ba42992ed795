"""The sandbox marketplace over real TCP: the delta feed, control routes, faults."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from stockkeeper_sandbox.marketplace import MarketplaceState, create_app
from stockkeeper_sandbox.server import FaultController, Faults, SandboxServer

TOKEN = "sandbox-marketplace-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Marketplace:
    state: MarketplaceState
    faults: FaultController
    server: SandboxServer

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.server.url, headers=AUTH, timeout=5)


@pytest.fixture
def market() -> Iterator[Marketplace]:
    state, faults = MarketplaceState(), FaultController()
    with SandboxServer(create_app(state, token=TOKEN, faults=faults)) as server:
        yield Marketplace(state, faults, server)
    assert not [t for t in threading.enumerate() if t.name.startswith("sandbox-")]


def read_all(
    client: httpx.Client, since: str | None = None, limit: int = 500
) -> tuple[list[dict[str, Any]], str]:
    """Every change after ``since``, page by page; the token to go on from."""
    changes: list[dict[str, Any]] = []
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if since is not None:
            params["since"] = since
        resp = client.get("/v1/deltas", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["changes"]) <= limit
        changes += body["changes"]
        since = body["next"]
        if not body["has_more"]:
            return changes, since


def brief(change: dict[str, Any]) -> tuple[Any, ...]:
    if change["kind"] == "sale":
        return ("sale", change["transaction_id"], change["sku"], change["quantity"])
    return ("level", change["sku"], change["quantity"])


def test_deltas_page_through_every_change_in_order(market: Marketplace) -> None:
    s = market.state
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    s.set_level("A", 10, at=at)
    s.set_level("B", 5)
    assert s.sell("t-1", "A", 3, at=at) is True
    s.set_level("A", 20)  # A again: both levels appear, the reader keeps the newest
    expected = [
        ("level", "A", 10),
        ("level", "B", 5),
        ("sale", "t-1", "A", 3),
        ("level", "A", 7),
        ("level", "A", 20),
    ]
    with market.client() as client:
        first = client.get("/v1/deltas").json()
        assert [brief(c) for c in first["changes"]] == expected
        assert first["has_more"] is False
        assert first["changes"][0] == {
            "kind": "level",
            "sku": "A",
            "quantity": 10,
            "updated_at": "2030-01-02T03:04:05+00:00",
        }
        assert first["changes"][2] == {
            "kind": "sale",
            "transaction_id": "t-1",
            "sku": "A",
            "quantity": 3,
            "sold_at": "2030-01-02T03:04:05+00:00",
        }
        for limit in (1, 2, 4):
            changes, token = read_all(client, limit=limit)
            assert [brief(c) for c in changes] == expected
            assert token == first["next"]

        # Nothing new: the same token back. Then only what came after it.
        empty = client.get("/v1/deltas", params={"since": token}).json()
        assert empty == {"changes": [], "next": token, "has_more": False}
        s.sell("t-2", "B", 1)
        s.set_level("C", 1)
        later, token = read_all(client, since=token, limit=2)
        assert [brief(c) for c in later] == [
            ("sale", "t-2", "B", 1),
            ("level", "B", 4),
            ("level", "C", 1),
        ]


def test_a_page_of_exactly_the_rest_says_no_more(market: Marketplace) -> None:
    market.state.seed(4)
    with market.client() as client:
        page = client.get("/v1/deltas", params={"limit": 4}).json()
        assert len(page["changes"]) == 4
        assert page["has_more"] is False
        page = client.get("/v1/deltas", params={"limit": 3}).json()
        assert page["has_more"] is True


def test_garbage_tokens_and_limits_are_422(market: Marketplace) -> None:
    market.state.set_level("A", 1)
    epoch = market.state.head().split("-")[0]
    with market.client() as client:
        for since in ("garbage", "", "deadbeef-1", f"{epoch}-2", f"{epoch}-x", f"{epoch}--1"):
            resp = client.get("/v1/deltas", params={"since": since})
            # An empty since is "from the beginning", like none at all.
            assert resp.status_code == (200 if since == "" else 422), since
        for limit in (0, 5001, "x"):
            assert client.get("/v1/deltas", params={"limit": limit}).status_code == 422
    # A restarted marketplace (a new state) refuses the old one's tokens.
    assert MarketplaceState().head() != market.state.head()


def test_a_token_is_required(market: Marketplace) -> None:
    url = market.server.url
    assert httpx.get(f"{url}/v1/deltas").status_code == 401
    assert httpx.get(f"{url}/v1/deltas", headers={"Authorization": "Bearer no"}).status_code == 401
    assert httpx.get(f"{url}/_sandbox/levels").status_code == 200
    open_state = MarketplaceState()
    with SandboxServer(create_app(open_state)) as server:  # no token configured: open
        assert httpx.get(f"{server.url}/v1/deltas").status_code == 200


def test_sales_lower_levels_and_are_recorded_once(market: Marketplace) -> None:
    s = market.state
    s.set_level("A", 2)
    assert s.sell("t-1", "A", 3)
    assert not s.sell("t-1", "A", 3)  # the same transaction again: nothing changes
    assert s.sell("t-2", "NEW", 1)
    assert s.levels() == {"A": -1, "NEW": -1}  # oversold: the reader's problem
    assert [x["transaction_id"] for x in s.sales()] == ["t-1", "t-2"]


def test_control_routes_set_levels_record_sales_and_seed(market: Marketplace) -> None:
    with market.client() as client:
        put = client.put(
            "/_sandbox/levels",
            json={
                "items": [
                    {"sku": "A", "quantity": 5},
                    {"sku": "B", "quantity": -2, "updated_at": "2030-01-01T00:00:00Z"},
                ]
            },
        )
        assert put.status_code == 200
        assert put.json()["count"] == 2
        sales = client.post(
            "/_sandbox/sales",
            json={
                "items": [
                    {"transaction_id": "t-1", "sku": "A", "quantity": 2},
                    {"transaction_id": "t-1", "sku": "A", "quantity": 2},
                ]
            },
        ).json()
        assert [r["status"] for r in sales["results"]] == ["recorded", "duplicate"]
        assert client.get("/_sandbox/levels").json()["levels"] == {"A": 3, "B": -2}
        assert [x["sku"] for x in client.get("/_sandbox/sales").json()["sales"]] == ["A"]
        seeded = client.post("/_sandbox/seed", json={"skus": 3, "seed": 1})
        assert seeded.json()["token"] == market.state.head()
        for bad in ({"items": [{"sku": "A"}]}, {"items": [{"sku": "A", "quantity": 1, "x": 1}]}):
            assert client.put("/_sandbox/levels", json=bad).status_code == 422
        no_id = {"items": [{"transaction_id": "", "sku": "A", "quantity": 1}]}
        assert client.post("/_sandbox/sales", json=no_id).status_code == 422
        changes, _ = read_all(client)
    assert len(changes) == 2 + 2 + 3
    assert changes[1]["updated_at"] == "2030-01-01T00:00:00+00:00"
    assert set(market.state.levels()) == {"A", "B", "SKU-000000", "SKU-000001", "SKU-000002"}


def test_seed_is_deterministic() -> None:
    a, b, c = MarketplaceState(), MarketplaceState(), MarketplaceState()
    a.seed(100, seed=3)
    b.seed(100, seed=3)
    c.seed(100, seed=4)
    assert a.levels() == b.levels() != c.levels()
    assert len(a.levels()) == 100


def test_injected_faults_fail_the_feed_but_not_the_controls(market: Marketplace) -> None:
    market.state.seed(3)
    with market.client() as client:
        client.put("/_sandbox/faults", json={"error_rate": 1})
        for _ in range(3):
            resp = client.get("/v1/deltas")
            assert resp.status_code == 503
            assert resp.json()["error"] == "sandbox-fault"
        assert client.get("/_sandbox/levels").status_code == 200
        client.put("/_sandbox/faults", json={"throttle_rate": 1, "retry_after": 2})
        throttled = client.get("/v1/deltas")
        assert throttled.status_code == 429
        assert throttled.headers["Retry-After"] == "2"
        client.delete("/_sandbox/faults")
        assert len(client.get("/v1/deltas").json()["changes"]) == 3
        assert client.get("/_sandbox/calls").json() == {
            "total": 5,
            "ok": 1,
            "throttled": 1,
            "errors": 3,
            "hung": 0,
        }


def test_a_hung_feed_times_out_the_caller(market: Marketplace) -> None:
    market.faults.set(Faults(hang=True))
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(f"{market.server.url}/v1/deltas", headers=AUTH, timeout=0.2)
    market.faults.clear()
    assert httpx.get(f"{market.server.url}/v1/deltas", headers=AUTH).status_code == 200


def test_a_stopped_marketplace_refuses_and_comes_back_with_its_changes(
    market: Marketplace,
) -> None:
    market.state.set_level("A", 1)
    with market.client() as client:
        _, token = read_all(client)
    market.server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{market.server.url}/v1/deltas", headers=AUTH)
    market.state.set_level("A", 2)
    market.server.start()
    with market.client() as client:
        changes, _ = read_all(client, since=token)
    assert [brief(c) for c in changes] == [("level", "A", 2)]


def test_concurrent_writers_while_reading_lose_and_repeat_nothing(market: Marketplace) -> None:
    def write(prefix: str) -> None:
        for i in range(200):
            market.state.sell(f"{prefix}-{i}", f"SKU-{i % 7}", 1)

    writers = [threading.Thread(target=write, args=(p,)) for p in "abc"]
    seen: list[dict[str, Any]] = []
    token = None
    with market.client() as client:
        for w in writers:
            w.start()
        while any(w.is_alive() for w in writers):
            changes, token = read_all(client, since=token, limit=50)
            seen += changes
        for w in writers:
            w.join()
        changes, token = read_all(client, since=token, limit=50)
        seen += changes
    sales = [c["transaction_id"] for c in seen if c["kind"] == "sale"]
    assert len(sales) == len(set(sales)) == 600
    assert len(seen) == 1200
    final = {}
    for c in seen:
        if c["kind"] == "level":
            final[c["sku"]] = c["quantity"]
    assert final == market.state.levels()
    assert sum(final.values()) == -600
