"""The Amazon channel: SP-API Listings Items 2021-08-01, one SKU per call.

Wire contract (docs/channels.md), every call through :class:`HttpCaller` with the LWA
access token in ``x-amz-access-token`` (a static one from ``token_env``, or one
:class:`~stockkeeper.connectors.lwa.LwaTokens` gets and renews from the seller's
refresh token; a 403 saying the token expired renews it and sends the call once more):

* push: ``PATCH /listings/2021-08-01/items/{sellerId}/{sku}?marketplaceIds=...`` with
  ``{"productType", "patches": [{"op": "merge", "path":
  "/attributes/fulfillment_availability", "value": [{"fulfillment_channel_code",
  "quantity"}]}]}``: ``merge``, so the rest of the seller's availability value
  (``lead_time_to_ship_max_days``, ``restock_date``) stays as it is. ``ACCEPTED`` is
  ok. ``INVALID`` is rejected with the issues' text, unless ``getListingsItem`` then
  answers 404: the SKU has no listing, and is unlisted. patchListingsItem documents no
  404 (a PATCH creates a listing where there is none, and one with only availability
  is INVALID for its missing attributes); one is still taken as unlisted;
* read: ``GET`` of the same resource with ``includedData=fulfillmentAvailability``.

Bulk (``feed_threshold`` above 0 and a push of more than one item, which the propagator
makes only of a backlog that reached the threshold): one ``JSON_LISTINGS_FEED`` of the
same patch per SKU (``createFeedDocument``, ``PUT`` of the document to the presigned URL,
``createFeed``, ``getFeed`` every ``feed_poll_s``, renewing the claim through the fence,
until ``DONE``; then ``getFeedDocument`` and the processing report). A message with an
``ERROR`` issue is rejected with it (unlisted when ``getListingsItem`` answers 404); the
others are ok. A feed ``FATAL`` or ``CANCELLED``, or not done within ``feed_timeout_s``,
is :class:`ConnectorUnavailable`: the batch is retried after the backoff.

``patchListingsItem`` allows 5 requests a second with a burst of 5 per seller and app.
The pace is HttpCaller's limiter, one per adapter and so shared by every concurrent call,
set a little under the configured rate (:data:`PACE_HEADROOM`): Amazon's bucket sees our
calls after network and scheduling jitter, and a call that lands a few milliseconds early
is a 429. A 429 is still retried, never sooner than its ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from stockkeeper.config import AmazonChannelConfig
from stockkeeper.connectors.channels import Fence, Push, PushOutcome
from stockkeeper.connectors.http import (
    ConnectorRejected,
    ConnectorUnavailable,
    HttpCaller,
    InvalidResponse,
    OnCall,
)
from stockkeeper.connectors.lwa import LwaCredentials, LwaTokens, token_expired
from stockkeeper.observability.metrics import Metrics

API = "/listings/2021-08-01/items"
ACCESS_TOKEN_HEADER = "x-amz-access-token"  # noqa: S105 - a header name
ATTRIBUTE_PATH = "/attributes/fulfillment_availability"
# Our pace, as a share of the configured rate (see the module docstring).
PACE_HEADROOM = 0.9
NO_LISTING = "Amazon has no listing of the SKU"
FEEDS = "/feeds/2021-06-30"
FEED_TYPE = "JSON_LISTINGS_FEED"
FEED_CONTENT_TYPE = "application/json; charset=UTF-8"
# A feed's lease outlasts its timeout by this much (the upload before the first poll, the
# report and the reads of rejected SKUs after the last).
FEED_LEASE_MARGIN_S = 600.0
M = TypeVar("M", bound=BaseModel)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Issue(_Wire):
    code: str
    message: str
    severity: str
    attributeNames: list[str] = Field(default_factory=list)


class _Submission(_Wire):
    sku: str
    status: Literal["ACCEPTED", "INVALID"]
    submissionId: str
    issues: list[_Issue] = Field(default_factory=list)


class _Availability(_Wire):
    fulfillmentChannelCode: str
    quantity: Annotated[int, Strict(), Field(ge=0)] | None = None


class _Item(_Wire):
    sku: str
    fulfillmentAvailability: list[_Availability] = Field(default_factory=list)


class _FeedDocument(_Wire):
    feedDocumentId: str = Field(min_length=1)
    url: str = Field(min_length=1)
    compressionAlgorithm: Literal["GZIP"] | None = None


class _FeedCreated(_Wire):
    feedId: str = Field(min_length=1)


class _Feed(_Wire):
    feedId: str
    processingStatus: Literal["CANCELLED", "DONE", "FATAL", "IN_PROGRESS", "IN_QUEUE"]
    resultFeedDocumentId: str | None = None


class _ReportIssue(_Wire):
    messageId: int | None = None
    sku: str | None = None
    code: str = ""
    severity: str
    message: str


class _ReportSummary(_Wire):
    messagesProcessed: int
    messagesAccepted: int
    messagesInvalid: int


class _Report(_Wire):
    issues: list[_ReportIssue] = Field(default_factory=list)
    summary: _ReportSummary


def _raw(response: httpx.Response) -> bytes:
    return response.content


def _parser(model: type[M], sku: str | None = None) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        try:
            answer = model.model_validate(orjson.loads(response.content))
        except orjson.JSONDecodeError as exc:
            raise InvalidResponse(f"not JSON: {exc}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            raise InvalidResponse(f"{where}: {first['msg']}") from None
        if sku is not None and getattr(answer, "sku", sku) != sku:
            raise InvalidResponse(f"answered for SKU {getattr(answer, 'sku', None)!r}, not {sku!r}")
        return answer

    return parse


def _issues(submission: _Submission) -> str:
    errors = [i for i in submission.issues if i.severity == "ERROR"] or submission.issues
    return "; ".join(f"{i.code}: {i.message}" for i in errors)[:500] or "INVALID"


class AmazonChannel:
    """Pushes availability to one seller's Amazon listings. Close with :meth:`aclose`."""

    def __init__(
        self,
        cfg: AmazonChannelConfig,
        *,
        token: str | None = None,
        lwa: LwaCredentials | None = None,
        metrics: Metrics | None = None,
        on_call: OnCall | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        paced = cfg.model_copy(update={"rate_limit_rps": cfg.rate_limit_rps * PACE_HEADROOM})
        # A static token goes with each SP-API call, not to the presigned document URLs.
        self._static = {ACCESS_TOKEN_HEADER: token} if token and lwa is None else {}
        # Pushes run under a lease: a call never sleeps past it (HttpCaller, D-416).
        self.http = HttpCaller(
            paced, metrics=metrics, on_call=on_call, transport=transport, bounded_waits=True
        )
        self.metrics = metrics
        self.tokens = (
            None
            if lwa is None
            else LwaTokens(
                cfg.id,
                lwa,
                timeout_s=cfg.timeout_ms / 1000,
                refused_pause_s=cfg.lwa_refused_pause_s,
                metrics=metrics,
                transport=transport,
            )
        )
        self._marketplaces = ",".join(cfg.marketplace_ids)

    @property
    def id(self) -> str:
        return self.cfg.id

    @property
    def can_read(self) -> bool:
        return True

    @property
    def feed_threshold(self) -> int:
        """A due backlog of this many SKUs goes as one feed (0: never); the propagator
        reads it."""
        return self.cfg.feed_threshold

    @property
    def feed_max_skus(self) -> int:
        return self.cfg.feed_max_skus

    @property
    def feed_lease_s(self) -> float:
        """How long the SKUs of a feed are claimed for (renewed on every poll)."""
        return self.cfg.feed_timeout_s + FEED_LEASE_MARGIN_S

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.tokens is not None:
            await self.tokens.aclose()

    async def _call(
        self,
        operation: str,
        method: str,
        path: str,
        parse: Callable[[httpx.Response], M],
        *,
        params: Mapping[str, str] | None = None,
        json: object = None,
    ) -> M:
        """One SP-API call with the current access token; renewed once if Amazon says it
        expired."""
        if self.tokens is None:
            return await self.http.call(
                operation, method, path, parse, params=params, json=json, headers=self._static
            )
        token = await self.tokens.token()
        for renewed in (False, True):
            try:
                return await self.http.call(
                    operation,
                    method,
                    path,
                    parse,
                    params=params,
                    json=json,
                    headers={ACCESS_TOKEN_HEADER: token},
                )
            except ConnectorRejected as exc:
                if renewed or not token_expired(exc.status, exc.body):
                    raise
            token = await self.tokens.expired(token)
        raise AssertionError("the second try returns or raises")

    def _path(self, sku: str) -> str:
        return f"{API}/{quote(self.cfg.seller_id, safe='')}/{quote(sku, safe='')}"

    async def push(self, items: Sequence[Push], fence: Fence | None = None) -> list[PushOutcome]:
        """More than one item with feeds on: one feed (see the module docstring).
        Otherwise one PATCH per item, in order; each item is written by one call (its own
        retries resend the same PATCH of an absolute figure), so ``fence`` is not needed."""
        if len(items) > 1 and self.cfg.feed_threshold > 0:
            return await self._feed(items, fence)
        return [await self._push(item) for item in items]

    def _patches(self, quantity: int) -> list[dict[str, object]]:
        value = {
            "fulfillment_channel_code": self.cfg.fulfillment_channel_code,
            "quantity": quantity,
        }
        return [{"op": "merge", "path": ATTRIBUTE_PATH, "value": [value]}]

    def feed_document(self, items: Sequence[Push]) -> dict[str, object]:
        """The JSON_LISTINGS_FEED document (listings-feed-schema-v2) of ``items``: message
        ``i + 1`` is the PATCH of ``items[i]``."""
        return {
            "header": {
                "sellerId": self.cfg.seller_id,
                "version": "2.0",
                "issueLocale": "en_US",
            },
            "messages": [
                {
                    "messageId": n,
                    "sku": item.sku,
                    "operationType": "PATCH",
                    "productType": self.cfg.product_type,
                    "patches": self._patches(item.quantity),
                }
                for n, item in enumerate(items, start=1)
            ],
        }

    async def _feed(self, items: Sequence[Push], fence: Fence | None) -> list[PushOutcome]:
        document = orjson.dumps(self.feed_document(items))
        upload = await self._call(
            "create_feed_document",
            "POST",
            f"{FEEDS}/documents",
            _parser(_FeedDocument),
            json={"contentType": FEED_CONTENT_TYPE},
        )
        await self.http.call(
            "upload_feed_document",
            "PUT",
            upload.url,
            _raw,
            content=document,
            headers={"Content-Type": FEED_CONTENT_TYPE},
        )
        created = await self._call(
            "create_feed",
            "POST",
            f"{FEEDS}/feeds",
            _parser(_FeedCreated),
            json={
                "feedType": FEED_TYPE,
                "marketplaceIds": list(self.cfg.marketplace_ids),
                "inputFeedDocumentId": upload.feedDocumentId,
            },
        )
        feed_id = quote(created.feedId, safe="")
        held = {item.sku for item in items}
        give_up_at = time.monotonic() + self.cfg.feed_timeout_s
        while True:
            feed = await self._call("get_feed", "GET", f"{FEEDS}/feeds/{feed_id}", _parser(_Feed))
            if feed.processingStatus == "DONE":
                self._count_feed("done")
                break
            if feed.processingStatus in ("FATAL", "CANCELLED"):
                self._count_feed(feed.processingStatus.lower())
                raise ConnectorUnavailable(
                    self.id,
                    "get_feed",
                    "server_error",
                    f"feed {created.feedId} ended {feed.processingStatus}",
                )
            if time.monotonic() >= give_up_at:
                self._count_feed("timeout")
                raise ConnectorUnavailable(
                    self.id,
                    "get_feed",
                    "timeout",
                    f"feed {created.feedId} not done after {self.cfg.feed_timeout_s:g}s",
                )
            await asyncio.sleep(self.cfg.feed_poll_s)
            if fence is not None:
                held = await fence(sorted(held))
                if not held:  # every SKU claimed by another sender: theirs to settle
                    return [PushOutcome(item.sku, "superseded") for item in items]
        if feed.resultFeedDocumentId is None:
            raise ConnectorUnavailable(
                self.id, "get_feed", "invalid_response", f"feed {created.feedId} has no report"
            )
        report = await self._report(feed.resultFeedDocumentId)
        if report.summary.messagesProcessed < len(items):
            raise ConnectorUnavailable(
                self.id,
                "get_feed_document",
                "invalid_response",
                f"feed {created.feedId} processed {report.summary.messagesProcessed} of "
                f"{len(items)} messages",
            )
        errors: dict[int, list[_ReportIssue]] = {}
        for issue in report.issues:
            if issue.severity == "ERROR" and issue.messageId is not None:
                errors.setdefault(issue.messageId, []).append(issue)
        outcomes: list[PushOutcome] = []
        for n, item in enumerate(items, start=1):
            if item.sku not in held:
                outcomes.append(PushOutcome(item.sku, "superseded"))
            elif n not in errors:
                outcomes.append(PushOutcome(item.sku, "ok", item.quantity))
            elif await self._read(item.sku) is None:
                outcomes.append(PushOutcome(item.sku, "unlisted", error=NO_LISTING))
            else:
                text = "; ".join(f"{i.code}: {i.message}" for i in errors[n])[:500]
                outcomes.append(PushOutcome(item.sku, "rejected", error=text))
        return outcomes

    def _count_feed(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.channel_feeds.labels(channel=self.id, result=result).inc()

    async def _report(self, document_id: str) -> _Report:
        where = await self._call(
            "get_feed_document",
            "GET",
            f"{FEEDS}/documents/{quote(document_id, safe='')}",
            _parser(_FeedDocument),
        )
        content = await self.http.call("download_feed_report", "GET", where.url, _raw)
        try:
            if where.compressionAlgorithm == "GZIP":
                content = gzip.decompress(content)
            return _Report.model_validate(orjson.loads(content))
        except (OSError, orjson.JSONDecodeError, ValidationError) as exc:
            raise ConnectorUnavailable(
                self.id, "download_feed_report", "invalid_response", f"bad report: {exc}"
            ) from None

    async def _push(self, item: Push) -> PushOutcome:
        body = {"productType": self.cfg.product_type, "patches": self._patches(item.quantity)}
        try:
            submission = await self._call(
                "patch_listing",
                "PATCH",
                self._path(item.sku),
                _parser(_Submission, item.sku),
                params={"marketplaceIds": self._marketplaces},
                json=body,
            )
        except ConnectorRejected as exc:
            if exc.status == 404:
                return PushOutcome(item.sku, "unlisted", error=NO_LISTING)
            raise
        if submission.status == "ACCEPTED":
            return PushOutcome(item.sku, "ok", item.quantity)
        # INVALID: for a SKU with no listing Amazon names the attributes a new listing
        # would lack; only getListingsItem can say the listing is not there.
        if await self._read(item.sku) is None:
            return PushOutcome(item.sku, "unlisted", error=NO_LISTING)
        return PushOutcome(item.sku, "rejected", error=_issues(submission))

    async def read(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, int | None]:
        """The quantity of our fulfillment channel per SKU (0 when the listing has none);
        None for a SKU Amazon does not list. ``concurrency`` reads at a time."""
        shown: dict[str, int | None] = {}
        step = max(1, self.cfg.concurrency)
        for start in range(0, len(skus), step):
            chunk = skus[start : start + step]
            results = await asyncio.gather(*(self._read(s) for s in chunk), return_exceptions=True)
            for sku, result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                shown[sku] = result
        return shown

    async def _read(self, sku: str) -> int | None:
        try:
            item = await self._call(
                "get_listing",
                "GET",
                self._path(sku),
                _parser(_Item, sku),
                params={
                    "marketplaceIds": self._marketplaces,
                    "includedData": "fulfillmentAvailability",
                },
            )
        except ConnectorRejected as exc:
            if exc.status == 404:
                return None
            raise
        for availability in item.fulfillmentAvailability:
            if availability.fulfillmentChannelCode == self.cfg.fulfillment_channel_code:
                return availability.quantity or 0
        return 0
