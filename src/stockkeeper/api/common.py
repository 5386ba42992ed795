"""What both HTTP apps share: construction, health, readiness and metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from stockkeeper import __version__
from stockkeeper.api import problems
from stockkeeper.api.middleware import BodyLimit, RequestMetrics
from stockkeeper.api.problems import ApiProblem, JSONResponse
from stockkeeper.store.pool import ping

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container


def new_app(container: Container, name: str, title: str) -> FastAPI:
    app = FastAPI(
        title=title,
        version=__version__,
        default_response_class=JSONResponse,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.state.container = container
    app.state.pool = container.pool
    app.state.tokens = container.tokens
    problems.install(app)
    app.add_middleware(RequestMetrics, metrics=container.metrics, app_name=name)
    app.add_middleware(BodyLimit, limit=container.settings.api.max_body_bytes)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        try:
            async with request.app.state.pool.acquire(timeout=2) as conn:
                await ping(conn)
        except Exception as exc:  # any failure means "not ready", and says why
            return problems.problem("unavailable", f"database not reachable: {exc}")
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def checked_path(adapter: TypeAdapter[str], value: str, field: str) -> str:
    """A path parameter checked as its body field is: else 422 naming the field."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise ApiProblem(
            "validation",
            f"not a valid {field.replace('_', ' ')}: {value!r}",
            errors=[{"field": field, "message": exc.errors()[0]["msg"]}],
        ) from None
