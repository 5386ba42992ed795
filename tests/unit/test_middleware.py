"""The request metric's route label, and the catch-all's answer to what no handler took."""

from __future__ import annotations

import asyncpg
import httpx
from fastapi import FastAPI

from stockkeeper.api.middleware import CatchAll, RequestMetrics
from stockkeeper.observability.metrics import Metrics


def _routes_seen(metrics: Metrics) -> set[str]:
    return {
        s.labels["route"]
        for m in metrics.registry.collect()
        if m.name == "stockkeeper_http_request_duration_seconds"
        for s in m.samples
        if s.name.endswith("_count")
    }


async def test_the_route_label_names_fastapi_and_starlette_routes_and_bounds_404s() -> None:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    metrics = Metrics()
    app.add_middleware(RequestMetrics, metrics=metrics, app_name="test")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/items/1")).status_code == 200
        assert (await c.get("/openapi.json")).status_code == 200  # a plain Starlette route
        assert (await c.get("/docs")).status_code == 200
        assert (await c.get("/no/such/path-1")).status_code == 404
        assert (await c.get("/no/such/path-2")).status_code == 404
    assert _routes_seen(metrics) == {"/items/{item_id}", "/openapi.json", "/docs", "unmatched"}


async def test_a_transaction_that_kept_giving_way_is_503_with_retry_after() -> None:
    """D-491: a deadlock or serialization failure left after the use case's retries is
    a 503 the client may retry, not a 500 that says the server is broken."""
    app = FastAPI()

    @app.post("/deadlock")
    async def deadlock() -> None:
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    @app.post("/bug")
    async def bug() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(CatchAll, app_name="test")
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        lost = await c.post("/deadlock")
        broken = await c.post("/bug")
    assert lost.status_code == 503, lost.text
    assert lost.json()["type"] == "unavailable"
    assert lost.headers["retry-after"] == "1"
    assert broken.status_code == 500
