"""How every call to an outside system over HTTP is made: paced, timed out, retried, counted.

:class:`HttpCaller` holds one connector's policy, built from its
:class:`~stockkeeper.config.HttpConnectorConfig`:

* our own pace: an ``aiolimiter`` token bucket of ``rate_limit_rps`` (burst ``max(1, rps - 1)``:
  one call of the system's own burst is kept as slack, so calls we paced apart but that
  reach it bunched, late from a busy event loop, still fit its bucket);
* a timeout on every try (``timeout_ms``) and, optionally, a deadline for the whole call;
* retries (tenacity) of 429, 5xx, timeouts, dropped connections and unreadable answers, up
  to ``max_attempts``, waiting what :class:`~stockkeeper.domain.backoff.Backoff` says
  (doubling from ``backoff_base_ms`` up to ``backoff_max_ms``, jittered), never sooner
  than the system's ``Retry-After``; any other 4xx is final;
* for a caller working under a lease (``bounded_waits``: the channel adapters), a bounded
  call: its waits between tries add up to at most :attr:`HttpCaller.wait_budget_s`
  (``max_attempts`` × ``backoff_max_ms``, plus :data:`RETRY_AFTER_SLACK_S`). A
  ``Retry-After`` that would take it past that is not slept through here: the call gives
  up at once, as :class:`ConnectorUnavailable` carrying the wait, and the propagator,
  whose backoff takes it as its floor, comes back no sooner. A channel push is leased for
  its rate-limit wait plus every try of its call (``services/propagation``,
  ``lease_s``); a call asleep past that would write after its lease ran out, over what a
  newer push wrote meanwhile (D-416). Other callers wait out any ``Retry-After`` in the
  call, as before. ``Retry-After`` itself is read up to :data:`MAX_RETRY_AFTER_S` (a
  larger one is taken as that);
* every try counted in the ``connector_*`` metrics and reported to ``on_call``.

When it gives up it raises :class:`ConnectorUnavailable` (try again later) or
:class:`ConnectorRejected` (the system refused this request; trying again will not help).
Requests sent through it may be sent more than once, so they must be idempotent.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Literal, TypeVar

import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from stockkeeper import __version__
from stockkeeper.config import HttpConnectorConfig
from stockkeeper.domain.backoff import Backoff
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics

T = TypeVar("T")
Outcome = Literal[
    "ok",
    "rate_limited",
    "server_error",
    "client_error",
    "timeout",
    "connect_error",
    "invalid_response",
]
BODY_EXCERPT = 500
# A deadline with less than this left is not worth another try.
MIN_TRY_S = 0.01
# The share of each retry's wait drawn at random, so callers that failed together do not
# come back together: between half the doubled wait and all of it ("equal jitter").
HTTP_JITTER = 0.5
# What the waits of one call may add up to beyond its backoff's own (see the docstring).
RETRY_AFTER_SLACK_S = 60.0
# The longest Retry-After taken as asked (a day): past it, the time would not fit a
# PostgreSQL timestamp when a retry is scheduled ("1e300"), or is no wait anyone meant.
MAX_RETRY_AFTER_S = 86_400.0

log = get_logger(__name__)


@dataclass(frozen=True)
class CallRecord:
    """One try of one call, as reported to ``on_call`` (the outbound worker audits these)."""

    connector: str
    operation: str
    attempt: int
    status: int | None
    outcome: Outcome
    duration_ms: float
    error: str | None
    # The wait the system asked for (Retry-After), in seconds.
    retry_after: float | None = None


OnCall = Callable[[CallRecord], Awaitable[None] | None]


class ConnectorError(Exception):
    """A call to an outside system failed for good (after the retries its policy allows)."""

    def __init__(self, connector: str, operation: str, message: str) -> None:
        super().__init__(f"{connector} {operation}: {message}")
        self.connector = connector
        self.operation = operation


class ConnectorUnavailable(ConnectorError):
    """The system is down, throttling, slow or answering nonsense: try again later.

    ``reason`` is the outcome of the last try, ``status`` its HTTP status if any, and
    ``retry_after`` the wait in seconds the system asked for, if it did.
    """

    def __init__(
        self,
        connector: str,
        operation: str,
        reason: Outcome,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(connector, operation, message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after
        self.attempts = attempts


class ConnectorRejected(ConnectorError):
    """The system refused the request (a 4xx other than 429): sending it again won't help."""

    def __init__(self, connector: str, operation: str, status: int, body: str) -> None:
        super().__init__(connector, operation, f"rejected with {status}: {body}")
        self.status = status
        self.body = body


class InvalidResponse(ValueError):
    """Raised by a ``parse`` function: the answer is not what the contract promises."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: an integer, a decimal, or an HTTP date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def _excerpt(response: httpx.Response) -> str:
    try:
        text = response.text
    except (UnicodeDecodeError, LookupError):
        text = repr(response.content[:BODY_EXCERPT])
    return text[:BODY_EXCERPT]


class HttpCaller:
    """The call policy of one HTTP connector. Use as an async context manager, or close
    with :meth:`aclose`."""

    def __init__(
        self,
        cfg: HttpConnectorConfig,
        *,
        metrics: Metrics | None = None,
        token: str | None = None,
        on_call: OnCall | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
        bounded_waits: bool = False,
        wait_slack_s: float = RETRY_AFTER_SLACK_S,
    ) -> None:
        self.cfg = cfg
        self.connector = cfg.id
        self.bounded_waits = bounded_waits
        self.wait_slack_s = wait_slack_s
        self.metrics = metrics
        self.on_call = on_call
        self.timeout_s = cfg.timeout_ms / 1000
        self.backoff = Backoff(cfg.backoff_base_ms / 1000, cfg.backoff_max_ms / 1000, HTTP_JITTER)
        burst = max(1.0, cfg.rate_limit_rps - 1)
        self.limiter = AsyncLimiter(burst, burst / cfg.rate_limit_rps)
        all_headers = {"User-Agent": f"stockkeeper/{__version__}", "Accept": "application/json"}
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        all_headers.update(headers or {})
        self.client = httpx.AsyncClient(
            base_url=cfg.url,
            headers=all_headers,
            timeout=httpx.Timeout(self.timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    async def __aenter__(self) -> HttpCaller:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def call(
        self,
        operation: str,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        *,
        params: Mapping[str, str | int] | None = None,
        json: Any = None,
        deadline_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> T:
        """Send one request under the policy and return ``parse(response)`` of a 2xx.

        ``parse`` raises :class:`InvalidResponse` when the answer breaks the contract; that
        try counts as ``invalid_response`` and is retried. ``deadline_s`` bounds the whole
        call, waits and retries included. ``headers`` are added to this call's requests
        (a token that changes between calls). ``content``: a raw body instead of ``json``
        (with its Content-Type in ``headers``). An absolute ``path`` (a presigned URL)
        is sent there rather than to the connector's URL.
        """
        give_up_at = None if deadline_s is None else time.monotonic() + deadline_s

        def remaining() -> float:
            return math.inf if give_up_at is None else give_up_at - time.monotonic()

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(ConnectorUnavailable),
            stop=lambda rs: self._stop(rs, remaining()),
            wait=lambda rs: self._wait(rs, remaining()),
            before_sleep=lambda rs: self._before_sleep(rs, operation),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                return await self._try(
                    operation,
                    number,
                    method,
                    path,
                    parse,
                    params,
                    json,
                    remaining(),
                    headers,
                    content,
                )
        raise AssertionError("tenacity ends with a result or the last error")

    # -- one try -------------------------------------------------------------------

    async def _try(
        self,
        operation: str,
        attempt: int,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], T],
        params: Mapping[str, str | int] | None,
        json: Any,
        remaining: float,
        headers: Mapping[str, str] | None = None,
        content: bytes | None = None,
    ) -> T:
        await self._pace(operation, remaining)
        timeout = min(self.timeout_s, self._left(remaining))
        started = time.monotonic()
        status: int | None = None
        try:
            async with asyncio.timeout(timeout):
                response = await self.client.request(
                    method,
                    path,
                    params=params,
                    json=json,
                    content=content,
                    timeout=timeout,
                    headers=headers,
                )
            status = response.status_code
            outcome, retry_after = self._classify(response)
            if outcome == "ok":
                try:
                    value = parse(response)
                except InvalidResponse as exc:
                    await self._record(operation, attempt, status, "invalid_response", started, exc)
                    raise self._unavailable(
                        operation, "invalid_response", f"invalid response: {exc}", status, attempt
                    ) from exc
                await self._record(operation, attempt, status, "ok", started, None)
                return value
        except (TimeoutError, httpx.TimeoutException) as exc:
            await self._record(operation, attempt, None, "timeout", started, exc)
            raise self._unavailable(
                operation, "timeout", f"no answer within {timeout:.3f}s", None, attempt
            ) from exc
        except httpx.TransportError as exc:
            await self._record(operation, attempt, None, "connect_error", started, exc)
            raise self._unavailable(
                operation, "connect_error", f"{type(exc).__name__}: {exc}", None, attempt
            ) from exc
        body = _excerpt(response)
        await self._record(operation, attempt, status, outcome, started, body, retry_after)
        if outcome == "client_error" or (outcome == "invalid_response" and status < 400):
            raise ConnectorRejected(self.connector, operation, status, body)
        raise self._unavailable(
            operation, outcome, f"answered {status}: {body}", status, attempt, retry_after
        )

    @staticmethod
    def _classify(response: httpx.Response) -> tuple[Outcome, float | None]:
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if 200 <= status < 300:
            return "ok", None
        if status == 429:
            return "rate_limited", retry_after
        if status >= 500:
            return "server_error", retry_after
        if 400 <= status < 500:
            return "client_error", None
        return "invalid_response", None  # 1xx, 3xx: we follow no redirects

    @staticmethod
    def _left(remaining: float) -> float:
        return max(MIN_TRY_S, remaining)

    async def _pace(self, operation: str, remaining: float) -> None:
        started = time.monotonic()
        try:
            async with asyncio.timeout(None if math.isinf(remaining) else self._left(remaining)):
                await self.limiter.acquire()
        except TimeoutError:
            raise ConnectorUnavailable(
                self.connector,
                operation,
                "rate_limited",
                "the deadline passed while waiting for our own rate limit",
            ) from None
        finally:
            waited = time.monotonic() - started
            if self.metrics is not None and waited > 0.0005:
                self.metrics.connector_rate_limit_wait.labels(self.connector, "own_limit").inc(
                    waited
                )

    def _unavailable(
        self,
        operation: str,
        reason: Outcome,
        message: str,
        status: int | None,
        attempt: int,
        retry_after: float | None = None,
    ) -> ConnectorUnavailable:
        return ConnectorUnavailable(
            self.connector,
            operation,
            reason,
            message,
            status=status,
            retry_after=retry_after,
            attempts=attempt,
        )

    async def _record(
        self,
        operation: str,
        attempt: int,
        status: int | None,
        outcome: Outcome,
        started: float,
        error: BaseException | str | None,
        retry_after: float | None = None,
    ) -> None:
        elapsed = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.connector_calls.labels(self.connector, operation, outcome).inc()
            self.metrics.connector_call_duration.labels(self.connector, operation).observe(elapsed)
        if self.on_call is None:
            return
        text = None
        if isinstance(error, BaseException):
            text = f"{type(error).__name__}: {error}"[:BODY_EXCERPT]
        elif error is not None:
            text = error
        record = CallRecord(
            self.connector, operation, attempt, status, outcome, elapsed * 1000, text, retry_after
        )
        maybe = self.on_call(record)
        if inspect.isawaitable(maybe):
            await maybe

    # -- retry policy ----------------------------------------------------------------

    @staticmethod
    def _failure(rs: RetryCallState) -> ConnectorUnavailable | None:
        exc = rs.outcome.exception() if rs.outcome is not None else None
        return exc if isinstance(exc, ConnectorUnavailable) else None

    @property
    def wait_budget_s(self) -> float:
        """What the waits between the tries of one call may add up to (unbounded unless
        ``bounded_waits``)."""
        if not self.bounded_waits:
            return math.inf
        return self.cfg.max_attempts * self.backoff.cap_s + self.wait_slack_s

    def _stop(self, rs: RetryCallState, remaining: float) -> bool:
        if rs.attempt_number >= self.cfg.max_attempts or remaining <= MIN_TRY_S:
            return True
        failure = self._failure(rs)
        if failure is None or not failure.retry_after:
            return False
        # Asked to wait past our deadline, or longer than one call may wait in all:
        # trying sooner would be rude, so give up now and let the caller come back.
        return (
            failure.retry_after >= remaining
            or rs.idle_for + failure.retry_after > self.wait_budget_s
        )

    def _wait(self, rs: RetryCallState, remaining: float) -> float:
        """tenacity's wait: the one backoff policy, never sooner than the Retry-After."""
        failure = self._failure(rs)
        wait = self.backoff.delay(rs.attempt_number, failure.retry_after if failure else None)
        return max(0.0, min(wait, remaining - MIN_TRY_S))

    def _before_sleep(self, rs: RetryCallState, operation: str) -> None:
        failure = self._failure(rs)
        sleep = rs.next_action.sleep if rs.next_action is not None else 0.0
        if failure is not None and failure.retry_after is not None and self.metrics is not None:
            self.metrics.connector_rate_limit_wait.labels(self.connector, "retry_after").inc(sleep)
        log.warning(
            "connector.retry",
            connector=self.connector,
            operation=operation,
            attempt=rs.attempt_number,
            reason=failure.reason if failure else None,
            status=failure.status if failure else None,
            sleep_s=round(sleep, 3),
        )
