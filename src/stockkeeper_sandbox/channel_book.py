"""What every sandbox sales channel keeps: listings, the level per SKU, and its history.

:class:`ChannelBook` is the state the three channel sandboxes (Shopify, Amazon, the
outbound webhook receiver) share: which SKUs the channel lists, what it shows as
available for each, every value ever set (told by stockkeeper over the wire, or set
through the control routes as if the channel had sold units itself), and call counters.
By default a SKU is listed the first time the wire names it (auto-list); SKUs can be
kept unlisted. Thread-safe: the server thread and the test's thread both use it.

:func:`book_router` mounts the control routes every channel sandbox has under
``/_sandbox``: levels, history, list/unlist, counters, reset.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from stockkeeper_sandbox.server import CONTROL_PREFIX, json_response

Source = Literal["push", "channel"]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LevelChange:
    """One value the channel showed for a SKU.

    ``source`` is ``push`` when stockkeeper told it over the wire and ``channel`` when it
    was set through the control routes (the channel sold units, a merchant edited it).
    ``version`` is stockkeeper's level version where the wire carries one (the outbound
    webhook); ``ref`` is the wire's own reference (Shopify's referenceDocumentUri,
    Amazon's submissionId, the webhook's delivery id).
    """

    sku: str
    quantity: int
    at: datetime
    source: Source
    version: int | None = None
    ref: str | None = None

    def wire(self) -> dict[str, Any]:
        return asdict(self)


class ChannelBook:
    """Listings, levels, their history and call counters of one sandbox channel."""

    def __init__(
        self,
        *,
        auto_list: bool = True,
        unlisted: Iterable[str] = (),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.auto_list = auto_list
        self._clock = clock
        # Reentrant: the channel sandboxes hold it around several book operations.
        self.lock = threading.RLock()
        self._initial_unlisted = frozenset(unlisted)
        self._levels: dict[str, int] = {}
        self._versions: dict[str, int] = {}
        self._history: dict[str, list[LevelChange]] = {}
        self._kept_unlisted: set[str] = set(self._initial_unlisted)
        self._counters: Counter[str] = Counter()

    # -- listings ------------------------------------------------------------------

    def listed(self, sku: str, *, auto: bool = True) -> bool:
        """Whether the channel lists ``sku``; with ``auto`` (the wire naming it) and
        auto-list on, a SKU not kept unlisted is listed now, showing 0."""
        with self.lock:
            if sku in self._levels:
                return True
            if auto and self.auto_list and sku not in self._kept_unlisted:
                self._add_listing(sku, 0)
                return True
            return False

    def list_skus(self, skus: Iterable[str], quantity: int = 0) -> None:
        """List ``skus`` (showing ``quantity``), undoing any unlist; listed ones stay."""
        with self.lock:
            for sku in skus:
                self._kept_unlisted.discard(sku)
                if sku not in self._levels:
                    self._add_listing(sku, quantity)

    def unlist_skus(self, skus: Iterable[str]) -> None:
        """Delete the listings of ``skus`` and keep them unlisted until :meth:`list`."""
        with self.lock:
            for sku in skus:
                self._kept_unlisted.add(sku)
                if self._levels.pop(sku, None) is not None:
                    self._versions.pop(sku, None)
                    self.on_unlisted(sku)

    def _add_listing(self, sku: str, quantity: int) -> None:
        self._levels[sku] = quantity
        self.on_listed(sku)

    def on_listed(self, sku: str) -> None:
        """Hook: a listing was created (the lock is held)."""

    def on_unlisted(self, sku: str) -> None:
        """Hook: a listing was deleted (the lock is held)."""

    # -- levels --------------------------------------------------------------------

    def level(self, sku: str) -> int | None:
        """What the channel shows for ``sku``; None when it does not list it."""
        with self.lock:
            return self._levels.get(sku)

    def levels(self) -> dict[str, int]:
        """What the channel shows per listed SKU."""
        with self.lock:
            return dict(self._levels)

    def version(self, sku: str) -> int | None:
        """The newest version told for ``sku`` (wires that carry one)."""
        with self.lock:
            return self._versions.get(sku)

    def set_level(
        self,
        sku: str,
        quantity: int,
        *,
        source: Source = "channel",
        version: int | None = None,
        ref: str | None = None,
    ) -> None:
        """Show ``quantity`` for ``sku`` (listing it) and record the change. The default
        source is the channel itself: a sale, or a merchant's edit."""
        with self.lock:
            self._kept_unlisted.discard(sku)
            if sku not in self._levels:
                self._add_listing(sku, quantity)
            self._levels[sku] = quantity
            if version is not None:
                self._versions[sku] = max(version, self._versions.get(sku, version))
            self.record(sku, quantity, source=source, version=version, ref=ref)

    def record(
        self,
        sku: str,
        quantity: int,
        *,
        source: Source,
        version: int | None = None,
        ref: str | None = None,
    ) -> None:
        """Append to the history of ``sku`` without changing what it shows."""
        with self.lock:
            change = LevelChange(sku, quantity, self._clock(), source, version, ref)
            self._history.setdefault(sku, []).append(change)

    def sell(self, sku: str, units: int) -> int:
        """The channel sold ``units`` of ``sku`` itself: its level goes down by that much
        (not below zero). Returns the new level."""
        with self.lock:
            new = max(0, (self._levels.get(sku) or 0) - units)
            self.set_level(sku, new, source="channel")
            return new

    def history(self, sku: str | None = None) -> list[LevelChange]:
        """Every value set, oldest first: for ``sku``, or for every SKU."""
        with self.lock:
            if sku is not None:
                return list(self._history.get(sku, []))
            changes = [c for per_sku in self._history.values() for c in per_sku]
        return sorted(changes, key=lambda c: c.at)

    def pushed(self, sku: str) -> list[int]:
        """The quantities stockkeeper told the channel for ``sku``, in order."""
        return [c.quantity for c in self.history(sku) if c.source == "push"]

    # -- counters and reset --------------------------------------------------------

    def count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self._counters[name] += n

    def counters(self) -> dict[str, int]:
        """Calls and events seen, by name (each sandbox documents its own)."""
        with self.lock:
            return dict(self._counters)

    def reset(self) -> None:
        """Forget every listing, level, change and counter (options stay)."""
        with self.lock:
            self._levels.clear()
            self._versions.clear()
            self._history.clear()
            self._counters.clear()
            self._kept_unlisted = set(self._initial_unlisted)
            self.on_reset()

    def on_reset(self) -> None:
        """Hook: the book was reset (the lock is held)."""


class LevelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1)
    quantity: int = Field(ge=0)


class LevelsIn(BaseModel):
    items: list[LevelIn]


class SkusIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    skus: list[str]
    quantity: int = Field(default=0, ge=0)


def book_router(book: ChannelBook) -> APIRouter:
    """The control routes every channel sandbox has, under ``/_sandbox``."""
    router = APIRouter(prefix=CONTROL_PREFIX, tags=["sandbox"])

    @router.get("/levels")
    async def get_levels() -> Response:
        return json_response({"levels": book.levels()})

    @router.put("/levels")
    async def put_levels(body: LevelsIn) -> Response:
        """Set levels as if the channel had sold units (or a merchant edited them)."""
        for item in body.items:
            book.set_level(item.sku, item.quantity, source="channel")
        return json_response({"levels": book.levels()})

    @router.get("/history")
    async def get_history(sku: str | None = None) -> Response:
        return json_response({"history": [c.wire() for c in book.history(sku)]})

    @router.post("/list")
    async def post_list(body: SkusIn) -> Response:
        book.list_skus(body.skus, body.quantity)
        return json_response({"levels": book.levels()})

    @router.post("/unlist")
    async def post_unlist(body: SkusIn) -> Response:
        book.unlist_skus(body.skus)
        return json_response({"levels": book.levels()})

    @router.get("/counters")
    async def get_counters() -> Response:
        return json_response(book.counters())

    @router.post("/reset")
    async def post_reset() -> Response:
        book.reset()
        return json_response({"reset": True})

    return router
