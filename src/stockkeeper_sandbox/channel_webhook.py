"""The sandbox webhook receiver: what an outbound webhook channel posts its levels to.

``POST`` to any path outside ``/_sandbox`` with ``{"levels": [{"sku", "available",
"version"}]}`` and the headers of stockkeeper's outbound webhook channel
(docs/channels.md). It checks, as a careful receiver would, with its own code (a stand-in
that reused the sender's wire code would only check that code against itself):

* ``X-Stockkeeper-Signature: sha256=<hex>`` is the HMAC-SHA256 of ``f"{timestamp}."``
  and the raw body with the shared secret, and ``X-Stockkeeper-Timestamp`` is within
  the tolerance window of its clock: otherwise 401 and nothing is stored;
* the body is a levels batch (422 otherwise);
* ``X-Stockkeeper-Delivery`` is new: a delivery seen before is answered 200 again and
  not applied twice.

Every level told is kept in the history with its version and delivery id; what the
receiver shows per SKU is the one with the newest version (an older one arriving late
does not overwrite it). State lives in :class:`WebhookReceiverState`.
"""

from __future__ import annotations

import hashlib
import hmac
import string
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from stockkeeper_sandbox.channel_book import ChannelBook, book_router, utcnow
from stockkeeper_sandbox.server import (
    FaultController,
    Faults,
    bearer_required,
    faulty_app,
    json_response,
)

SIGNATURE_HEADER = "X-Stockkeeper-Signature"
TIMESTAMP_HEADER = "X-Stockkeeper-Timestamp"
DELIVERY_HEADER = "X-Stockkeeper-Delivery"
SIGNATURE_PREFIX = "sha256="
DELIVERIES_KEPT = 100_000
_HEX_DIGITS = frozenset(string.hexdigits)


class SignatureRefused(Exception):
    """A delivery whose signature does not hold; ``reason`` is ``missing``, ``malformed``,
    ``mismatch`` or ``stale``, as the 401 answer says."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_signature(
    secret: bytes,
    body: bytes,
    signature: str | None,
    timestamp: str | None,
    *,
    now: float,
    tolerance_s: float,
) -> None:
    """Raise :class:`SignatureRefused` unless ``signature`` (``sha256=<hex>``) is the
    HMAC-SHA256 of ``f"{timestamp}."`` and ``body`` with ``secret``, and ``timestamp``
    (unix seconds) is within ``tolerance_s`` of ``now``. The digest is checked first, so
    ``stale`` always means a genuinely signed delivery."""
    if not signature or not timestamp:
        raise SignatureRefused("missing")
    if not signature.startswith(SIGNATURE_PREFIX):
        raise SignatureRefused("missing")  # not the sha256= form
    digest = signature[len(SIGNATURE_PREFIX) :]
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 12:
        raise SignatureRefused("malformed")
    if len(digest) != 2 * hashlib.sha256().digest_size or not _HEX_DIGITS.issuperset(digest):
        raise SignatureRefused("malformed")
    expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(digest.lower(), expected):
        raise SignatureRefused("mismatch")
    if abs(now - int(timestamp)) > tolerance_s:
        raise SignatureRefused("stale")


class LevelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1)
    available: int = Field(ge=0, strict=True)
    version: int = Field(ge=0, strict=True)


class LevelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    levels: list[LevelIn] = Field(min_length=1)


class WebhookReceiverState(ChannelBook):
    """The levels a receiver was told, checked against its shared secret.

    Counters: ``deliveries`` (accepted), ``duplicates``, ``unauthorized`` (bad or stale
    signature), ``invalid`` (not a levels batch), ``stale_levels`` (older than shown).
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        tolerance_s: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
        unix_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(auto_list=True, clock=clock)
        self.secret = secret.encode() if isinstance(secret, str) else secret
        self.tolerance_s = tolerance_s
        self._unix_clock = unix_clock
        self._deliveries: OrderedDict[str, None] = OrderedDict()
        # The W3C traceparent of each accepted delivery that carried one (tracing).
        self.traceparents: list[str] = []

    def on_reset(self) -> None:
        self._deliveries.clear()
        self.traceparents.clear()

    def deliveries(self) -> list[str]:
        """The ids of the deliveries applied, oldest first."""
        with self.lock:
            return list(self._deliveries)

    def verify(self, body: bytes, signature: str | None, timestamp: str | None) -> None:
        """Raise :class:`SignatureRefused` unless the delivery is signed with our secret
        and fresh."""
        try:
            check_signature(
                self.secret,
                body,
                signature,
                timestamp,
                now=self._unix_clock(),
                tolerance_s=self.tolerance_s,
            )
        except SignatureRefused:
            self.count("unauthorized")
            raise

    def receive(self, delivery: str, levels: list[LevelIn]) -> bool:
        """Store a delivery's levels once; False when the delivery was seen before."""
        with self.lock:
            if delivery in self._deliveries:
                self.count("duplicates")
                return False
            self._deliveries[delivery] = None
            while len(self._deliveries) > DELIVERIES_KEPT:
                self._deliveries.popitem(last=False)
            self.count("deliveries")
            for level in levels:
                shown = self.version(level.sku)
                if shown is not None and level.version < shown:
                    self.count("stale_levels")
                    self.record(
                        level.sku,
                        level.available,
                        source="push",
                        version=level.version,
                        ref=delivery,
                    )
                    continue
                self.set_level(
                    level.sku, level.available, source="push", version=level.version, ref=delivery
                )
            return True


def create_app(
    state: WebhookReceiverState,
    token: str | None = None,
    faults: Faults | FaultController | None = None,
) -> FastAPI:
    """The receiver over ``state``, with the fault middleware and the control routes; the
    controller is at ``app.state.faults``. With ``token``, a bearer token is required too."""
    app = faulty_app("sandbox webhook receiver", faults)
    app.state.receiver = state
    app.include_router(book_router(state))

    @app.get("/_sandbox/deliveries", tags=["sandbox"])
    async def deliveries() -> Response:
        return json_response({"deliveries": state.deliveries()})

    # Registered last: any other path is the receiver's endpoint.
    @app.post("/{path:path}", dependencies=[bearer_required(token)])
    async def receive(path: str, request: Request) -> Response:
        body = await request.body()
        headers = request.headers
        try:
            state.verify(body, headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER))
        except SignatureRefused as exc:
            return json_response({"error": "unauthorized", "reason": exc.reason}, 401)
        delivery = headers.get(DELIVERY_HEADER)
        try:
            levels = LevelsIn.model_validate_json(body).levels
        except ValidationError as exc:
            state.count("invalid")
            detail: Any = [
                {"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors(include_url=False)[:3]
            ]
            return json_response({"error": "invalid", "detail": detail}, 422)
        if not delivery:
            state.count("invalid")
            return json_response(
                {"error": "invalid", "detail": f"{DELIVERY_HEADER} is missing"}, 422
            )
        applied = state.receive(delivery, levels)
        if traceparent := headers.get("traceparent"):
            state.traceparents.append(traceparent)
        return json_response({"status": "applied" if applied else "duplicate"})

    return app
