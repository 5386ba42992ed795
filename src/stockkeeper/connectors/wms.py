"""The WMS connector: stock snapshots and changes in, allocations and releases out.

The wire contract is in ``docs/wms.md``. Every call goes through :class:`HttpCaller`
(pace, timeout, retries, metrics). Answers are validated: a broken envelope makes the try
an ``invalid_response`` (retried, then :class:`ConnectorUnavailable`); a single bad row is
set aside in ``rejected`` with the reason, and the rest of the page is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from stockkeeper.config import WmsConnectorConfig
from stockkeeper.connectors.http import (
    ConnectorRejected,
    ConnectorUnavailable,
    HttpCaller,
    InvalidResponse,
    OnCall,
)
from stockkeeper.domain.instants import in_range
from stockkeeper.observability.metrics import Metrics

DEFAULT_LOCATION = "default"
MAX_SEND = 500

ACTIONS = ("allocate", "release", "confirm")
Quantity = Annotated[int, Strict(), Field(ge=0)]
M = TypeVar("M", bound=BaseModel)

__all__ = [
    "ChangesPage",
    "ConnectorRejected",
    "ConnectorUnavailable",
    "OutboundItem",
    "RejectedRow",
    "StockPage",
    "WmsClient",
    "WmsStockRow",
    "WmsTokenRejected",
]


@dataclass(frozen=True)
class WmsStockRow:
    """One batch as the WMS sees it."""

    sku: str
    location: str
    lot_number: str | None
    expires_at: datetime | None
    on_hand: int
    unavailable: int
    updated_at: datetime | None


class RejectedRow(NamedTuple):
    """A row that failed validation: its position in the page, the row as sent, and why."""

    position: int
    raw: Any
    error: str


@dataclass(frozen=True)
class StockPage:
    items: tuple[WmsStockRow, ...]
    next_cursor: str | None
    rejected: tuple[RejectedRow, ...] = ()
    # Rows of the whole snapshot (all pages), when the WMS says.
    total: int | None = None


@dataclass(frozen=True)
class ChangesPage:
    items: tuple[WmsStockRow, ...]
    next_token: str
    has_more: bool
    rejected: tuple[RejectedRow, ...] = ()


@dataclass(frozen=True)
class OutboundItem:
    """An allocation, release or confirmation told to the WMS, once per event_id."""

    event_id: str
    action: str  # one of ACTIONS
    order_id: str
    sku: str
    location: str
    lot_number: str | None
    quantity: int

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        if self.quantity <= 0:
            raise ValueError(f"quantity must be positive, not {self.quantity}")


class WmsTokenRejected(ConnectorRejected):
    """The WMS does not know the change token (expired, or another WMS's): do a snapshot."""


# -- wire models ---------------------------------------------------------------------


class _Row(BaseModel):
    model_config = ConfigDict(extra="ignore")

    sku: str = Field(min_length=1)
    location: str | None = None
    lot_number: str | None = None
    expires_at: datetime | None = None
    on_hand: Quantity
    unavailable: Quantity = 0
    updated_at: datetime | None = None

    @field_validator("sku", mode="before")
    @classmethod
    def _sku_is_text(cls, value: Any) -> Any:
        if not isinstance(value, str):
            raise ValueError("sku must be a string")  # no silent int -> "123"
        return value

    @field_validator("expires_at", "updated_at")
    @classmethod
    def _storable_time(cls, value: datetime | None) -> datetime | None:
        # A time the database cannot store refuses the row, not the page (D-481).
        # A WMS that sends local times without an offset is read as sending UTC.
        if value is None:
            return None
        return in_range(value if value.tzinfo else value.replace(tzinfo=UTC))

    def to_row(self) -> WmsStockRow:
        return WmsStockRow(
            sku=self.sku,
            location=self.location or DEFAULT_LOCATION,
            lot_number=self.lot_number or None,
            expires_at=self.expires_at,
            on_hand=self.on_hand,
            unavailable=self.unavailable,
            updated_at=self.updated_at,
        )


class _StockEnvelope(BaseModel):
    items: list[Any]
    next_cursor: str | None = Field(min_length=1)
    total: int | None = Field(default=None, ge=0)


class _ChangesEnvelope(BaseModel):
    items: list[Any]
    next_token: str = Field(min_length=1)
    has_more: bool


class _TokenEnvelope(BaseModel):
    token: str = Field(min_length=1)


class _Result(BaseModel):
    event_id: str
    status: Literal["applied", "duplicate"]


class _ResultsEnvelope(BaseModel):
    results: list[_Result]


def _body(response: httpx.Response) -> Any:
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError as exc:
        raise InvalidResponse(f"not JSON: {exc}") from None


def _envelope(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate(_body(response))
    except ValidationError as exc:
        raise InvalidResponse(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}" for e in errors[:3]]
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def _rows(raw_items: list[Any]) -> tuple[tuple[WmsStockRow, ...], tuple[RejectedRow, ...]]:
    items: list[WmsStockRow] = []
    rejected: list[RejectedRow] = []
    for index, raw in enumerate(raw_items):
        try:
            items.append(_Row.model_validate(raw).to_row())
        except ValidationError as exc:
            rejected.append(RejectedRow(index, raw, _first_error(exc)))
    return tuple(items), tuple(rejected)


class WmsClient:
    """Talks to one WMS. Use as an async context manager, or close with :meth:`aclose`."""

    def __init__(
        self,
        cfg: WmsConnectorConfig,
        *,
        metrics: Metrics | None = None,
        token: str | None = None,
        on_call: OnCall | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.cfg = cfg
        self.http = HttpCaller(
            cfg, metrics=metrics, token=token, on_call=on_call, transport=transport
        )

    async def __aenter__(self) -> WmsClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def stock_page(
        self,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        sku: str | None = None,
        location: str | None = None,
        lot_number: str | None = None,
    ) -> StockPage:
        """One page of the stock snapshot in (sku, location, lot_number) order.

        Filters narrow it; ``lot_number=""`` asks for the batch without a lot.
        """
        params: dict[str, str | int] = {"limit": limit or self.cfg.page_size}
        for name, value in (
            ("cursor", cursor),
            ("sku", sku),
            ("location", location),
            ("lot_number", lot_number),
        ):
            if value is not None:
                params[name] = value

        def parse(response: httpx.Response) -> StockPage:
            envelope = _envelope(_StockEnvelope, response)
            items, rejected = _rows(envelope.items)
            return StockPage(items, envelope.next_cursor, rejected, envelope.total)

        return await self.http.call("stock_page", "GET", "/v1/stock", parse, params=params)

    async def head_token(self) -> str:
        """The WMS's current change token: changes after it are yet to come."""

        def parse(response: httpx.Response) -> str:
            return _envelope(_TokenEnvelope, response).token

        return await self.http.call("head_token", "GET", "/v1/stock/token", parse)

    async def changes(self, since: str | None, limit: int | None = None) -> ChangesPage:
        """Batches changed after ``since`` (None: from the start), latest state, each once.

        Raises :class:`WmsTokenRejected` when the WMS no longer knows ``since``.
        """
        params: dict[str, str | int] = {"limit": limit or self.cfg.page_size}
        if since is not None:
            params["since"] = since

        def parse(response: httpx.Response) -> ChangesPage:
            envelope = _envelope(_ChangesEnvelope, response)
            items, rejected = _rows(envelope.items)
            return ChangesPage(items, envelope.next_token, envelope.has_more, rejected)

        try:
            return await self.http.call("changes", "GET", "/v1/stock/changes", parse, params=params)
        except ConnectorRejected as exc:
            if exc.status == 422 and since is not None:
                raise WmsTokenRejected(exc.connector, exc.operation, exc.status, exc.body) from exc
            raise

    async def send(self, items: Sequence[OutboundItem]) -> dict[str, str]:
        """Send outbound items in one call; event_id -> "applied" or "duplicate".

        Safe to repeat: the WMS applies each event_id once. An answer that leaves out
        one of ours is invalid (retried, then ConnectorUnavailable); nothing is guessed.
        """
        if not items:
            return {}
        if len(items) > MAX_SEND:
            raise ValueError(f"at most {MAX_SEND} items per call, got {len(items)}")
        wanted = [item.event_id for item in items]
        body = {
            "items": [
                {
                    "event_id": i.event_id,
                    "action": i.action,
                    "order_id": i.order_id,
                    "sku": i.sku,
                    "location": i.location,
                    "lot_number": i.lot_number,
                    "quantity": i.quantity,
                }
                for i in items
            ]
        }

        def parse(response: httpx.Response) -> dict[str, str]:
            results = {r.event_id: r.status for r in _envelope(_ResultsEnvelope, response).results}
            missing = [e for e in wanted if e not in results]
            if missing:
                shown = ", ".join(missing[:5])
                raise InvalidResponse(f"no result for {len(missing)} event(s): {shown}")
            return {e: results[e] for e in wanted}

        return await self.http.call("send", "POST", "/v1/allocations", parse, json=body)
