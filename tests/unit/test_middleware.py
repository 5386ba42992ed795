"""The request metric's route label: the template that served the request."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from stockkeeper.api.middleware import RequestMetrics
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
