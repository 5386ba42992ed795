"""The sandbox WMS: stock per batch, a change log, and the books of allocations.

It speaks the wire contract in ``docs/wms.md``. All state lives in :class:`WmsState`, in
memory and behind a lock (the server runs on its own thread while tests read and write
the state from theirs).
"""

from __future__ import annotations

import base64
import binascii
import random
import secrets
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
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
MAX_ALLOCATION_ITEMS = 500
LOCATIONS = ("WH-A", "WH-B", "WH-C")

# (sku, location, has a lot, lot or ""): the wire order, batches without a lot first.
SortKey = tuple[str, str, bool, str]
# (sku, location, lot_number, on_hand, unavailable, expires_at)
BatchRow = tuple[str, str, str | None, int, int, datetime | None]


def sort_key(sku: str, location: str, lot_number: str | None) -> SortKey:
    return (sku, location, lot_number is not None, lot_number or "")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Batch:
    sku: str
    location: str
    lot_number: str | None
    expires_at: datetime | None
    on_hand: int
    unavailable: int
    updated_at: datetime
    seq: int  # position of its latest change in the change log

    def wire(self) -> dict[str, Any]:
        return {
            "sku": self.sku,
            "location": self.location,
            "lot_number": self.lot_number,
            "expires_at": self.expires_at,
            "on_hand": self.on_hand,
            "unavailable": self.unavailable,
            "updated_at": self.updated_at,
        }


class BadToken(ValueError):
    """A cursor or change token this WMS did not hand out."""


class AllocationItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=200)
    action: Literal["allocate", "release", "confirm"]
    order_id: str = Field(min_length=1, max_length=200)
    sku: str = Field(min_length=1)
    location: str = Field(min_length=1)
    lot_number: str | None = None
    quantity: int = Field(gt=0)


class AllocationRequest(BaseModel):
    items: list[AllocationItem] = Field(min_length=1, max_length=MAX_ALLOCATION_ITEMS)


class StockIn(BaseModel):
    """One row for ``PUT /_sandbox/stock``; anything goes, even a negative on_hand: the
    sandbox also stands in for a WMS that sends bad data."""

    model_config = ConfigDict(extra="forbid")

    sku: str
    location: str = "default"
    lot_number: str | None = None
    on_hand: int
    unavailable: int = 0
    expires_at: datetime | None = None


class StockUpsert(BaseModel):
    items: list[StockIn]


class SeedRequest(BaseModel):
    batches: int = Field(ge=0, le=10_000_000)
    skus: int | None = Field(default=None, ge=1)
    seed: int = 0


class WmsState:
    """Stock per batch, kept in wire order; a change log; the books of allocations."""

    def __init__(self, clock: Callable[[], datetime] = _utcnow) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        # Tokens from another WMS instance (or an older life of this one) are refused.
        self._epoch = secrets.token_hex(4)
        self._batches: dict[SortKey, _Batch] = {}
        self._order: list[SortKey] = []  # sorted
        self._seq = 0
        # (seq, key) per change, in order; entries older than the batch's seq are stale
        # and skipped, and compacted away once they outnumber the live ones.
        self._log: list[tuple[int, SortKey]] = []
        self._applied: dict[str, dict[str, Any]] = {}
        self._allocated: dict[SortKey, int] = {}
        self._confirmed: dict[SortKey, int] = {}

    # -- stock ---------------------------------------------------------------------

    def put(
        self,
        sku: str,
        location: str,
        lot_number: str | None,
        on_hand: int,
        unavailable: int = 0,
        expires_at: datetime | None = None,
    ) -> None:
        """Create or replace one batch; the change goes into the change log."""
        with self._lock:
            new = self._upsert(
                sku, location, lot_number, on_hand, unavailable, expires_at, now=self._clock()
            )
            if new is not None:
                self._order.insert(bisect_left(self._order, new), new)
            self._compact()

    def put_many(self, rows: Iterable[BatchRow]) -> int:
        """Upsert several batches, each a tuple in the order of :meth:`put`'s arguments;
        the wire order is sorted once."""
        count = 0
        with self._lock:
            added = False
            now = self._clock()
            for row in rows:
                new = self._upsert(*row, now=now)
                if new is not None:
                    self._order.append(new)
                    added = True
                count += 1
            if added:
                self._order.sort()
            self._compact()
        return count

    def _upsert(
        self,
        sku: str,
        location: str,
        lot_number: str | None,
        on_hand: int,
        unavailable: int,
        expires_at: datetime | None,
        *,
        now: datetime,
    ) -> SortKey | None:
        """Write one batch and log it; return its key if it is new (not yet in order)."""
        lot_number = lot_number or None
        key = sort_key(sku, location, lot_number)
        self._seq += 1
        batch = self._batches.get(key)
        if batch is None:
            self._batches[key] = _Batch(
                sku, location, lot_number, expires_at, on_hand, unavailable, now, self._seq
            )
        else:
            batch.expires_at, batch.on_hand, batch.unavailable = expires_at, on_hand, unavailable
            batch.updated_at, batch.seq = now, self._seq
        self._log.append((self._seq, key))
        return key if batch is None else None

    def _compact(self) -> None:
        if len(self._log) > 2 * len(self._batches) + 1024:
            self._log = sorted((b.seq, k) for k, b in self._batches.items())

    def seed(self, batches: int, skus: int | None = None, seed: int = 0) -> None:
        """Add ``batches`` generated batches over ``skus`` SKUs (default batches // 4).

        The same arguments always give the same batches. Each SKU's first batch has no
        lot; the others have lots that expire, spread over three locations.
        """
        rng = random.Random(seed)  # noqa: S311 - test data
        n_skus = max(1, skus if skus is not None else batches // 4)
        base = datetime(2030, 1, 1, tzinfo=UTC)
        rows: list[BatchRow] = []
        for i in range(batches):
            k = i // n_skus  # the k-th batch of its SKU
            lot = None if k == 0 else f"LOT-{k:05d}"
            expires = None if lot is None else base + timedelta(days=rng.randrange(365))
            location = LOCATIONS[k % len(LOCATIONS)]
            on_hand, unavailable = rng.randrange(500), rng.randrange(5)
            unavailable = min(unavailable, on_hand)  # among those on hand, never more
            rows.append((f"SKU-{i % n_skus:06d}", location, lot, on_hand, unavailable, expires))
        self.put_many(rows)

    def rows(self) -> list[dict[str, Any]]:
        """Every batch in wire order, as the wire shows it."""
        with self._lock:
            return [self._batches[k].wire() for k in self._order]

    def page(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        sku: str | None = None,
        location: str | None = None,
        lot_number: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page in wire order after ``cursor``; ``lot_number=""`` means no lot."""
        after = self._decode_cursor(cursor) if cursor else None
        with self._lock:
            order = self._order
            start = 0 if sku is None else bisect_left(order, (sku, "", False, ""))
            if after is not None:
                start = max(start, bisect_right(order, after))
            found: list[SortKey] = []
            for key in self._scan(start, sku, location, lot_number):
                if len(found) == limit:
                    return [self._batches[k].wire() for k in found], self._cursor(found[-1])
                found.append(key)
            return [self._batches[k].wire() for k in found], None

    def count(
        self,
        *,
        sku: str | None = None,
        location: str | None = None,
        lot_number: str | None = None,
    ) -> int:
        """How many batches a snapshot with these filters has, over all its pages."""
        with self._lock:
            start = 0 if sku is None else bisect_left(self._order, (sku, "", False, ""))
            return sum(1 for _ in self._scan(start, sku, location, lot_number))

    def _scan(
        self, start: int, sku: str | None, location: str | None, lot_number: str | None
    ) -> Iterator[SortKey]:
        order = self._order
        for i in range(start, len(order)):
            key = order[i]
            if sku is not None and key[0] != sku:
                return  # keys are sorted by sku: nothing further can match
            if location is not None and key[1] != location:
                continue
            if lot_number is not None and (key[2], key[3]) != (lot_number != "", lot_number):
                continue
            yield key

    @staticmethod
    def _cursor(key: SortKey) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")

    @staticmethod
    def _decode_cursor(cursor: str) -> SortKey:
        try:
            raw = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
            sku, location, has_lot, lot = raw
            if not (
                isinstance(sku, str)
                and isinstance(location, str)
                and isinstance(has_lot, bool)
                and isinstance(lot, str)
            ):
                raise TypeError(cursor)
        except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise BadToken(f"not a cursor of this WMS: {cursor!r}") from exc
        return (sku, location, has_lot, lot)

    # -- change log ----------------------------------------------------------------

    def head(self) -> str:
        """The change token of the newest change."""
        with self._lock:
            return f"{self._epoch}-{self._seq}"

    def changes(self, since: str | None, limit: int) -> tuple[list[dict[str, Any]], str, bool]:
        """The latest state of each batch changed after ``since``, in change order."""
        with self._lock:
            after = self._decode_token(since) if since else 0
            log = self._log
            found: list[_Batch] = []
            for i in range(bisect_right(log, after, key=lambda entry: entry[0]), len(log)):
                seq, key = log[i]
                batch = self._batches[key]
                if batch.seq != seq:
                    continue  # changed again later: it is sent at its latest position
                if len(found) == limit:
                    return [b.wire() for b in found], f"{self._epoch}-{found[-1].seq}", True
                found.append(batch)
            return [b.wire() for b in found], self.head(), False

    def _decode_token(self, token: str) -> int:
        epoch, _, seq = token.partition("-")
        if epoch != self._epoch or not seq.isdigit() or int(seq) > self._seq:
            raise BadToken(f"not a change token of this WMS: {token!r}")
        return int(seq)

    # -- allocations ---------------------------------------------------------------

    def allocate(self, items: Iterable[AllocationItem]) -> list[dict[str, str]]:
        """Apply outbound items once each, by event_id; repeats are duplicates."""
        results = []
        with self._lock:
            for item in items:
                seen = self._applied.get(item.event_id)
                if seen is not None:
                    seen["duplicates"] += 1
                    results.append({"event_id": item.event_id, "status": "duplicate"})
                    continue
                key = sort_key(item.sku, item.location, item.lot_number)
                if item.action == "allocate":
                    self._allocated[key] = self._allocated.get(key, 0) + item.quantity
                elif item.action == "release":
                    self._allocated[key] = self._allocated.get(key, 0) - item.quantity
                else:
                    self._confirmed[key] = self._confirmed.get(key, 0) + item.quantity
                self._applied[item.event_id] = {
                    **item.model_dump(),
                    "applied_at": self._clock(),
                    "duplicates": 0,
                }
                results.append({"event_id": item.event_id, "status": "applied"})
        return results

    def books(self) -> dict[str, Any]:
        """``{"applied": {event_id: item + duplicates}, "duplicates": n, "batches": [...]}``:
        every applied item, how often it was repeated, and the counters per batch."""
        with self._lock:
            applied = {k: dict(v) for k, v in self._applied.items()}
            keys = sorted(set(self._allocated) | set(self._confirmed))
            batches = [
                {
                    "sku": k[0],
                    "location": k[1],
                    "lot_number": k[3] if k[2] else None,
                    "allocated": self._allocated.get(k, 0),
                    "confirmed": self._confirmed.get(k, 0),
                }
                for k in keys
            ]
        return {
            "applied": applied,
            "duplicates": sum(v["duplicates"] for v in applied.values()),
            "batches": batches,
        }


Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]


def create_app(
    state: WmsState,
    token: str | None = None,
    faults: Faults | FaultController | None = None,
) -> FastAPI:
    """The WMS wire API over ``state``, with the fault middleware and control routes.

    The controller is at ``app.state.faults``.
    """
    app = faulty_app("sandbox WMS", faults)
    app.state.wms = state
    auth = [bearer_required(token)]

    @app.get("/v1/stock", dependencies=auth)
    async def stock(
        limit: Limit = 500,
        cursor: str | None = None,
        sku: str | None = None,
        location: str | None = None,
        lot_number: str | None = None,
    ) -> Response:
        try:
            items, next_cursor = state.page(
                limit=limit, cursor=cursor, sku=sku, location=location, lot_number=lot_number
            )
        except BadToken as exc:
            raise HTTPException(422, str(exc)) from None
        # The snapshot's size over all pages (optional in the contract): the client
        # shows a percentage and an ETA with it.
        total = state.count(sku=sku, location=location, lot_number=lot_number)
        return json_response({"items": items, "next_cursor": next_cursor, "total": total})

    @app.get("/v1/stock/token", dependencies=auth)
    async def stock_token() -> Response:
        return json_response({"token": state.head()})

    @app.get("/v1/stock/changes", dependencies=auth)
    async def stock_changes(since: str | None = None, limit: Limit = 500) -> Response:
        try:
            items, next_token, has_more = state.changes(since, limit)
        except BadToken as exc:
            raise HTTPException(422, str(exc)) from None
        return json_response({"items": items, "next_token": next_token, "has_more": has_more})

    @app.post("/v1/allocations", dependencies=auth)
    async def allocations(body: AllocationRequest) -> Response:
        return json_response({"results": state.allocate(body.items)})

    @app.put(f"{CONTROL_PREFIX}/stock", tags=["sandbox"])
    async def put_stock(body: StockUpsert) -> Response:
        count = state.put_many(
            (r.sku, r.location, r.lot_number, r.on_hand, r.unavailable, r.expires_at)
            for r in body.items
        )
        return json_response({"count": count, "token": state.head()})

    @app.post(f"{CONTROL_PREFIX}/seed", tags=["sandbox"])
    async def seed(body: SeedRequest) -> Response:
        state.seed(body.batches, body.skus, body.seed)
        return json_response({"token": state.head()})

    @app.get(f"{CONTROL_PREFIX}/books", tags=["sandbox"])
    async def books() -> Response:
        return json_response(state.books())

    return app


def run(
    host: str = "127.0.0.1",
    port: int = 8090,
    seed_batches: int = 0,
    token: str | None = None,
    seed: int = 0,
) -> None:
    """Serve a sandbox WMS in the foreground until interrupted, with ``seed_batches``
    generated batches (the same ones for the same ``seed``)."""
    state = WmsState()
    if seed_batches:
        state.seed(seed_batches, seed=seed)
    serve_foreground(create_app(state, token), host, port)
