"""The sandbox Amazon: SP-API Listings Items 2021-08-01, the fulfillment availability part.

* ``PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=...`` with
  ``{"productType", "patches": [...]}``: a patch of ``/attributes/fulfillment_availability``
  sets the SKU's quantity (other attributes are accepted and ignored); ``replace`` sets
  the whole attribute value, ``merge`` merges each value into the one of the same
  ``fulfillment_channel_code`` (its ``lead_time_to_ship_max_days``, ``restock_date``...
  stay). Answers ``{"sku", "status": "ACCEPTED"|"INVALID", "submissionId", "issues"}``
  (issues as the model has them, with ``categories``); for a SKU Amazon does not list,
  no 404 (patchListingsItem documents none): an ``INVALID`` submission naming the
  required attribute a new listing lacks (``90220``, ``MISSING_ATTRIBUTE``); 400 for a
  body that is not a listings patch;
* ``GET`` of the same resource with ``includedData`` (``summaries``, ``attributes``,
  ``fulfillmentAvailability``): the listing, 404 when there is none;
* ``POST /auth/o2/token`` (Login with Amazon), when :meth:`AmazonState.use_lwa` turned it
  on: a form-encoded refresh-token grant answered with a short-lived access token; the
  Listings calls then take only unexpired tokens it issued (403 "The access token you
  provided has expired." for an expired one).

* the Feeds API 2021-06-30 for ``JSON_LISTINGS_FEED``: ``POST /feeds/2021-06-30/documents``
  (createFeedDocument) answers an upload URL on the sandbox itself
  (``PUT /_sandbox/uploads/{id}``, no token, as a presigned URL); ``POST
  /feeds/2021-06-30/feeds`` (createFeed, its own token bucket: Amazon's 0.0083 a second,
  burst 15, unless configured) queues the feed; ``GET /feeds/2021-06-30/feeds/{feedId}``
  (getFeed) shows it ``IN_QUEUE`` until ``feed_delay_s`` passed, then processes it there
  and then: each message's patches applied as patchListingsItem applies them, the
  issues collected into a processing report (listings-feed-processing-report-schema-v2)
  and the feed ``DONE`` with its ``resultFeedDocumentId``; ``GET
  /feeds/2021-06-30/documents/{id}`` (getFeedDocument) answers the report's download
  URL (``GET /_sandbox/downloads/{id}``, gzipped with ``compressionAlgorithm: GZIP``
  when :attr:`AmazonState.gzip_reports`). :meth:`AmazonState.fail_next_feeds` makes the
  next feeds ``FATAL``, nothing applied.

Like Amazon: the access token in ``x-amz-access-token`` (403 when wrong), errors as
``{"errors": [{"code", "message", "details"}]}``, and a token bucket per operation
(``patchListingsItem`` 5 requests a second, burst 5; ``getListingsItem`` 5, burst 10)
answering 429 ``QuotaExceeded``, here with ``Retry-After`` (Amazon sends none).
Unlike Amazon, an accepted patch applies at once (Amazon processes it in minutes).

State lives in :class:`AmazonState` (a :class:`ChannelBook`).
"""

from __future__ import annotations

import gzip
import json
import secrets
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

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
DENIED = "Access to requested resource is denied."


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


FEEDS = "/feeds/2021-06-30"
FeedStatus = Literal["CANCELLED", "DONE", "FATAL", "IN_PROGRESS", "IN_QUEUE"]


@dataclass(slots=True)
class Feed:
    """One feed as createFeed queued it; processed on the first getFeed after its delay."""

    feed_id: str
    document_id: str
    marketplace_ids: list[str]
    created: datetime
    due: float  # monotonic: when it is processed
    doomed: bool  # fail_next_feeds: FATAL, nothing applied
    status: FeedStatus = "IN_QUEUE"
    ended: datetime | None = None
    result_id: str | None = None


class LoginWithAmazon:
    """The sandbox LWA: one app (client id and secret) and the refresh tokens sellers
    gave it; issues access tokens living ``lifetime_s``. Counters on the state:
    ``token_exchanges``, ``token_refused``, ``token_expired`` (calls with an expired
    token)."""

    def __init__(
        self, client_id: str, client_secret: str, refresh_tokens: Iterable[str], lifetime_s: float
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.refresh_tokens = set(refresh_tokens)
        self.lifetime_s = lifetime_s
        self.issued: dict[str, float] = {}  # access token -> when it expires (monotonic)


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
        feed_rate: float = 0.0083,
        feed_burst: float = 15.0,
        feed_delay_s: float = 0.0,
        auto_list: bool = True,
        unlisted: Iterable[str] = (),
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__(auto_list=auto_list, unlisted=unlisted, clock=clock)
        self.seller_id = seller_id
        self.marketplace_ids = frozenset(marketplace_ids or ())
        self._product_types: dict[str, str] = {}
        self._codes: dict[str, str] = {}
        # The fulfillment_availability attribute per SKU: its values by channel code.
        self._offers: dict[str, dict[str, dict[str, Any]]] = {}
        self._created: dict[str, datetime] = {}
        self.lwa: LoginWithAmazon | None = None
        self.feed_rate = (feed_rate, feed_burst)
        self.feed_delay_s = feed_delay_s
        self.gzip_reports = False
        self._uploads: dict[str, bytes | None] = {}  # feed document id -> its content
        self._reports: dict[str, bytes] = {}  # result document id -> the report
        self._feeds: dict[str, Feed] = {}
        self._fail_feeds = 0
        self.limit_rates(patch_rate, patch_burst, get_rate, get_burst)

    # -- Login with Amazon -----------------------------------------------------------

    def use_lwa(
        self,
        client_id: str,
        client_secret: str,
        refresh_tokens: Iterable[str],
        lifetime_s: float = 3600.0,
    ) -> None:
        """Require access tokens from the sandbox's own LWA endpoint from now on."""
        with self.lock:
            self.lwa = LoginWithAmazon(client_id, client_secret, refresh_tokens, lifetime_s)

    def exchange(self, form: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
        """A refresh-token grant: (status, body) as LWA answers it."""
        with self.lock:
            lwa = self.lwa
            if lwa is None:
                return 404, {"error": "not_found", "error_description": "LWA is off"}
            if form.get("grant_type") != "refresh_token":
                self.count("token_refused")
                return 400, {
                    "error": "unsupported_grant_type",
                    "error_description": "The authorization grant type is not supported",
                }
            if form.get("client_id") != lwa.client_id or not secrets.compare_digest(
                form.get("client_secret", "").encode(), lwa.client_secret.encode()
            ):
                self.count("token_refused")
                return 401, {
                    "error": "invalid_client",
                    "error_description": "Client authentication failed",
                }
            if form.get("refresh_token") not in lwa.refresh_tokens:
                self.count("token_refused")
                return 400, {
                    "error": "invalid_grant",
                    "error_description": "The request has an invalid grant parameter : "
                    "refresh_token",
                }
            self.count("token_exchanges")
            token = "Atza|" + secrets.token_urlsafe(24)
            lwa.issued[token] = time.monotonic() + lwa.lifetime_s
            return 200, {
                "access_token": token,
                "refresh_token": form["refresh_token"],
                "token_type": "bearer",
                "expires_in": lwa.lifetime_s,
            }

    def expire_tokens(self) -> None:
        """Make every access token issued so far expired (an hour passing, at once)."""
        with self.lock:
            if self.lwa is not None:
                self.lwa.issued = dict.fromkeys(self.lwa.issued, 0.0)

    def revoke(self, refresh_token: str) -> None:
        """The seller revoked the app's authorisation: the refresh token is refused."""
        with self.lock:
            if self.lwa is not None:
                self.lwa.refresh_tokens.discard(refresh_token)

    def check_access_token(self, token: str | None) -> str | None:
        """Why an LWA-issued ``token`` is refused (None: it is good)."""
        with self.lock:
            assert self.lwa is not None
            expires = self.lwa.issued.get(token or "")
            if expires is None:
                return "Access to requested resource is denied."
            if time.monotonic() >= expires:
                self.count("token_expired")
                return "The access token you provided has expired."
            return None

    # -- listings --------------------------------------------------------------------

    def offer(self, sku: str) -> list[dict[str, Any]]:
        """The SKU's fulfillment_availability attribute as the seller has it."""
        with self.lock:
            return [dict(v) for v in self._offers.get(sku, {}).values()]

    def set_offer(self, sku: str, values: Iterable[Mapping[str, Any]]) -> None:
        """Set the SKU's fulfillment_availability (as the seller would in Seller Central),
        listing it; its quantity becomes the first value's."""
        with self.lock:
            offers = {str(v["fulfillment_channel_code"]): dict(v) for v in values}
            self._offers[sku] = offers
            for code, value in offers.items():
                self._codes[sku] = code
                self.set_level(sku, int(value.get("quantity", 0)), source="channel")
                break

    def limit_rates(
        self, patch_rate: float, patch_burst: float, get_rate: float, get_burst: float
    ) -> None:
        """Set (and refill) the rate limits of the two operations."""
        with self.lock:
            self.rates = {
                "patch": (patch_rate, patch_burst),
                "get": (get_rate, get_burst),
                "feed": self.feed_rate,
            }
            self._buckets = {op: TokenBucket(r, b) for op, (r, b) in self.rates.items()}

    def limit_feeds(self, rate: float, burst: float) -> None:
        """Set (and refill) createFeed's rate limit."""
        with self.lock:
            self.feed_rate = (rate, burst)
            self.rates["feed"] = self.feed_rate
            self._buckets["feed"] = TokenBucket(rate, burst)

    def admit(self, operation: Literal["patch", "get", "feed"]) -> float:
        """Take a token for ``operation``: 0.0, or the seconds until one is there."""
        with self.lock:
            wait = self._buckets[operation].take()
            if wait > 0:
                self.count("throttled")
            return wait

    def on_listed(self, sku: str) -> None:
        self._created[sku] = self._clock()

    def on_unlisted(self, sku: str) -> None:
        self._created.pop(sku, None)
        self._product_types.pop(sku, None)
        self._codes.pop(sku, None)
        self._offers.pop(sku, None)

    def on_reset(self) -> None:
        self._product_types.clear()
        self._codes.clear()
        self._offers.clear()
        self._created.clear()
        self._uploads.clear()
        self._reports.clear()
        self._feeds.clear()
        self._fail_feeds = 0
        self.limit_rates(*self.rates["patch"], *self.rates["get"])

    # -- feeds -------------------------------------------------------------------------

    def fail_next_feeds(self, n: int) -> None:
        """The next ``n`` feeds created end ``FATAL``, nothing of them applied."""
        with self.lock:
            self._fail_feeds = n

    def feeds(self) -> list[Feed]:
        with self.lock:
            return list(self._feeds.values())

    def create_document(self) -> str:
        with self.lock:
            document_id = "amzn1.tortuga.4." + uuid.uuid4().hex
            self._uploads[document_id] = None
            return document_id

    def upload(self, document_id: str, content: bytes) -> bool:
        """The document's content, PUT to its upload URL; False for an unknown one."""
        with self.lock:
            if document_id not in self._uploads:
                return False
            self._uploads[document_id] = content
            return True

    def create_feed(self, document_id: str, marketplace_ids: list[str]) -> str | None:
        """Queue a feed of an uploaded document; its id, or None (not uploaded)."""
        with self.lock:
            if self._uploads.get(document_id) is None:
                return None
            self.count("feeds")
            feed_id = str(50_000 + len(self._feeds) + 1)
            doomed = self._fail_feeds > 0
            self._fail_feeds -= 1 if doomed else 0
            due = time.monotonic() + self.feed_delay_s
            self._feeds[feed_id] = Feed(
                feed_id, document_id, marketplace_ids, self._clock(), due, doomed
            )
            return feed_id

    def feed(self, feed_id: str) -> dict[str, Any] | None:
        """The feed as getFeed shows it, processed first if its delay has passed."""
        with self.lock:
            feed = self._feeds.get(feed_id)
            if feed is None:
                return None
            if feed.status == "IN_QUEUE" and time.monotonic() >= feed.due:
                self._process(feed)
            shown: dict[str, Any] = {
                "feedId": feed.feed_id,
                "feedType": "JSON_LISTINGS_FEED",
                "marketplaceIds": feed.marketplace_ids,
                "createdTime": _iso(feed.created),
                "processingStatus": feed.status,
            }
            if feed.ended is not None:
                shown["processingStartTime"] = _iso(feed.ended)
                shown["processingEndTime"] = _iso(feed.ended)
            if feed.result_id is not None:
                shown["resultFeedDocumentId"] = feed.result_id
            return shown

    def report(self, document_id: str) -> bytes | None:
        with self.lock:
            return self._reports.get(document_id)

    def _process(self, feed: Feed) -> None:
        feed.ended = self._clock()
        content = self._uploads.get(feed.document_id) or b""
        try:
            document = json.loads(content)
            messages = document["messages"]
            if not isinstance(messages, list) or not messages:
                raise ValueError("no messages")
        except (ValueError, KeyError, TypeError):
            document, messages = None, []
        if feed.doomed or document is None:
            self.count("feeds_fatal")
            feed.status = "FATAL"
            return
        issues: list[dict[str, Any]] = []
        accepted = 0
        for message in messages:
            found = self._apply_message(message)
            issues += found
            accepted += not any(i["severity"] == "ERROR" for i in found)
        report = {
            "header": {"sellerId": self.seller_id or "", "version": "2.0", "feedId": feed.feed_id},
            "issues": issues,
            "summary": {
                "errors": sum(i["severity"] == "ERROR" for i in issues),
                "warnings": sum(i["severity"] == "WARNING" for i in issues),
                "messagesProcessed": len(messages),
                "messagesAccepted": accepted,
                "messagesInvalid": len(messages) - accepted,
            },
        }
        body = json.dumps(report).encode()
        result_id = "amzn1.tortuga.4." + uuid.uuid4().hex
        self._reports[result_id] = gzip.compress(body) if self.gzip_reports else body
        feed.result_id = result_id
        feed.status = "DONE"

    def _apply_message(self, message: Any) -> list[dict[str, Any]]:
        """One feed message applied as patchListingsItem applies it; its report issues."""
        self.count("feed_messages")
        message_id = message.get("messageId") if isinstance(message, dict) else None
        sku = message.get("sku") if isinstance(message, dict) else None
        where = {"messageId": message_id, "sku": sku}
        where = {k: v for k, v in where.items() if v is not None}
        if not isinstance(message, dict) or not isinstance(sku, str) or not sku:
            return [where | _feed_issue("4000001", "The message has no SKU.")]
        if message.get("operationType") != "PATCH":
            text = f"the sandbox takes PATCH messages, not {message.get('operationType')!r}"
            return [where | _feed_issue("4000002", text)]
        try:
            request = PatchRequest.model_validate(
                {"productType": message.get("productType"), "patches": message.get("patches")}
            )
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            text = ".".join(str(p) for p in first["loc"]) + f": {first['msg']}"
            return [where | _feed_issue("4000003", text)]
        submission = self.patch(sku, request)
        assert submission is not None
        out = []
        for issue in submission["issues"]:
            found = where | _feed_issue(issue["code"], issue["message"], issue["severity"])
            if issue.get("attributeNames"):
                found["attributeName"] = issue["attributeNames"][0]
            out.append(found)
        return out

    def patch(self, sku: str, request: PatchRequest) -> dict[str, Any] | None:
        """Apply a listings patch; the submission, or None when the SKU is not listed."""
        with self.lock:
            self.count("patches")
            if not self.listed(sku):
                # No listing: the patch would create one, and a listing made of its
                # availability alone lacks what every listing needs.
                self.count("not_found")
                missing = _issue(
                    "90220",
                    "'item_name' is required but not supplied.",
                    "item_name",
                    "MISSING_ATTRIBUTE",
                )
                return {
                    "sku": sku,
                    "status": "INVALID",
                    "submissionId": uuid.uuid4().hex,
                    "issues": [missing],
                }
            listed_as = self._product_types.setdefault(sku, request.productType)
            issues = []
            if listed_as != request.productType:
                message = f"productType {request.productType} is not the listing's {listed_as}"
                issues.append(_issue("PRODUCT_TYPE_MISMATCH", message, "productType"))
            values: list[Availability] = []
            merge = False
            for patch in request.patches:
                if patch.path == ATTRIBUTE_PATH:
                    values, problem = _availability(patch)
                    merge = patch.op == "merge"
                    if problem:
                        issues.append(problem)
            submission_id = uuid.uuid4().hex
            submission = {"sku": sku, "submissionId": submission_id, "issues": issues}
            if issues:
                self.count("invalid")
                return submission | {"status": "INVALID"}
            offers = self._offers.setdefault(sku, {}) if merge else {}
            for value in values:
                code = value.fulfillment_channel_code
                offers.setdefault(code, {}).update(value.model_dump())
                self._codes[sku] = code
                self.set_level(sku, value.quantity, source="push", ref=submission_id)
            if values:
                self._offers[sku] = offers
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
                        "createdDate": _iso(self._created.get(sku) or self._clock()),
                        "lastUpdatedDate": _iso(self._clock()),
                    }
                ]
            if "attributes" in included:
                code = self._codes.get(sku, "DEFAULT")
                offers = list(self._offers.get(sku, {}).values()) or [
                    {"fulfillment_channel_code": code, "quantity": quantity}
                ]
                item["attributes"] = {"fulfillment_availability": [dict(v) for v in offers]}
            if "fulfillmentAvailability" in included:
                code = self._codes.get(sku, "DEFAULT")
                item["fulfillmentAvailability"] = [
                    {"fulfillmentChannelCode": code, "quantity": quantity}
                ]
            return item


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _issue(
    code: str, message: str, attribute: str, category: str = "INVALID_ATTRIBUTE"
) -> dict[str, Any]:
    return {
        "code": code,
        "message": message,
        "severity": "ERROR",
        "attributeNames": [attribute],
        "categories": [category],
    }


def _feed_issue(code: str, message: str, severity: str = "ERROR") -> dict[str, Any]:
    return {"code": code, "severity": severity, "message": message}


class FeedDocumentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    contentType: str = Field(min_length=1)


class FeedSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedType: str = Field(min_length=1)
    marketplaceIds: list[str] = Field(min_length=1, max_length=25)
    inputFeedDocumentId: str = Field(min_length=1)
    feedOptions: dict[str, str] | None = None


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
        return [], _issue("MISSING_VALUE", f"{name} needs a value", name, "MISSING_ATTRIBUTE")
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


def lwa_token_required(state: AmazonState) -> params.Depends:
    """With LWA on (:meth:`AmazonState.use_lwa`), an unexpired token it issued, or 403."""

    async def authorized(x_amz_access_token: Annotated[str | None, Header()] = None) -> None:
        if state.lwa is None:
            return
        refused = state.check_access_token(x_amz_access_token)
        if refused is not None:
            raise HTTPException(403, refused)

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
    auth = [access_token_required(token), lwa_token_required(state)]

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        codes = {403: "Unauthorized", 404: "NOT_FOUND", 429: "QuotaExceeded"}
        code = codes.get(exc.status_code, "InvalidInput")
        if exc.status_code == 403:  # Amazon says why in the details
            body = {"errors": [{"code": code, "message": DENIED, "details": str(exc.detail)}]}
            return json_response(body, 403, dict(exc.headers or {}))
        return _errors(exc.status_code, code, str(exc.detail), exc.headers)

    @app.post("/auth/o2/token")
    async def lwa_token(request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode()).items()}
        status, body = state.exchange(form)
        return json_response(body, status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _errors(400, "InvalidInput", f"{where}: {first['msg']}")

    @app.post(FEEDS + "/documents", dependencies=auth)
    async def create_feed_document(request: Request, body: FeedDocumentSpec) -> Response:
        document_id = state.create_document()
        url = f"{str(request.base_url).rstrip('/')}/_sandbox/uploads/{document_id}"
        return json_response({"feedDocumentId": document_id, "url": url}, 201)

    @app.put("/_sandbox/uploads/{document_id}")
    async def upload_feed_document(document_id: str, request: Request) -> Response:
        if not state.upload(document_id, await request.body()):
            return Response(status_code=404)
        return Response(status_code=200)

    @app.post(FEEDS + "/feeds", dependencies=auth)
    async def create_feed(body: FeedSpec) -> Response:
        wait = state.admit("feed")
        if wait > 0:
            message = "You exceeded your quota for the requested resource."
            raise HTTPException(429, message, headers={"Retry-After": format_retry_after(wait)})
        if body.feedType != "JSON_LISTINGS_FEED":
            raise HTTPException(400, f"the sandbox takes JSON_LISTINGS_FEED, not {body.feedType}")
        unknown = [
            m
            for m in body.marketplaceIds
            if state.marketplace_ids and m not in state.marketplace_ids
        ]
        if unknown:
            raise HTTPException(400, f"invalid marketplaceIds: {unknown!r}")
        feed_id = state.create_feed(body.inputFeedDocumentId, body.marketplaceIds)
        if feed_id is None:
            raise HTTPException(400, f"no uploaded feed document {body.inputFeedDocumentId!r}")
        return json_response({"feedId": feed_id}, 202)

    @app.get(FEEDS + "/feeds/{feed_id}", dependencies=auth)
    async def get_feed(feed_id: str) -> Response:
        feed = state.feed(feed_id)
        if feed is None:
            return _errors(404, "NotFound", f"no feed {feed_id}")
        return json_response(feed)

    @app.get(FEEDS + "/documents/{document_id}", dependencies=auth)
    async def get_feed_document(request: Request, document_id: str) -> Response:
        if state.report(document_id) is None:
            return _errors(404, "NotFound", f"no feed document {document_id}")
        url = f"{str(request.base_url).rstrip('/')}/_sandbox/downloads/{document_id}"
        answer = {"feedDocumentId": document_id, "url": url}
        if state.gzip_reports:
            answer["compressionAlgorithm"] = "GZIP"
        return json_response(answer)

    @app.get("/_sandbox/downloads/{document_id}")
    async def download_feed_report(document_id: str) -> Response:
        report = state.report(document_id)
        if report is None:
            return Response(status_code=404)
        return Response(report, media_type="application/json")

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
