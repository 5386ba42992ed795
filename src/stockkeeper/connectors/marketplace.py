"""Marketplace delta feeds: a ``since`` token in, changes and the next token out.

An adapter knows one marketplace's wire format: where its feed is, and how a page of
it becomes records. ``ADAPTERS`` is the registry a connector's ``adapter`` key names;
adding a marketplace means one adapter class and one entry (docs/connectors.md walks
through one). The HTTP policy (rate limit, timeouts, retries, ``Retry-After``) is the
shared :class:`~stockkeeper.connectors.http.HttpCaller`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockkeeper.config import MarketplaceConnectorConfig
from stockkeeper.connectors.http import ConnectorError, HttpCaller, InvalidResponse
from stockkeeper.connectors.records import (
    LevelRecord,
    Refused,
    SaleRecord,
    parse_levels,
    parse_sales,
)
from stockkeeper.observability.metrics import Metrics


@dataclass(frozen=True, slots=True)
class DeltaPage:
    levels: list[LevelRecord] = field(default_factory=list)
    sales: list[SaleRecord] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    next_token: str = ""
    has_more: bool = False
    records: int = 0


class Adapter(Protocol):
    name: ClassVar[str]

    def request(self, since: str | None, limit: int) -> tuple[str, dict[str, str | int]]:
        """The path and query of the page after ``since``."""
        ...

    def parse(self, cfg: MarketplaceConnectorConfig, body: Any) -> DeltaPage:
        """A page of the feed as records; raises InvalidResponse if it is not one."""
        ...


class _Feed(BaseModel):
    model_config = ConfigDict(extra="ignore")
    changes: list[dict[str, Any]] = Field(max_length=50_000)
    next: str = Field(min_length=1, max_length=500)
    has_more: bool


class GenericDeltas:
    """``GET /v1/deltas?since=&limit=`` → ``{changes: [{kind: level|sale, ...}], next,
    has_more}`` (what the sandbox marketplace speaks). A ``level`` is ``{sku, quantity,
    updated_at}``; a ``sale`` is ``{transaction_id, sku, quantity, sold_at}``."""

    name: ClassVar[str] = "generic"

    def request(self, since: str | None, limit: int) -> tuple[str, dict[str, str | int]]:
        params: dict[str, str | int] = {"limit": limit}
        if since:
            params["since"] = since
        return "/v1/deltas", params

    def parse(self, cfg: MarketplaceConnectorConfig, body: Any) -> DeltaPage:
        try:
            feed = _Feed.model_validate(body)
        except ValidationError as exc:
            raise InvalidResponse(f"not a delta page: {exc.errors()[0]['msg']}") from None
        levels: list[dict[str, Any]] = []
        sales: list[dict[str, Any]] = []
        odd: list[Refused] = []
        for ch in feed.changes:
            kind = ch.get("kind")
            if kind == "sale":
                qty = ch.get("quantity")
                # JSON true is a Python int too; a sale of "true" units is not one.
                if isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0:
                    odd.append(Refused(ch, "sale quantity must be a positive integer"))
                    continue
                sales.append(
                    {
                        "transaction_id": ch.get("transaction_id"),
                        "sku": ch.get("sku"),
                        "delta": -qty,
                        "source": cfg.id,
                    }
                )
            elif kind == "level":
                if cfg.apply_levels:
                    levels.append(
                        {
                            "sku": ch.get("sku"),
                            "location": cfg.location,
                            "on_hand": ch.get("quantity"),
                            "source_updated_at": ch.get("updated_at"),
                        }
                    )
            else:
                odd.append(Refused(ch, f"unknown change kind {kind!r}"))
        good_levels, bad_levels = parse_levels(levels)
        good_sales, bad_sales = parse_sales(sales)
        return DeltaPage(
            good_levels,
            good_sales,
            odd + bad_levels + bad_sales,
            feed.next,
            feed.has_more,
            len(feed.changes),
        )


ADAPTERS: dict[str, Adapter] = {"generic": GenericDeltas()}


class TokenDidNotAdvance(ConnectorError):
    """The feed's paging is broken: the page after ``since`` names ``since`` again (or a
    token already read in this round) as where to go on. Following it would read the
    same pages for ever (D-471)."""

    def __init__(self, connector: str, since: str | None, page: DeltaPage, why: str) -> None:
        super().__init__(
            connector,
            "deltas",
            f"the next token did not advance: since={since!r} answered next="
            f"{page.next_token!r} (has_more={str(page.has_more).lower()}, "
            f"{page.records} changes), {why}; the round stops and the cursor stays",
        )
        self.since = since
        self.next_token = page.next_token


def check_advances(
    connector: str, since: str | None, page: DeltaPage, read: frozenset[str] | set[str]
) -> None:
    """Raise :class:`TokenDidNotAdvance` unless ``page`` moves the feed on from ``since``.

    ``read`` holds the tokens this round already read from: a page sending the poller
    back to one is a cycle. The same token with no changes and nothing more is a quiet
    feed, not a fault.
    """
    if page.next_token in read:
        raise TokenDidNotAdvance(connector, since, page, "a token already read this round")
    if page.next_token == since and (page.has_more or page.records):
        raise TokenDidNotAdvance(connector, since, page, "the token it was asked with")


def _json(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponse(f"not JSON: {exc}") from None


class MarketplaceClient:
    def __init__(
        self,
        cfg: MarketplaceConnectorConfig,
        *,
        metrics: Metrics | None = None,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.adapter = ADAPTERS[cfg.adapter]
        self.http = HttpCaller(cfg, metrics=metrics, token=token, transport=transport)

    async def deltas(self, since: str | None) -> DeltaPage:
        path, params = self.adapter.request(since, self.cfg.page_size)
        return await self.http.call(
            "deltas",
            "GET",
            path,
            lambda r: self.adapter.parse(self.cfg, _json(r)),
            params=params,
        )

    async def aclose(self) -> None:
        await self.http.aclose()
