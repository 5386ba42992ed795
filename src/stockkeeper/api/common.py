"""What both HTTP apps share: construction, health, readiness, metrics and /docs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, Path, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import TypeAdapter, ValidationError
from starlette.responses import HTMLResponse, Response

from stockkeeper import __version__
from stockkeeper.api import problems, schemas
from stockkeeper.api.auth import AuthenticatedRoute
from stockkeeper.api.middleware import BodyLimit, CatchAll, RequestMetrics
from stockkeeper.api.problems import PROBLEM_TYPE, ApiProblem, JSONResponse
from stockkeeper.api.schemas import MAX_ROW_ID
from stockkeeper.config import WebhookConnectorConfig
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import get_logger
from stockkeeper.store.pool import ping

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container

log = get_logger("stockkeeper.api")
# The longest a scrape of /metrics waits for the gauges it refreshes first; past it (a
# database or broker that does not answer) it answers with the last values.
SCRAPE_REFRESH_S = 2.0


def new_app(
    container: Container,
    name: str,
    title: str,
    before_scrape: Callable[[], Awaitable[object]] | None = None,
) -> FastAPI:
    """An app with health, readiness and ``/metrics``; ``before_scrape`` refreshes
    gauges that are measured rather than counted (admin-api: the pipes, D-405) before
    each scrape answers."""
    app = FastAPI(
        title=title,
        version=__version__,
        default_response_class=JSONResponse,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.router.route_class = AuthenticatedRoute
    app.state.container = container
    app.state.pool = container.pool
    app.state.tokens = container.tokens
    problems.install(app)
    add_docs(app)
    _file_errors_as_problems(app)
    app.add_middleware(CatchAll, app_name=name)
    app.add_middleware(
        BodyLimit,
        limit=container.settings.api.max_body_bytes,
        prefixes={"/webhooks/": webhook_body_limit(container)},
    )
    # Outermost: a 413 refused by its Content-Length, before anything reads the body,
    # still carries its X-Request-ID and is counted and logged like any answer (D-483).
    app.add_middleware(RequestMetrics, metrics=container.metrics, app_name=name)
    tracing.instrument_app(app)

    # HEAD too: load balancers and uptime checkers often probe with it (D-393).
    @app.api_route("/healthz", methods=["GET", "HEAD"], include_in_schema=False)
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.api_route("/readyz", methods=["GET", "HEAD"], include_in_schema=False)
    async def readyz(request: Request) -> Response:
        try:
            async with request.app.state.pool.acquire(timeout=2) as conn:
                await ping(conn)
        except Exception as exc:  # any failure means "not ready", and says why
            return problems.problem(
                "unavailable", f"database not reachable: {exc}", headers={"Retry-After": "1"}
            )
        return JSONResponse({"status": "ready"})

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if before_scrape is not None:
            try:
                await asyncio.wait_for(before_scrape(), SCRAPE_REFRESH_S)
            except Exception as exc:  # the scrape still answers, with the last values
                error = f"{type(exc).__name__}: {exc}"
                log.warning("metrics.refresh_failed", app=name, error=error)
        return Response(generate_latest(container.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def checked_path(adapter: TypeAdapter[str], value: str, field: str) -> str:
    """A path or query parameter checked as its body field is: else 422 naming the
    field as FastAPI names it (``path.sku``, ``query.sku``; D-390)."""
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        name = field.rpartition(".")[2].replace("_", " ")
        raise ApiProblem(
            "validation",
            f"not a valid {name}: {value!r}",
            errors=[{"field": field, "message": problems.plain(exc.errors()[0])}],
        ) from None


# A channel or connector id in a path: the id rule of every id (D-481), so one with a
# control or line-separator character is a 422 naming ``path.<name>``, not a 404 that
# echoes it; an id that passes but names nothing configured is the route's 404.
ConnectorId = Annotated[
    str, Path(min_length=1, max_length=200, description=schemas.PRINTABLE), schemas.ID_TEXT
]


# A row id in a path (a dead letter, a sync request): a bigint, so past 2^63 is a 422,
# not an overflow in the driver.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="a row id, 1 to 2^63 - 1")]


def location(prefix: str, *ids: str) -> str:
    """A path to put in a header (``Location``): each id percent-encoded, so an id in
    any script (or with ?, #, %, spaces) stays ASCII and reads back as itself."""
    return prefix + "".join("/" + quote(i, safe="") for i in ids)


# Swagger UI and ReDoc, served from the fastapi-offline wheel (MIT; the bundled
# swagger-ui and redoc are Apache-2.0 and MIT): /docs works with no network.
ASSETS = "/docs/assets"


def add_docs(app: FastAPI) -> None:
    static = resources.files("fastapi_offline") / "static"
    app.mount(ASSETS, StaticFiles(directory=str(static)), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def _file_errors_as_problems(app: FastAPI) -> None:
    """Every 4xx/5xx answer in the OpenAPI document is problem+json, as on the wire."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = build()
            for methods in doc.get("paths", {}).values():
                for op in methods.values():
                    for status, answer in op.get("responses", {}).items():
                        content = answer.get("content", {})
                        if status[0] in "45" and "application/json" in content:
                            answer["content"] = {PROBLEM_TYPE: content["application/json"]}
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def webhook_body_limit(container: Container) -> int:
    """The most a body under ``/webhooks/`` may carry: the largest webhook connector's
    ``max_body_bytes`` when it is above ``api.max_body_bytes`` (the route then holds each
    connector to its own, D-444); the API's limit otherwise."""
    hooks = container.settings.connectors_of(WebhookConnectorConfig)
    return max([container.settings.api.max_body_bytes, *(h.max_body_bytes for h in hooks)])
