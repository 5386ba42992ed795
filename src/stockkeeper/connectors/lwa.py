"""Login with Amazon: an SP-API access token from the seller's refresh token.

Amazon's access tokens live an hour. :class:`LwaTokens` exchanges the refresh token at
the LWA token endpoint (``POST``, form-encoded ``grant_type=refresh_token``,
``refresh_token``, ``client_id``, ``client_secret``; the answer is
``{"access_token", "token_type", "expires_in"}``), keeps the token until shortly before
it expires, and shares it between every concurrent call of the adapter: many calls
that find no fresh token wait for one exchange (single flight), they do not each start
their own. A call whose token Amazon says has expired (a 403 naming the expiry) asks
for a new one once with :meth:`LwaTokens.expired`.

A refused exchange (400/401: ``invalid_grant``, ``invalid_client``) is a setup problem
no retry can fix: it raises :class:`CredentialsRefused` (a :class:`ConnectorRejected`,
so the push is dead-lettered with the reason) and is counted in
``stockkeeper_channel_token_exchanges_total{result="refused"}``; the refusal is remembered for
``refused_pause_s``, during which every call fails the same way at once instead of
asking the token endpoint again (no loop). A 5xx, a 429 or no answer is
:class:`ConnectorUnavailable`: the push is retried with the channel's backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import orjson
import structlog

from stockkeeper.connectors.http import (
    ConnectorRejected,
    ConnectorUnavailable,
    parse_retry_after,
)
from stockkeeper.observability.metrics import Metrics

log = structlog.get_logger(__name__)

DEFAULT_TOKEN_URL = "https://api.amazon.com/auth/o2/token"  # noqa: S105 - a URL
OPERATION = "lwa_token"


@dataclass(frozen=True, slots=True)
class LwaCredentials:
    """What the seller authorised the app with (read from the environment)."""

    client_id: str
    client_secret: str
    refresh_token: str
    token_url: str = DEFAULT_TOKEN_URL


class CredentialsRefused(ConnectorRejected):
    """The token endpoint refused the client or the refresh token."""


def token_expired(status: int, body: str) -> bool:
    """Whether an SP-API answer says the access token has expired (Amazon answers 403
    ``Unauthorized`` with "The access token you provided has expired.")."""
    return status == 403 and "expired" in body.lower()


class LwaTokens:
    """The access token of one seller's app, refreshed on demand; close with
    :meth:`aclose`."""

    def __init__(
        self,
        connector: str,
        credentials: LwaCredentials,
        *,
        timeout_s: float = 10.0,
        refresh_margin_s: float = 60.0,
        refused_pause_s: float = 300.0,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.connector = connector
        self.credentials = credentials
        self.refresh_margin_s = refresh_margin_s
        self.refused_pause_s = refused_pause_s
        self.metrics = metrics
        self.clock = clock
        self.exchanges = 0
        """Exchanges sent to the token endpoint (a test's and an operator's figure)."""
        self._client = httpx.AsyncClient(timeout=timeout_s, transport=transport)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._fresh_until = 0.0
        self._refused: tuple[float, CredentialsRefused] | None = None

    async def aclose(self) -> None:
        await self._client.aclose()

    async def token(self) -> str:
        """A token fresh for at least ``refresh_margin_s`` more (one exchange for any
        number of concurrent callers)."""
        token = self._current()
        if token is not None:
            return token
        async with self._lock:
            token = self._current()  # another caller refreshed while we waited
            if token is not None:
                return token
            return await self._exchange()

    async def expired(self, token: str) -> str:
        """Amazon said ``token`` has expired: a new one (unless another caller already
        replaced it, whose token is then returned)."""
        async with self._lock:
            if self._token is not None and self._token != token:
                return self._token
            self._token, self._fresh_until = None, 0.0
            return await self._exchange()

    def _current(self) -> str | None:
        if self._token is not None and self.clock() < self._fresh_until:
            return self._token
        return None

    async def _exchange(self) -> str:
        if self._refused is not None:
            at, refusal = self._refused
            if self.clock() - at < self.refused_pause_s:
                raise refusal
            self._refused = None
        c = self.credentials
        form = {
            "grant_type": "refresh_token",
            "refresh_token": c.refresh_token,
            "client_id": c.client_id,
            "client_secret": c.client_secret,
        }
        self.exchanges += 1
        started = self.clock()
        try:
            response = await self._client.post(c.token_url, data=form)
        except httpx.TransportError as exc:
            self._count("unavailable")
            raise ConnectorUnavailable(
                self.connector, OPERATION, "connect_error", f"LWA: {type(exc).__name__}: {exc}"
            ) from exc
        body = response.text[:500]
        if response.status_code in (400, 401):
            self._count("refused")
            refusal = CredentialsRefused(self.connector, OPERATION, response.status_code, body)
            self._refused = (self.clock(), refusal)
            log.error(
                "lwa.refused", connector=self.connector, status=response.status_code, body=body
            )
            raise refusal
        if response.status_code != 200:
            self._count("unavailable")
            raise ConnectorUnavailable(
                self.connector,
                OPERATION,
                "server_error" if response.status_code >= 500 else "rate_limited",
                f"LWA answered {response.status_code}: {body}",
                status=response.status_code,
                # The push is retried by the propagator, never sooner than LWA asked.
                retry_after=parse_retry_after(response.headers.get("Retry-After")),
            )
        token, lifetime = _parse(response.content)
        if token is None:
            self._count("unavailable")
            raise ConnectorUnavailable(
                self.connector, OPERATION, "invalid_response", f"LWA answer: {body}", status=200
            )
        self._count("ok")
        self._token = token
        # Shortly before the end, or halfway through a lifetime shorter than the margin.
        self._fresh_until = started + max(lifetime - self.refresh_margin_s, lifetime / 2)
        return token

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.channel_token_exchanges.labels(channel=self.connector, result=result).inc()


def _parse(content: bytes) -> tuple[str | None, float]:
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None, 0.0
    if not isinstance(doc, dict):
        return None, 0.0
    token, lifetime = doc.get("access_token"), doc.get("expires_in")
    if not isinstance(token, str) or not token:
        return None, 0.0
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
        return None, 0.0
    return token, float(lifetime)
