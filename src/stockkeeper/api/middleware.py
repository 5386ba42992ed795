"""Pure ASGI middleware: body size limit and request metrics."""

from __future__ import annotations

import time

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockkeeper.api.problems import PROBLEM_TYPE, problem_doc
from stockkeeper.observability.metrics import Metrics


class _TooLarge(HTTPException):
    """Raised from receive(); an HTTPException so FastAPI's body reader lets it through."""

    def __init__(self) -> None:
        super().__init__(413, "the body is too large")


async def _send_413(send: Send, limit: int, path: str) -> None:
    body = orjson.dumps(
        problem_doc("payload-too-large", f"the body is larger than {limit} bytes", path)
    )
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", PROBLEM_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await _send_413(send, self.limit, scope["path"])
                    return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
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
                await _send_413(send, self.limit, scope["path"])


class RequestMetrics:
    """Latency histogram by route template, method and status."""

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

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.hist.labels(self.app_name, path, scope["method"], str(status)).observe(
                time.perf_counter() - start
            )
