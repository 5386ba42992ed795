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

``patchListingsItem`` allows 5 requests a second with a burst of 5 per seller and app.
The pace is HttpCaller's limiter, one per adapter and so shared by every concurrent call,
set a little under the configured rate (:data:`PACE_HEADROOM`): Amazon's bucket sees our
calls after network and scheduling jitter, and a call that lands a few milliseconds early
is a 429. A 429 is still retried, never sooner than its ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Literal, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from stockkeeper.config import AmazonChannelConfig
from stockkeeper.connectors.channels import Fence, Push, PushOutcome
from stockkeeper.connectors.http import ConnectorRejected, HttpCaller, InvalidResponse, OnCall
from stockkeeper.connectors.lwa import LwaCredentials, LwaTokens, token_expired
from stockkeeper.observability.metrics import Metrics

API = "/listings/2021-08-01/items"
ACCESS_TOKEN_HEADER = "x-amz-access-token"  # noqa: S105 - a header name
ATTRIBUTE_PATH = "/attributes/fulfillment_availability"
# Our pace, as a share of the configured rate (see the module docstring).
PACE_HEADROOM = 0.9
NO_LISTING = "Amazon has no listing of the SKU"
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


def _parser(model: type[M], sku: str) -> Callable[[httpx.Response], M]:
    def parse(response: httpx.Response) -> M:
        try:
            answer = model.model_validate(orjson.loads(response.content))
        except orjson.JSONDecodeError as exc:
            raise InvalidResponse(f"not JSON: {exc}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "(body)"
            raise InvalidResponse(f"{where}: {first['msg']}") from None
        if getattr(answer, "sku", sku) != sku:
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
        headers = {ACCESS_TOKEN_HEADER: token} if token and lwa is None else {}
        self.http = HttpCaller(
            paced, metrics=metrics, on_call=on_call, transport=transport, headers=headers
        )
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

    async def aclose(self) -> None:
        await self.http.aclose()
        if self.tokens is not None:
            await self.tokens.aclose()

    async def _call(
        self,
        operation: str,
        method: str,
        sku: str,
        parse: Callable[[httpx.Response], M],
        *,
        params: Mapping[str, str],
        json: object = None,
    ) -> M:
        """One SP-API call with the current access token; renewed once if Amazon says it
        expired."""
        path = self._path(sku)
        if self.tokens is None:
            return await self.http.call(operation, method, path, parse, params=params, json=json)
        token = await self.tokens.token()
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
            if not token_expired(exc.status, exc.body):
                raise
        token = await self.tokens.expired(token)
        return await self.http.call(
            operation,
            method,
            path,
            parse,
            params=params,
            json=json,
            headers={ACCESS_TOKEN_HEADER: token},
        )

    def _path(self, sku: str) -> str:
        return f"{API}/{quote(self.cfg.seller_id, safe='')}/{quote(sku, safe='')}"

    async def push(self, items: Sequence[Push], fence: Fence | None = None) -> list[PushOutcome]:
        """One PATCH per item, in order (the config allows one item per push). Each
        item is written by one call (its own retries resend the same PATCH of an absolute
        figure), so ``fence`` is never needed."""
        return [await self._push(item) for item in items]

    async def _push(self, item: Push) -> PushOutcome:
        value = {
            "fulfillment_channel_code": self.cfg.fulfillment_channel_code,
            "quantity": item.quantity,
        }
        body = {
            "productType": self.cfg.product_type,
            "patches": [{"op": "merge", "path": ATTRIBUTE_PATH, "value": [value]}],
        }
        try:
            submission = await self._call(
                "patch_listing",
                "PATCH",
                item.sku,
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
                sku,
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
