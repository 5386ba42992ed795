"""The sandbox Amazon: SP-API Listings Items 2021-08-01, the fulfillment availability part.

* ``PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=...`` with
  ``{"productType", "patches": [...]}``: a patch of ``/attributes/fulfillment_availability``
  sets the SKU's quantity (other attributes are accepted and ignored). Answers
  ``{"sku", "status": "ACCEPTED"|"INVALID", "submissionId", "issues"}``; 404 for a SKU
  Amazon does not list; 400 for a body that is not a listings patch;
* ``GET`` of the same resource with ``includedData`` (``summaries``,
  ``fulfillmentAvailability``): the listing, 404 when there is none.

Like Amazon: the access token in ``x-amz-access-token`` (403 when wrong), errors as
``{"errors": [{"code", "message", "details"}]}``, and a token bucket per operation
(``patchListingsItem`` 5 requests a second, burst 5; ``getListingsItem`` 5, burst 10)
answering 429 ``QuotaExceeded``, here with ``Retry-After`` (Amazon sends none).
Unlike Amazon, an accepted patch applies at once (Amazon processes it in minutes).

State lives in :class:`AmazonState` (a :class:`ChannelBook`).
"""

from __future__ import annotations

import secrets
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Request, params
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from stockkeeper_sandbox.channel_book import ChannelBook, book_router, utcnow
from stockkeeper_sandbox.server import (
    FaultController,
    Faults,
    TokenBucket,
    faulty_app,
    format_retry_after,
    json_response,
)

API = "/listings/2021-08-01/items"
ATTRIBUTE_PATH = "/attributes/fulfillment_availability"
DEFAULT_MARKETPLACE = "ATVPDKIKX0DER"


def _errors(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = {"errors": [{"code": code, "message": message, "details": ""}]}
    return json_response(body, status, dict(headers or {}))


class PatchOperation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    op: Literal["add", "replace", "merge", "delete"]
    path: str = Field(min_length=1)
    value: list[dict[str, Any]] | None = None


class PatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    productType: str = Field(min_length=1)
    patches: list[PatchOperation] = Field(min_length=1)


class Availability(BaseModel):
    """One ``fulfillment_availability`` value (its other keys are allowed and ignored)."""

    model_config = ConfigDict(extra="allow")
    fulfillment_channel_code: str = Field(min_length=1)
    quantity: int = Field(ge=0, strict=True)


class AmazonState(ChannelBook):
    """One seller's listings: the quantity of each SKU's fulfillment channel.

    Counters: ``patches``, ``accepted``, ``invalid``, ``not_found``, ``reads``,
    ``throttled`` (429s of the rate limit).
    """

    def __init__(
        self,
        *,
        seller_id: str | None = None,
        marketplace_ids: Iterable[str] | None = None,
        patch_rate: float = 5.0,
        patch_burst: float = 5.0,
        get_rate: float = 5.0,
        get_burst: float = 10.0,
        auto_list: bool = True,
        unlisted: Iterable[str] = (),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(auto_list=auto_list, unlisted=unlisted, clock=clock)
        self.seller_id = seller_id
        self.marketplace_ids = frozenset(marketplace_ids or ())
        self._product_types: dict[str, str] = {}
        self._codes: dict[str, str] = {}
        self.limit_rates(patch_rate, patch_burst, get_rate, get_burst)

    def limit_rates(
        self, patch_rate: float, patch_burst: float, get_rate: float, get_burst: float
    ) -> None:
        """Set (and refill) the rate limits of the two operations."""
        with self.lock:
            self.rates = {"patch": (patch_rate, patch_burst), "get": (get_rate, get_burst)}
            self._buckets = {op: TokenBucket(r, b) for op, (r, b) in self.rates.items()}

    def admit(self, operation: Literal["patch", "get"]) -> float:
        """Take a token for ``operation``: 0.0, or the seconds until one is there."""
        with self.lock:
            wait = self._buckets[operation].take()
            if wait > 0:
                self.count("throttled")
            return wait

    def on_unlisted(self, sku: str) -> None:
        self._product_types.pop(sku, None)
        self._codes.pop(sku, None)

    def on_reset(self) -> None:
        self._product_types.clear()
        self._codes.clear()
        self.limit_rates(*self.rates["patch"], *self.rates["get"])

    def patch(self, sku: str, request: PatchRequest) -> dict[str, Any] | None:
        """Apply a listings patch; the submission, or None when the SKU is not listed."""
        with self.lock:
            self.count("patches")
            if not self.listed(sku):
                self.count("not_found")
                return None
            listed_as = self._product_types.setdefault(sku, request.productType)
            issues = []
            if listed_as != request.productType:
                message = f"productType {request.productType} is not the listing's {listed_as}"
                issues.append(_issue("PRODUCT_TYPE_MISMATCH", message, "productType"))
            values: list[Availability] = []
            for patch in request.patches:
                if patch.path == ATTRIBUTE_PATH:
                    values, problem = _availability(patch)
                    if problem:
                        issues.append(problem)
            submission_id = uuid.uuid4().hex
            submission = {"sku": sku, "submissionId": submission_id, "issues": issues}
            if issues:
                self.count("invalid")
                return submission | {"status": "INVALID"}
            for value in values:
                self._codes[sku] = value.fulfillment_channel_code
                self.set_level(sku, value.quantity, source="push", ref=submission_id)
            self.count("accepted")
            return submission | {"status": "ACCEPTED"}

    def item(self, sku: str, marketplace_id: str, included: set[str]) -> dict[str, Any] | None:
        """The listing as getListingsItem shows it; None when the SKU is not listed."""
        with self.lock:
            self.count("reads")
            quantity = self.level(sku) if self.listed(sku, auto=False) else None
            if quantity is None:
                return None
            item: dict[str, Any] = {"sku": sku}
            if "summaries" in included:
                item["summaries"] = [
                    {
                        "marketplaceId": marketplace_id,
                        "asin": f"B0{zlib.crc32(sku.encode()) % 10**8:08d}",
                        "productType": self._product_types.get(sku, "PRODUCT"),
                        "conditionType": "new_new",
                        "status": ["BUYABLE"] if quantity > 0 else ["DISCOVERABLE"],
                        "itemName": sku,
                    }
                ]
            if "fulfillmentAvailability" in included:
                code = self._codes.get(sku, "DEFAULT")
                item["fulfillmentAvailability"] = [
                    {"fulfillmentChannelCode": code, "quantity": quantity}
                ]
            return item


def _issue(code: str, message: str, attribute: str) -> dict[str, Any]:
    return {"code": code, "message": message, "severity": "ERROR", "attributeNames": [attribute]}


def _availability(patch: PatchOperation) -> tuple[list[Availability], dict[str, Any] | None]:
    """The values of a fulfillment_availability patch, or the issue with it."""
    name = "fulfillment_availability"
    if patch.op == "delete":
        return [], _issue("UNSUPPORTED_OPERATION", "the sandbox cannot delete availability", name)
    try:
        values = [Availability.model_validate(v) for v in patch.value or []]
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        return [], _issue("INVALID_VALUE", f"{name}.{where}: {first['msg']}", name)
    if not values:
        return [], _issue("MISSING_VALUE", f"{name} needs a value", name)
    for value in values:
        if value.fulfillment_channel_code.startswith("AMAZON_"):
            message = "Amazon sets the quantity of its own fulfillment network"
            return [], _issue("FBA_QUANTITY", message, name)
    return values, None


def access_token_required(token: str | None) -> params.Depends:
    """With a token set, ``x-amz-access-token: <token>`` or 403 as Amazon says it."""

    async def authorized(x_amz_access_token: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            return
        if not secrets.compare_digest((x_amz_access_token or "").encode(), token.encode()):
            raise HTTPException(403, "Access to requested resource is denied.")

    guard: params.Depends = Depends(authorized)
    return guard


def create_app(
    state: AmazonState,
    token: str | None = None,
    faults: Faults | FaultController | None = None,
) -> FastAPI:
    """The Listings Items API over ``state``, with the fault middleware and the control
    routes; the controller is at ``app.state.faults``."""
    app = faulty_app("sandbox Amazon", faults)
    app.state.amazon = state
    app.include_router(book_router(state))
    auth = [access_token_required(token)]

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {403: "Unauthorized", 404: "NOT_FOUND", 429: "QuotaExceeded"}
        code = codes.get(exc.status_code, "InvalidInput")
        return _errors(exc.status_code, code, str(exc.detail), exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _errors(400, "InvalidInput", f"{where}: {first['msg']}")

    def check(seller_id: str, marketplace_ids: str, operation: Literal["patch", "get"]) -> str:
        """The first marketplace id; raises what Amazon answers to a bad request."""
        wait = state.admit(operation)
        if wait > 0:
            message = "You exceeded your quota for the requested resource."
            raise HTTPException(429, message, headers={"Retry-After": format_retry_after(wait)})
        if state.seller_id is not None and seller_id != state.seller_id:
            raise HTTPException(403, "Access to requested resource is denied.")
        ids = [m for m in marketplace_ids.split(",") if m]
        unknown = [m for m in ids if state.marketplace_ids and m not in state.marketplace_ids]
        if not ids or unknown:
            raise HTTPException(400, f"invalid marketplaceIds: {marketplace_ids!r}")
        return ids[0]

    @app.patch(API + "/{seller_id}/{sku:path}", dependencies=auth)
    async def patch_listing(
        seller_id: str, sku: str, body: PatchRequest, marketplaceIds: str
    ) -> Response:
        check(seller_id, marketplaceIds, "patch")
        submission = state.patch(sku, body)
        if submission is None:
            return _errors(404, "NOT_FOUND", f"SKU '{sku}' not found in marketplace")
        return json_response(submission, headers={"x-amzn-RateLimit-Limit": "5.0"})

    @app.get(API + "/{seller_id}/{sku:path}", dependencies=auth)
    async def get_listing(
        seller_id: str, sku: str, marketplaceIds: str, includedData: str = "summaries"
    ) -> Response:
        marketplace = check(seller_id, marketplaceIds, "get")
        item = state.item(sku, marketplace, set(includedData.split(",")))
        if item is None:
            return _errors(404, "NOT_FOUND", f"SKU '{sku}' not found in marketplace {marketplace}")
        return json_response(item)

    return app
