"""The sandbox marketplace: stock levels, a sales journal, and a delta feed over them.

Every change (a level set, a sale) is appended to one change log, and
``GET /v1/deltas?since=<token>`` pages through it in order. Unlike the WMS's change feed,
nothing is folded: a level set twice appears twice, as on real marketplaces, and the
reader keeps the newest. A sale lowers the marketplace's own level, so it appears as a
``sale`` followed by a ``level``.

All state lives in :class:`MarketplaceState`, in memory and behind a lock (the server runs
on its own thread while tests read and write the state from theirs).
"""

from __future__ import annotations

import random
import secrets
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from stockkeeper_sandbox.server import (
    CONTROL_PREFIX,
    FaultController,
    Faults,
    bearer_required,
    faulty_app,
    json_response,
    serve_foreground,
)

MAX_LIMIT = 5000


def _utcnow() -> datetime:
    return datetime.now(UTC)


class BadToken(ValueError):
    """A ``since`` token this marketplace did not hand out."""


class LevelIn(BaseModel):
    """One row for ``PUT /_sandbox/levels``; any quantity, even a negative one: the
    sandbox also stands in for a marketplace that sends bad data."""

    model_config = ConfigDict(extra="forbid")

    sku: str
    quantity: int
    updated_at: datetime | None = None


class LevelsUpsert(BaseModel):
    items: list[LevelIn]


class SaleIn(BaseModel):
    """One sale for ``POST /_sandbox/sales``; any quantity, for the same reason."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1)
    sku: str
    quantity: int
    sold_at: datetime | None = None


class SalesRequest(BaseModel):
    items: list[SaleIn]


class FeedFault(BaseModel):
    """``PUT /_sandbox/feed``: how the delta feed misbehaves. ``stuck``: every page is
    the changes from the first one on, with the token it was asked with as ``next``
    (the first page's token when asked without one) and ``has_more`` true, as a
    marketplace whose paging is broken answers: its token never advances."""

    model_config = ConfigDict(extra="forbid")

    stuck: bool = False


class SeedRequest(BaseModel):
    skus: int = Field(ge=0, le=1_000_000)
    seed: int = 0


class MarketplaceState:
    """Levels per SKU, the sales journal, and the change log the delta feed reads."""

    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # Tokens from another instance (or an older life of this one) are refused.
        self._epoch = secrets.token_hex(4)
        self._levels: dict[str, dict[str, Any]] = {}
        self._sales: dict[str, dict[str, Any]] = {}
        # The wire form of every change, oldest first; change n (from 1) is _log[n - 1].
        # Entries are never changed after they are appended, so pages may share them.
        self._log: list[dict[str, Any]] = []
        self._fault = FeedFault()

    @property
    def fault(self) -> FeedFault:
        with self._lock:
            return self._fault

    def set_fault(self, fault: FeedFault) -> None:
        """Make the delta feed misbehave (see :class:`FeedFault`); ``FeedFault()`` heals it."""
        with self._lock:
            self._fault = fault

    def set_level(self, sku: str, quantity: int, at: datetime | None = None) -> None:
        """Set the level of ``sku`` (a change, even if the quantity is the same)."""
        with self._lock:
            self._set_level(sku, quantity, at or self._clock())

    def set_levels(self, items: Iterable[tuple[str, int, datetime | None]]) -> int:
        """Set several levels, each ``(sku, quantity, at)``, in order; returns how many."""
        count = 0
        with self._lock:
            now = self._clock()
            for sku, quantity, at in items:
                self._set_level(sku, quantity, at or now)
                count += 1
        return count

    def _set_level(self, sku: str, quantity: int, at: datetime) -> None:
        change = {"kind": "level", "sku": sku, "quantity": quantity, "updated_at": at}
        self._levels[sku] = change
        self._log.append(change)

    def sell(
        self, transaction_id: str, sku: str, quantity: int, at: datetime | None = None
    ) -> bool:
        """Record a sale and lower the level of ``sku`` by ``quantity`` (below zero, if
        it oversells: that is for the reader to notice). A transaction already recorded
        changes nothing and returns False."""
        with self._lock:
            if transaction_id in self._sales:
                return False
            at = at or self._clock()
            sale = {
                "kind": "sale",
                "transaction_id": transaction_id,
                "sku": sku,
                "quantity": quantity,
                "sold_at": at,
            }
            self._sales[transaction_id] = sale
            self._log.append(sale)
            level = self._levels.get(sku)
            self._set_level(sku, (level["quantity"] if level else 0) - quantity, at)
            return True

    def seed(self, skus: int, seed: int = 0) -> None:
        """Set the levels of ``SKU-000000``… (``skus`` of them) to generated quantities;
        the same arguments give the same levels."""
        rng = random.Random(seed)  # noqa: S311 - test data
        self.set_levels((f"SKU-{i:06d}", rng.randrange(500), None) for i in range(skus))

    def levels(self) -> dict[str, int]:
        """The current level per SKU."""
        with self._lock:
            return {sku: level["quantity"] for sku, level in self._levels.items()}

    def sales(self) -> list[dict[str, Any]]:
        """Every recorded sale, oldest first, as the delta feed shows it."""
        with self._lock:
            return [dict(s) for s in self._sales.values()]

    # -- delta feed ----------------------------------------------------------------

    def head(self) -> str:
        """The token after the newest change."""
        with self._lock:
            return self._token(len(self._log))

    def deltas(self, since: str | None, limit: int) -> tuple[list[dict[str, Any]], str, bool]:
        """Up to ``limit`` changes after ``since`` (None: from the first), in order; the
        token to ask with next; whether more are waiting already. In the ``stuck`` fault
        mode, the first changes again with the token asked with and "more to come"."""
        with self._lock:
            start = self._decode_token(since) if since else 0
            if self._fault.stuck:  # the same page again, the same token, "more to come"
                return self._log[:limit], since or self._token(0), True
            end = min(start + limit, len(self._log))
            return self._log[start:end], self._token(end), end < len(self._log)

    def _token(self, seq: int) -> str:
        return f"{self._epoch}-{seq}"

    def _decode_token(self, token: str) -> int:
        epoch, _, seq = token.partition("-")
        if epoch != self._epoch or not (seq.isascii() and seq.isdigit()):
            raise BadToken(f"not a delta token of this marketplace: {token!r}")
        if int(seq) > len(self._log):
            raise BadToken(f"a delta token from the future: {token!r}")
        return int(seq)


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def create_app(
    state: MarketplaceState,
    token: str | None = None,
    faults: Faults | FaultController | None = None,
) -> FastAPI:
    """The marketplace wire API over ``state``, with the fault middleware and control
    routes. The controller is at ``app.state.faults``."""
    app = faulty_app("sandbox marketplace", faults)
    app.state.marketplace = state

    @app.get("/v1/deltas", dependencies=[bearer_required(token)])
    async def deltas(since: str | None = None, limit: Limit = 500) -> Response:
        try:
            changes, next_token, has_more = state.deltas(since, limit)
        except BadToken as exc:
            raise HTTPException(422, str(exc)) from None
        return json_response({"changes": changes, "next": next_token, "has_more": has_more})

    @app.get(f"{CONTROL_PREFIX}/levels", tags=["sandbox"])
    async def get_levels() -> Response:
        return json_response({"levels": state.levels(), "token": state.head()})

    @app.put(f"{CONTROL_PREFIX}/levels", tags=["sandbox"])
    async def put_levels(body: LevelsUpsert) -> Response:
        count = state.set_levels((i.sku, i.quantity, i.updated_at) for i in body.items)
        return json_response({"count": count, "token": state.head()})

    @app.get(f"{CONTROL_PREFIX}/feed", tags=["sandbox"])
    async def get_feed() -> Response:
        return json_response(state.fault.model_dump())

    @app.put(f"{CONTROL_PREFIX}/feed", tags=["sandbox"])
    async def put_feed(body: FeedFault) -> Response:
        state.set_fault(body)
        return json_response(body.model_dump())

    @app.get(f"{CONTROL_PREFIX}/sales", tags=["sandbox"])
    async def get_sales() -> Response:
        return json_response({"sales": state.sales()})

    @app.post(f"{CONTROL_PREFIX}/sales", tags=["sandbox"])
    async def post_sales(body: SalesRequest) -> Response:
        results = [
            {
                "transaction_id": s.transaction_id,
                "status": "recorded"
                if state.sell(s.transaction_id, s.sku, s.quantity, s.sold_at)
                else "duplicate",
            }
            for s in body.items
        ]
        return json_response({"results": results, "token": state.head()})

    @app.post(f"{CONTROL_PREFIX}/seed", tags=["sandbox"])
    async def seed(body: SeedRequest) -> Response:
        state.seed(body.skus, body.seed)
        return json_response({"token": state.head()})

    return app


def run(
    host: str = "127.0.0.1",
    port: int = 8091,
    seed_skus: int = 0,
    token: str | None = None,
    seed: int = 0,
) -> None:
    """Serve a sandbox marketplace in the foreground until interrupted, with the levels
    of ``seed_skus`` generated SKUs (the same ones for the same ``seed``)."""
    state = MarketplaceState()
    if seed_skus:
        state.seed(seed_skus, seed)
    serve_foreground(create_app(state, token), host, port)
