"""The outbound webhook channel: any URL told our new levels in a signed POST.

Wire contract (docs/channels.md): ``POST {url}`` with ``{"levels": [{"sku",
"available", "version"}]}`` (a batch) and

* ``X-Stockkeeper-Timestamp``: the sender's clock, unix seconds;
* ``X-Stockkeeper-Signature: sha256=<hex>``: HMAC-SHA256 with the shared secret over
  ``f"{timestamp}."`` followed by the raw body bytes (the generic preset of
  :mod:`~stockkeeper.connectors.signatures`), so a receiver can refuse replays outside
  its tolerance window;
* ``X-Stockkeeper-Delivery``: a UUID naming the delivery, the same on every retry of
  it, so a receiver can apply a delivery once.

Any 2xx acknowledges every item; a 4xx other than 429 refuses the whole call
(``ConnectorRejected``); 429 and 5xx are retried by :class:`HttpCaller`.

Signing happens in :class:`SigningTransport`, under HttpCaller, on the exact bytes each
try sends, so every retry gets a fresh timestamp and signature. The delivery id comes
from the push that makes the call (a context variable: HttpCaller's retries run in the
push's task).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar

import httpx

from stockkeeper.config import OutboundWebhookChannelConfig
from stockkeeper.connectors.channels import Fence, Push, PushOutcome
from stockkeeper.connectors.http import HttpCaller, OnCall
from stockkeeper.connectors.signatures import sign_generic
from stockkeeper.observability.metrics import Metrics

SIGNATURE_HEADER = "X-Stockkeeper-Signature"
TIMESTAMP_HEADER = "X-Stockkeeper-Timestamp"
DELIVERY_HEADER = "X-Stockkeeper-Delivery"
SIGNATURE_PREFIX = "sha256="

_delivery: ContextVar[str | None] = ContextVar("stockkeeper_webhook_delivery", default=None)


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Stockkeeper-Signature`` value of ``body`` sent at ``timestamp``."""
    return SIGNATURE_PREFIX + sign_generic(secret, body, timestamp)


class SigningTransport(httpx.AsyncBaseTransport):
    """Adds the timestamp, signature and delivery headers to every request it sends."""

    def __init__(
        self,
        secret: bytes,
        inner: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self._inner = inner or httpx.AsyncHTTPTransport()
        self._clock = clock

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        timestamp = int(self._clock())
        request.headers[TIMESTAMP_HEADER] = str(timestamp)
        request.headers[SIGNATURE_HEADER] = signature(self._secret, body, timestamp)
        delivery = _delivery.get()
        if delivery is not None:
            request.headers[DELIVERY_HEADER] = delivery
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _acknowledged(response: httpx.Response) -> None:
    """Any 2xx body will do: the status is the acknowledgement."""


class OutboundWebhookChannel:
    """POSTs levels to one URL, signed with the shared secret. Close with :meth:`aclose`."""

    def __init__(
        self,
        cfg: OutboundWebhookChannelConfig,
        *,
        secret: str,
        token: str | None = None,
        metrics: Metrics | None = None,
        on_call: OnCall | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not secret:
            raise ValueError(f"{cfg.id}: the outbound webhook needs a signing secret")
        self.cfg = cfg
        self.http = HttpCaller(
            cfg,
            metrics=metrics,
            token=token,
            on_call=on_call,
            transport=SigningTransport(secret.encode(), transport),
            bounded_waits=True,  # pushes run under a lease (HttpCaller, D-416)
        )

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def can_read(self) -> bool:
        """A webhook receiver cannot be asked what it shows."""
        return False

    async def aclose(self) -> None:
        await self.http.aclose()

    async def push(self, items: Sequence[Push], fence: Fence | None = None) -> list[PushOutcome]:
        """One signed POST of every item; a 2xx acknowledges them all. Each item is
        written by one call (its own retries resend the same delivery), so ``fence`` is
        never needed."""
        if not items:
            return []
        body = {
            "levels": [{"sku": i.sku, "available": i.quantity, "version": i.version} for i in items]
        }
        token = _delivery.set(str(uuid.uuid4()))
        try:
            await self.http.call("post_levels", "POST", self.cfg.url, _acknowledged, json=body)
        finally:
            _delivery.reset(token)
        return [PushOutcome(i.sku, "ok", i.quantity) for i in items]

    async def read(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, int | None]:
        """Never called (:attr:`can_read` is False): a receiver has no read API."""
        raise NotImplementedError("an outbound webhook cannot report the levels it was told")
