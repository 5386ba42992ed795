"""What every sandbox shares: fault injection, control routes, a server in its own thread.

A sandbox is a FastAPI app built by :func:`sandbox_app`. Every path except ``/_sandbox/*``
goes through :class:`FaultMiddleware`, which answers with errors, 429s, delays or not at
all, as the current :class:`Faults` say. :class:`SandboxServer` serves such an app with
uvicorn on a background thread with its own event loop, so a test's loop (even a blocked
one) never slows the stand-in down, and ``stop()`` / ``start()`` take it down and bring it
back on the same port with its state intact.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import random
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from types import TracebackType
from typing import Annotated, Any

import orjson
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, params
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.config import LOGGING_CONFIG

CONTROL_PREFIX = "/_sandbox"
OUTCOMES = ("total", "ok", "throttled", "errors", "hung")


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response encoded by orjson (datetimes as ISO 8601)."""
    return Response(
        orjson.dumps(payload), status_code=status, headers=headers, media_type="application/json"
    )


def format_retry_after(seconds: float) -> str:
    """``Retry-After`` value: ``"2"`` when whole, else a decimal rounded up to ms (``"0.2"``)."""
    if seconds == int(seconds):
        return str(int(seconds))
    millis = math.ceil(seconds * 1000 - 1e-9)
    if millis % 1000 == 0:
        return str(millis // 1000)
    return f"{millis / 1000:.3f}".rstrip("0").rstrip(".")


class Faults(BaseModel):
    """How a sandbox misbehaves. Change them through :meth:`FaultController.set`."""

    model_config = ConfigDict(extra="forbid")

    # Fraction of calls answered with error_status.
    error_rate: float = Field(default=0.0, ge=0, le=1)
    error_status: int = Field(default=503, ge=400, le=599)
    # Fraction of calls answered 429 with Retry-After: retry_after.
    throttle_rate: float = Field(default=0.0, ge=0, le=1)
    retry_after: float = Field(default=1.0, ge=0)
    # Latency added to every call.
    delay_ms: int = Field(default=0, ge=0)
    # Calls are held, unanswered, until hang is turned off or the faults are cleared.
    hang: bool = False
    # A token bucket: past rps (with a burst of max(1, rps) unless given), 429.
    rps: float | None = Field(default=None, gt=0)
    burst: float | None = Field(default=None, ge=1)
    # Seed of the random choices (error_rate, throttle_rate); None: unpredictable.
    seed: int | None = None


class TokenBucket:
    """A token bucket that answers at once: taken, or how long until a token is there."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.capacity
        self._stamp = clock()

    def take(self) -> float:
        """Take a token and return 0.0, or take nothing and return seconds until one."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class _Verdict:
    __slots__ = ("retry_after", "status")

    def __init__(self, status: int | None, retry_after: float | None = None) -> None:
        self.status = status  # None: pass the call to the app
        self.retry_after = retry_after


class FaultController:
    """The current faults and the call counters of one sandbox; safe to use from any thread.

    Hung calls wait on an asyncio.Event of the server's loop; releasing them from another
    thread goes through ``call_soon_threadsafe``.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._release: asyncio.Event | None = None
        self._release_loop: asyncio.AbstractEventLoop | None = None
        self._faults = Faults()
        self._rng = random.Random()  # noqa: S311 - fault injection, not cryptography
        self._bucket: TokenBucket | None = None
        self.set(faults or Faults())

    @property
    def faults(self) -> Faults:
        """A copy of the current faults."""
        with self._lock:
            return self._faults.model_copy()

    def set(self, faults: Faults) -> None:
        """Replace the faults. Turning hang off releases the held calls."""
        with self._lock:
            self._faults = faults.model_copy()
            self._rng = random.Random(faults.seed)  # noqa: S311
            self._bucket = TokenBucket(faults.rps, faults.burst) if faults.rps else None
            if not faults.hang:
                self._release_held()

    def clear(self) -> None:
        """No faults any more; held calls are released."""
        self.set(Faults())

    def calls(self) -> dict[str, int]:
        """Calls seen by outcome: total, ok (passed to the app), throttled, errors, hung."""
        with self._lock:
            return {name: self._calls[name] for name in OUTCOMES}

    def _release_held(self) -> None:
        event, loop = self._release, self._release_loop
        self._release = self._release_loop = None
        if event is None or loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed in between: nobody waits
            loop.call_soon_threadsafe(event.set)

    def _enter(self) -> asyncio.Event | None:
        """The event a call waits on while hang is set, or None."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._calls["total"] += 1
            if not self._faults.hang:
                return None
            self._calls["hung"] += 1
            if self._release is None or self._release_loop is not loop:
                self._release, self._release_loop = asyncio.Event(), loop
            return self._release

    def _verdict(self) -> _Verdict:
        with self._lock:
            f = self._faults
            if self._bucket is not None:
                wait = self._bucket.take()
                if wait > 0:
                    self._calls["throttled"] += 1
                    return _Verdict(429, wait)
            throttled = self._rng.random() < f.throttle_rate
            failed = self._rng.random() < f.error_rate
            if throttled:
                self._calls["throttled"] += 1
                return _Verdict(429, f.retry_after)
            if failed:
                self._calls["errors"] += 1
                return _Verdict(f.error_status)
            self._calls["ok"] += 1
            return _Verdict(None)

    async def admit(self) -> _Verdict:
        """Apply hang, delay and the random or rate-limit answers to one call."""
        held = self._enter()
        if held is not None:
            await held.wait()
        delay_ms = self.faults.delay_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return self._verdict()


class FaultMiddleware:
    """Applies a :class:`FaultController` to every HTTP path outside ``/_sandbox``."""

    def __init__(self, app: ASGIApp, controller: FaultController) -> None:
        self.app = app
        self.controller = controller

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if (
            scope["type"] != "http"
            or path == CONTROL_PREFIX
            or path.startswith(CONTROL_PREFIX + "/")
        ):
            await self.app(scope, receive, send)
            return
        verdict = await self.controller.admit()
        if verdict.status is None:
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        if verdict.retry_after is not None:
            headers["Retry-After"] = format_retry_after(verdict.retry_after)
        kind = "rate-limited" if verdict.status == 429 else "sandbox-fault"
        body = {"error": kind, "detail": f"injected by the sandbox ({verdict.status})"}
        await json_response(body, verdict.status, headers)(scope, receive, send)


def control_router(controller: FaultController) -> APIRouter:
    """``GET/PUT/DELETE /_sandbox/faults`` and ``GET /_sandbox/calls``."""
    router = APIRouter(prefix=CONTROL_PREFIX, tags=["sandbox"])

    @router.get("/faults")
    async def get_faults() -> Response:
        return json_response(controller.faults.model_dump())

    @router.put("/faults")
    async def put_faults(faults: Faults) -> Response:
        controller.set(faults)
        return json_response(controller.faults.model_dump())

    @router.delete("/faults")
    async def delete_faults() -> Response:
        controller.clear()
        return json_response(controller.faults.model_dump())

    @router.get("/calls")
    async def get_calls() -> Response:
        return json_response(controller.calls())

    return router


def bearer_required(token: str | None) -> params.Depends:
    """A route dependency: with a token set, ``Authorization: Bearer <token>`` or 401."""

    async def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        expected = f"Bearer {token}"
        if authorization is None or not secrets.compare_digest(
            authorization.encode(), expected.encode()
        ):
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )

    guard: params.Depends = Depends(authorized)
    return guard


def faulty_app(title: str, faults: Faults | FaultController | None) -> FastAPI:
    """:func:`sandbox_app` with a controller made from ``faults`` (or given), kept at
    ``app.state.faults``."""
    controller = faults if isinstance(faults, FaultController) else FaultController(faults)
    app = sandbox_app(title, controller)
    app.state.faults = controller
    return app


def sandbox_app(title: str, controller: FaultController) -> FastAPI:
    """A FastAPI app with the fault middleware and the control routes mounted."""
    app = FastAPI(title=title)
    app.add_middleware(FaultMiddleware, controller=controller)
    app.include_router(control_router(controller))
    return app


class _Stoppable:
    """Lets the calls in flight end quietly when the server stops and cancels them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.stopping = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            if not self.stopping:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()


class _Uvicorn(uvicorn.Server):
    """uvicorn, but stopping is abrupt, like a crashed system: connections are dropped and
    calls in flight (hung ones too) are abandoned without an answer."""

    def __init__(self, config: uvicorn.Config, gate: _Stoppable) -> None:
        super().__init__(config)
        self._gate = gate

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._gate.stopping = True
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        await asyncio.sleep(0)  # let connection_lost run, so nobody answers the dropped calls
        tasks = list(self.server_state.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        await self.lifespan.shutdown()


class SandboxServer:
    """Serves an ASGI app on a background thread with its own event loop.

    ``port=0`` picks a free port on the first ``start()``; later starts reuse it.
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._port = port
        self._server: _Uvicorn | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._port == 0:
            raise RuntimeError("the sandbox server has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, timeout: float = 10.0) -> None:
        """Listen (on the same port as before, if started before) and return once serving."""
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        sock = self._bind()
        gate = _Stoppable(self.app)
        config = uvicorn.Config(
            gate,
            lifespan="off",
            loop="asyncio",
            ws="none",
            log_config=None,
            access_log=False,
            log_level="warning",
        )
        server = _Uvicorn(config, gate)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"sandbox-{self._port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                thread.join(timeout)
                sock.close()
                raise RuntimeError(f"the sandbox server did not start on {self.host}:{self._port}")
            time.sleep(0.005)
        self._server, self._thread = server, thread

    def _bind(self) -> socket.socket:
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP, and
        # without it every small answer waits ~40 ms for a delayed ACK.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        return sock

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listening socket, drop every connection, and end the thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("the sandbox server did not stop in time")
        self._server = self._thread = None

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def serve_foreground(app: FastAPI, host: str, port: int) -> None:
    """Serve ``app`` until interrupted, as the ``stockkeeper sandbox`` commands do.
    uvicorn's request lines go to stderr with its other lines (its default puts them on
    stdout), so stdout holds only what the command prints there: the ``connectors:``
    snippet, which ``stockkeeper sandbox wms > wms.yaml`` keeps whole."""
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["handlers"]["access"]["stream"] = "ext://sys.stderr"
    uvicorn.run(app, host=host, port=port, log_level="info", ws="none", log_config=log_config)
