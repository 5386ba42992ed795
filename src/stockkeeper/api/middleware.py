"""Pure ASGI middleware: body size limit, request metrics and the access log, and the
catch-all."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping

import orjson
import structlog
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockkeeper.api.problems import PROBLEM_TYPE, problem_doc, problem_instance
from stockkeeper.messaging.broker import BrokerUnavailable
from stockkeeper.observability import tracing
from stockkeeper.observability.logging import access_log_enabled, get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store.errors import StoreUnavailable, TransactionLost, translate

log = get_logger(__name__)
# What a 503 asks the client to wait: a database outage is mostly a restart or failover.
RETRY_AFTER_S = 1

access_log = get_logger("stockkeeper.access")
# A caller's X-Request-ID is kept when it is a plain token; anything else gets a new one.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


# Where RequestMetrics leaves the request's id in the ASGI scope, for CatchAll's answer.
REQUEST_ID_KEY = "stockkeeper.request_id"


def _request_id(scope: Scope) -> str:
    """The request's one id: the caller's X-Request-ID when it is a plain token, else a
    new one; chosen once per request and kept in the scope, so the access log line,
    the X-Request-ID header and a problem's ``request_id`` all carry the same."""
    known = scope.get(REQUEST_ID_KEY)
    if isinstance(known, str):
        return known
    for name, value in scope["headers"]:
        if name == b"x-request-id" and _REQUEST_ID.fullmatch(value):
            scope[REQUEST_ID_KEY] = value.decode()
            return str(scope[REQUEST_ID_KEY])
    scope[REQUEST_ID_KEY] = uuid.uuid4().hex[:16]
    return str(scope[REQUEST_ID_KEY])


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class _TooLarge(HTTPException):
    """Raised from receive(); an HTTPException so FastAPI's body reader lets it through."""

    def __init__(self) -> None:
        super().__init__(413, "the body is too large")


async def _send_problem(
    send: Send, doc: dict[str, object], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = orjson.dumps(doc)
    await send(
        {
            "type": "http.response.start",
            "status": doc["status"],
            "headers": [
                (b"content-type", PROBLEM_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _send_413(send: Send, limit: int, path: str) -> None:
    doc = problem_doc("payload-too-large", f"the body is larger than {limit} bytes", path)
    await _send_problem(send, doc, [(b"connection", b"close")])


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming.

    A path under one of ``prefixes`` has that prefix's limit instead: a webhook
    connector's own ``max_body_bytes`` may be above ``api.max_body_bytes`` (D-444)."""

    def __init__(self, app: ASGIApp, limit: int, prefixes: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.default = limit
        self.prefixes = dict(prefixes or {})

    def limit_of(self, path: str) -> int:
        for prefix, limit in self.prefixes.items():
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_of(scope.get("path", ""))
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_413(send, limit, problem_instance(scope))
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_413(send, limit, problem_instance(scope))


def _route_path(scope: Scope) -> str:
    """The route template that served the request, or ``unmatched`` (a 404: the raw
    path would make the metric's labels unbounded). FastAPI's own routes set
    ``scope["route"]``; Starlette's plain routes (``/openapi.json``, ``/docs``) only
    set the endpoint, so their template is found by it."""
    route = scope.get("route")
    if route is None and (endpoint := scope.get("endpoint")) is not None:
        app = scope.get("app")
        for candidate in getattr(app, "routes", ()):
            if getattr(candidate, "endpoint", None) is endpoint:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestMetrics:
    """Latency histogram by route template, method and status, and one access log line
    per request at info (``logging.access_log``) with its request id, which the
    response carries as X-Request-ID."""

    def __init__(self, app: ASGIApp, metrics: Metrics, app_name: str) -> None:
        self.app = app
        self.hist = metrics.http_requests
        self.app_name = app_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        request_id = _request_id(scope)

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
                msg["headers"] = [*msg.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(msg)

        # Every log line of the request names it, and (tracing off) carries its W3C
        # trace context, the caller's or a new one, on to the outbox (D-406).
        bound = structlog.contextvars.bind_contextvars(request_id=request_id)
        carried = tracing.carry(_header(scope, b"traceparent"))
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = _route_path(scope)
            took = time.perf_counter() - start
            self.hist.labels(self.app_name, path, scope["method"], str(status)).observe(took)
            if access_log_enabled():
                access_log.info(
                    "http.request",
                    app=self.app_name,
                    method=scope["method"],
                    path=path,
                    status=status,
                    duration_ms=round(took * 1000, 1),
                    request_id=request_id,
                )
            tracing.uncarry(carried)
            structlog.contextvars.reset_contextvars(**bound)


def is_outage(exc: BaseException) -> bool:
    """The database (or the broker) could not be reached: ``exc`` or one of its causes is
    an outage as the store names it (a refused, reset or lost connection, a server
    shutting down), a socket error or timeout on the way to it, or the broker's
    :class:`BrokerUnavailable`."""
    return _outage_of(exc) is not None


def _outage_of(exc: BaseException) -> str | None:
    """What could not be reached (``the database``, ``the message broker``), or None."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, BrokerUnavailable):
            return "the message broker"
        if isinstance(cur, StoreUnavailable | OSError) or isinstance(
            translate(cur), StoreUnavailable
        ):
            return "the database"
        cur = cur.__cause__ or cur.__context__
    return None


class CatchAll:
    """The one place an exception no handler took becomes an answer.

    A database outage is 503 ``unavailable`` with ``Retry-After``; anything else is 500
    ``internal``. Both are problem+json with a ``request_id`` that the log line carries
    too, so an operator finds the traceback from what the client shows.
    """

    def __init__(self, app: ASGIApp, app_name: str) -> None:
        self.app = app
        self.app_name = app_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = _request_id(scope)
            outage = _outage_of(exc)
            # A transaction PostgreSQL kept rolling back to break conflicts with
            # concurrent ones (retried first, api.idempotency): try again (D-491).
            gave_way = outage is None and isinstance(translate(exc), TransactionLost)
            fields = {
                "app": self.app_name,
                "method": scope["method"],
                "path": scope["path"],
                "request_id": request_id,
                "answered": not started,
            }
            if outage or gave_way:
                log.warning("http.unavailable", error=f"{type(exc).__name__}: {exc}", **fields)
            else:
                log.error("http.unexpected_error", exc_info=exc, **fields)
            if started:  # too late for an answer: the client sees the connection close
                raise
            if outage or gave_way:
                detail = (
                    f"{outage} is not reachable; try again shortly"
                    if outage
                    else "the database kept giving way to concurrent requests; try again shortly"
                )
                doc = problem_doc(
                    "unavailable", detail, problem_instance(scope), request_id=request_id
                )
                await _send_problem(send, doc, [(b"retry-after", str(RETRY_AFTER_S).encode())])
            else:
                doc = problem_doc(
                    "internal",
                    "an unexpected error; the log line has this request_id",
                    problem_instance(scope),
                    request_id=request_id,
                )
                await _send_problem(send, doc)
