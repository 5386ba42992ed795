"""The sandbox Shopify: the slice of the Admin GraphQL API a stock channel uses.

``POST /admin/api/{version}/graphql.json`` with ``X-Shopify-Access-Token`` takes
``{"query", "variables"}`` (decoded and answered in :mod:`.shopify_graphql`, in Shopify's
shape). What it enforces, like Shopify:

* a cost bucket per app (``maximumAvailable``, ``restoreRate``; defaults of a standard
  plan): a call whose requested cost is not available is answered ``THROTTLED`` (HTTP
  200), the unused part of a call's requested cost is refunded, a query over 1000 points
  is ``MAX_COST_EXCEEDED``;
* ``inventorySetQuantities`` all or nothing: ``changeFromQuantity`` is required (null
  opts out of the check) and compared with what is shown; any ``userErrors`` (stale,
  unknown item, not stocked at the location, negative quantity) and nothing is applied;
* the ``@idempotent`` key the mutation requires: a repeat with the same key and input
  is answered as the first time and applied once; the same key with another input is
  ``IDEMPOTENCY_KEY_PARAMETER_MISMATCH``.

State lives in :class:`ShopifyState` (a :class:`ChannelBook` plus inventory item gids).
A shop may have several locations (``location_ids``): the first is the book's (its
levels, history and control routes), the others keep their own level per item; every
listed item is stocked at every location unless :meth:`ShopifyState.unstock` says so.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import orjson
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from stockkeeper_sandbox.channel_book import ChannelBook, Source, book_router, utcnow
from stockkeeper_sandbox.server import (
    CONTROL_PREFIX,
    FaultController,
    Faults,
    faulty_app,
    json_response,
)
from stockkeeper_sandbox.shopify_graphql import (
    GraphQLRequest,
    QuantityIn,
    SetInput,
    access_token_required,
    answer,
)

DEFAULT_LOCATION = "gid://shopify/Location/1"
ITEM_GID = "gid://shopify/InventoryItem/"
# A standard plan restores 100 points a second; the bucket holds 20 seconds of that.
DEFAULT_BUCKET = 2000.0
DEFAULT_RESTORE_RATE = 100.0
MAX_QUANTITY = 1_000_000_000
IDEMPOTENCY_KEYS_KEPT = 10_000
REASONS = frozenset(
    {
        "correction",
        "cycle_count_available",
        "damaged",
        "movement_canceled",
        "movement_created",
        "movement_received",
        "movement_updated",
        "other",
        "promotion",
        "quality_control",
        "received",
        "reservation_created",
        "reservation_deleted",
        "reservation_updated",
        "restock",
        "safety_stock",
        "shrinkage",
    }
)
USER_ERRORS = {  # inventorySetQuantities userErrors the sandbox gives, as Shopify words them
    "CHANGE_FROM_QUANTITY_STALE": "The changeFromQuantity value does not match persisted value.",
    "IDEMPOTENCY_KEY_PARAMETER_MISMATCH": (
        "The same idempotency key cannot be used with different operation parameters."
    ),
    "INVALID_INVENTORY_ITEM": "The specified inventory item could not be found.",
    "INVALID_LOCATION": "The specified location could not be found.",
    "INVALID_NAME": "The sandbox sets the 'available' quantity only.",
    "INVALID_QUANTITY_NEGATIVE": "The quantity can't be negative.",
    "INVALID_QUANTITY_TOO_HIGH": "The total quantity can't be higher than 1,000,000,000.",
    "INVALID_REASON": "The specified reason is invalid.",
    "INVALID_REFERENCE_DOCUMENT": "The specified reference document is invalid.",
    "ITEM_NOT_STOCKED_AT_LOCATION": "The specified inventory item is not stocked at the location.",
    "NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR": (
        "The combination of inventoryItemId and locationId must be unique."
    ),
}


class LocationLevelIn(BaseModel):
    """The shop's own change of one SKU at one location (a sale, a count)."""

    model_config = ConfigDict(extra="forbid")
    sku: str = Field(min_length=1)
    location_id: str
    quantity: int = Field(ge=0, le=MAX_QUANTITY)


class BucketIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    maximum_available: float = Field(gt=0)
    restore_rate: float = Field(gt=0)


def _user_error(code: str, *field: str | int) -> dict[str, Any]:
    return {"code": code, "field": [str(f) for f in field], "message": USER_ERRORS[code]}


class ShopifyState(ChannelBook):
    """A shop's inventory at one location, its cost bucket and idempotency keys.

    Inventory items are created with a listing (``gid://shopify/InventoryItem/<n>``);
    an unlisted SKU's item is deleted, so a gid cached before is then unknown. An item
    can exist but not be stocked at the location (:meth:`unstock`).
    Counters: ``calls``, ``throttled``, ``lookups``, ``reads``, ``mutations``,
    ``applied`` (mutations that changed something), ``stale``, ``user_errors``,
    ``replayed`` (answered from an idempotency key).
    """

    def __init__(
        self,
        *,
        location_id: str = DEFAULT_LOCATION,
        location_ids: Sequence[str] = (),
        bucket_size: float = DEFAULT_BUCKET,
        restore_rate: float = DEFAULT_RESTORE_RATE,
        auto_list: bool = True,
        unlisted: Iterable[str] = (),
        clock: Callable[[], datetime] = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        # The shop's locations: the first is the book's; the others keep their own levels.
        self.location_ids = list(dict.fromkeys(location_ids or [location_id]))
        self.location_id = self.location_ids[0]
        self._at: dict[str, dict[str, int]] = {loc: {} for loc in self.location_ids[1:]}
        self._monotonic = monotonic
        self._next_id = 1000
        self._gids: dict[str, str] = {}
        self._skus: dict[str, str] = {}
        self._unstocked: set[str] = set()
        self._unstocked_at: set[tuple[str, str]] = set()
        self._keys: OrderedDict[str, tuple[bytes, dict[str, Any]]] = OrderedDict()
        self._groups = 0
        super().__init__(auto_list=auto_list, unlisted=unlisted, clock=clock)
        self.configure_bucket(bucket_size, restore_rate)

    # -- items ---------------------------------------------------------------------

    def on_listed(self, sku: str) -> None:
        self._next_id += 1
        gid = f"{ITEM_GID}{self._next_id}"
        self._gids[sku], self._skus[gid] = gid, sku

    def on_unlisted(self, sku: str) -> None:
        gid = self._gids.pop(sku, None)
        if gid is not None:
            self._skus.pop(gid, None)
        for levels in self._at.values():
            levels.pop(sku, None)

    def on_reset(self) -> None:
        self._gids.clear()
        self._skus.clear()
        self._unstocked.clear()
        self._unstocked_at.clear()
        for levels in self._at.values():
            levels.clear()
        self._keys.clear()
        self.configure_bucket(self.maximum_available, self.restore_rate)

    def gid(self, sku: str) -> str | None:
        """The inventory item gid of ``sku``, if it is listed."""
        with self.lock:
            return self._gids.get(sku)

    def unstock(self, skus: Iterable[str], location_id: str | None = None) -> None:
        """The items of ``skus`` exist but are not stocked at ``location_id`` (None: at
        any location)."""
        with self.lock:
            if location_id is None:
                self._unstocked.update(skus)
            else:
                self._unstocked_at.update((sku, location_id) for sku in skus)

    def stock(self, skus: Iterable[str]) -> None:
        with self.lock:
            self._unstocked.difference_update(skus)

    # -- levels per location ---------------------------------------------------------

    def level_at(self, sku: str, location_id: str) -> int | None:
        """What ``location_id`` shows for ``sku``; None: no such location, item or
        stock there."""
        with self.lock:
            if location_id not in self.location_ids or sku in self._unstocked:
                return None
            if (sku, location_id) in self._unstocked_at:
                return None
            if sku not in self._gids:
                return None
            if location_id == self.location_id:
                return self.level(sku)
            return self._at[location_id].get(sku, 0)

    def set_level_at(
        self, sku: str, location_id: str, quantity: int, source: Source = "channel"
    ) -> None:
        """Set what ``location_id`` shows (the shop's own change, unless ``source``)."""
        with self.lock:
            if location_id == self.location_id:
                self.set_level(sku, quantity, source=source)
                return
            self.listed(sku)
            self._at[location_id][sku] = quantity

    def levels_by_location(self) -> dict[str, dict[str, int]]:
        """Every location's levels of the listed, stocked items."""
        with self.lock:
            out = {self.location_id: self.levels()}
            for loc, levels in self._at.items():
                out[loc] = {
                    sku: levels.get(sku, 0) for sku in self._gids if sku not in self._unstocked
                }
            return out

    # -- the cost bucket -----------------------------------------------------------

    def configure_bucket(self, maximum_available: float, restore_rate: float) -> None:
        """Resize the cost bucket (full again)."""
        with self.lock:
            self.maximum_available = maximum_available
            self.restore_rate = restore_rate
            self._points = self._low_water = maximum_available
            self._stamp = self._monotonic()

    def _level(self) -> float:
        now = self._monotonic()
        self._points = min(
            self.maximum_available, self._points + (now - self._stamp) * self.restore_rate
        )
        self._stamp = now
        return self._points

    def throttle_status(self) -> dict[str, float]:
        with self.lock:
            return {
                "maximumAvailable": self.maximum_available,
                "currentlyAvailable": round(self._level(), 3),
                "restoreRate": self.restore_rate,
            }

    def charge(self, requested: float) -> bool:
        """Take ``requested`` points if they are available (else nothing: throttled)."""
        with self.lock:
            self.count("calls")
            if self._level() < requested:
                self.count("throttled")
                return False
            self._points -= requested
            self._low_water = min(self._low_water, self._points)
            return True

    def low_water(self) -> float:
        """The fewest points the bucket held after a charge since it was configured: how
        close the calls came to a THROTTLED answer."""
        with self.lock:
            return self._low_water

    def refund(self, points: float) -> None:
        with self.lock:
            self._points = min(self.maximum_available, self._level() + max(0.0, points))

    # -- the operations ------------------------------------------------------------

    def items_by_sku(self, skus: list[str]) -> list[dict[str, Any]]:
        """The items a search for ``skus`` finds (auto-listing the SKUs it names)."""
        with self.lock:
            self.count("lookups")
            return [
                {"id": self._gids[sku], "sku": sku}
                for sku in dict.fromkeys(skus)
                if self.listed(sku)
            ]

    def available(self, ids: list[str], location_id: str) -> list[dict[str, Any] | None]:
        """``nodes(ids:)`` with each item's available quantity at ``location_id``."""
        with self.lock:
            self.count("reads")
            nodes: list[dict[str, Any] | None] = []
            for gid in ids:
                sku = self._skus.get(gid)
                if sku is None:
                    nodes.append(None)
                    continue
                level = self.level_at(sku, location_id)
                quantities = [{"name": "available", "quantity": level}]
                nodes.append(
                    {
                        "id": gid,
                        "sku": sku,
                        "inventoryLevel": {"quantities": quantities} if level is not None else None,
                    }
                )
            return nodes

    def levels_at(self, ids: list[str], aliases: Mapping[str, str]) -> list[dict[str, Any] | None]:
        """``nodes(ids:)`` with one aliased ``inventoryLevel(locationId:)`` per entry of
        ``aliases`` (alias -> location gid); an alias is null where the item is not
        stocked at that location (or there is no such location)."""
        with self.lock:
            self.count("reads")
            nodes: list[dict[str, Any] | None] = []
            for gid in ids:
                sku = self._skus.get(gid)
                if sku is None:
                    nodes.append(None)
                    continue
                node: dict[str, Any] = {"id": gid, "sku": sku}
                for alias, location_id in aliases.items():
                    level = self.level_at(sku, location_id)
                    node[alias] = (
                        None
                        if level is None
                        else {"quantities": [{"name": "available", "quantity": level}]}
                    )
                nodes.append(node)
            return nodes

    def set_quantities(self, data: SetInput, key: str) -> dict[str, Any]:
        """``inventorySetQuantities``: all of it or nothing, once per idempotency key."""
        fingerprint = orjson.dumps(data.model_dump(), option=orjson.OPT_SORT_KEYS)
        with self.lock:
            self.count("mutations")
            kept = self._keys.get(key)
            if kept is not None:
                if kept[0] != fingerprint:
                    error = _user_error("IDEMPOTENCY_KEY_PARAMETER_MISMATCH")
                    return {"inventoryAdjustmentGroup": None, "userErrors": [error]}
                self.count("replayed")
                return kept[1]
            payload = self._set(data)
            self._keys[key] = (fingerprint, payload)
            while len(self._keys) > IDEMPOTENCY_KEYS_KEPT:
                self._keys.popitem(last=False)
            return payload

    def _set(self, data: SetInput) -> dict[str, Any]:
        errors = self._check(data)
        if errors:
            self.count("user_errors")
            self.count("stale", sum(e["code"] == "CHANGE_FROM_QUANTITY_STALE" for e in errors))
            return {"inventoryAdjustmentGroup": None, "userErrors": errors}
        changes = []
        for q in data.quantities:
            sku = self._skus[q.inventoryItemId]
            before = self.level_at(sku, q.locationId) or 0
            if q.quantity == before:
                continue
            if q.locationId == self.location_id:
                self.set_level(sku, q.quantity, source="push", ref=data.referenceDocumentUri)
            else:
                self._at[q.locationId][sku] = q.quantity
            self.count("location_sets")
            changes.append(
                {
                    "name": data.name,
                    "delta": q.quantity - before,
                    "sku": sku,
                    "location": q.locationId,
                }
            )
        if not changes:
            # Nothing changed: Shopify answers without an adjustment group.
            return {"inventoryAdjustmentGroup": None, "userErrors": []}
        self.count("applied")
        self._groups += 1
        group = {"id": f"gid://shopify/InventoryAdjustmentGroup/{self._groups}", "changes": changes}
        return {"inventoryAdjustmentGroup": group, "userErrors": []}

    def _check(self, data: SetInput) -> list[dict[str, Any]]:
        errors = []
        if data.name != "available":
            errors.append(_user_error("INVALID_NAME", "input", "name"))
        if data.reason not in REASONS:
            errors.append(_user_error("INVALID_REASON", "input", "reason"))
        uri = data.referenceDocumentUri
        if uri is not None and not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", uri):
            errors.append(
                _user_error("INVALID_REFERENCE_DOCUMENT", "input", "referenceDocumentUri")
            )
        seen: set[tuple[str, str]] = set()
        for i, q in enumerate(data.quantities):
            problem = self._problem(q, seen)
            if problem is not None:
                code, *field = problem
                errors.append(_user_error(code, "input", "quantities", i, *field))
            seen.add((q.inventoryItemId, q.locationId))
        return errors

    def _problem(self, q: QuantityIn, seen: set[tuple[str, str]]) -> tuple[str, ...] | None:
        """What is wrong with one quantity: its error code and field, or None."""
        sku = self._skus.get(q.inventoryItemId)
        if q.locationId not in self.location_ids:
            return "INVALID_LOCATION", "locationId"
        if sku is None:
            return "INVALID_INVENTORY_ITEM", "inventoryItemId"
        if sku in self._unstocked or (sku, q.locationId) in self._unstocked_at:
            return "ITEM_NOT_STOCKED_AT_LOCATION", "inventoryItemId"
        if (q.inventoryItemId, q.locationId) in seen:
            return ("NO_DUPLICATE_INVENTORY_ITEM_ID_GROUP_ID_PAIR",)
        if q.quantity < 0:
            return "INVALID_QUANTITY_NEGATIVE", "quantity"
        if q.quantity > MAX_QUANTITY:
            return "INVALID_QUANTITY_TOO_HIGH", "quantity"
        shown = self.level_at(sku, q.locationId) or 0
        if q.changeFromQuantity is not None and q.changeFromQuantity != shown:
            return "CHANGE_FROM_QUANTITY_STALE", "changeFromQuantity"
        return None


def create_app(
    state: ShopifyState,
    token: str | None = None,
    faults: Faults | FaultController | None = None,
) -> FastAPI:
    """The GraphQL endpoint over ``state``, with the fault middleware and the control
    routes; the controller is at ``app.state.faults``."""
    app = faulty_app("sandbox Shopify", faults)
    app.state.shopify = state
    app.include_router(book_router(state))

    @app.post("/admin/api/{version}/graphql.json", dependencies=[access_token_required(token)])
    async def graphql(version: str, request: Request) -> Response:
        try:
            body = GraphQLRequest.model_validate_json(await request.body())
        except ValidationError:
            return json_response({"errors": "the body must be JSON: {query, variables}"}, 400)
        return json_response(answer(state, body))

    @app.get(f"{CONTROL_PREFIX}/items", tags=["sandbox"])
    async def items() -> Response:
        with state.lock:
            listed = {sku: state.gid(sku) for sku in state.levels()}
        return json_response(
            {
                "items": listed,
                "location_id": state.location_id,
                "location_ids": state.location_ids,
                "levels": state.levels_by_location(),
            }
        )

    @app.put(f"{CONTROL_PREFIX}/locations/levels", tags=["sandbox"])
    async def put_location_level(body: LocationLevelIn) -> Response:
        if body.location_id not in state.location_ids:
            return json_response({"error": f"no location {body.location_id}"}, 404)
        state.set_level_at(body.sku, body.location_id, body.quantity)
        return json_response({"levels": state.levels_by_location()})

    @app.get(f"{CONTROL_PREFIX}/bucket", tags=["sandbox"])
    async def get_bucket() -> Response:
        return json_response(state.throttle_status() | {"lowWater": state.low_water()})

    @app.put(f"{CONTROL_PREFIX}/bucket", tags=["sandbox"])
    async def put_bucket(body: BucketIn) -> Response:
        state.configure_bucket(body.maximum_available, body.restore_rate)
        return json_response(state.throttle_status())

    return app


def graphql_url(base_url: str, version: str = "2026-04") -> str:
    """The GraphQL endpoint of a sandbox served at ``base_url``."""
    return f"{base_url.rstrip('/')}/admin/api/{version}/graphql.json"
