"""Request and response bodies. Every input is validated here, strictly."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from stockkeeper.domain.quantities import MAX_QUANTITY

if TYPE_CHECKING:
    from stockkeeper.services.reservations import ReservationView
    from stockkeeper.services.stock import (
        BatchFigures,
        LedgerEntry,
        LedgerPage,
        LevelView,
        SkuStock,
    )
    from stockkeeper.services.wms import SyncRequest

# The one rule for the characters of an id (SKU, order id, reference id, lot number) and
# of the short texts beside them (docs/http.md, "Ids"): any printable Unicode character,
# no surrounding whitespace. Refused: controls (C0, DEL, C1: category Cc), format
# characters (zero-width space and joiners, bidi controls, the byte order mark, soft
# hyphen: Cf), the line and paragraph separators U+2028/U+2029 (Zl, Zp) and lone
# surrogates (Cs). Invisible characters would make "A\u200bB" a second SKU beside "AB".
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
PRINTABLE = (
    "printable text without surrounding whitespace; no control, zero-width, bidi-control "
    "or line/paragraph separator characters"
)


def printable(value: str) -> str:
    """``value`` if it may be an id, else ValueError naming the first character refused."""
    if value != value.strip():
        raise ValueError("must not begin or end with whitespace")
    for ch in value:
        if unicodedata.category(ch) in REFUSED_CATEGORIES:
            name = unicodedata.name(ch, "a control character")
            raise ValueError(f"must not contain U+{ord(ch):04X} ({name})")
    return value


# Every id-like text is Annotated[str, Field(min_length=1, max_length=N, ...), ID_TEXT].
ID_TEXT = AfterValidator(printable)
Sku = Annotated[str, Field(min_length=1, max_length=128, description=PRINTABLE), ID_TEXT]
OrderId = Annotated[str, Field(min_length=1, max_length=128, description=PRINTABLE), ID_TEXT]
ReferenceId = Annotated[str, Field(min_length=1, max_length=200, description=PRINTABLE), ID_TEXT]
LocationCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
LotNumber = Annotated[str, Field(min_length=1, max_length=128, description=PRINTABLE), ID_TEXT]
# A row id (dead letter, sync request): a PostgreSQL bigint, so 1 to 2^63 - 1.
MAX_ROW_ID = 2**63 - 1
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
Reason = Annotated[str, Field(min_length=1, max_length=500)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineIn(Body):
    sku: Sku
    quantity: Quantity


class ReserveIn(Body):
    order_id: OrderId
    lines: list[LineIn] = Field(min_length=1, max_length=200)
    ttl_seconds: Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)] | None = None
    location: LocationCode | None = None


class ReleaseIn(Body):
    order_id: OrderId
    reason: Reason | None = None


class OrderRef(Body):
    order_id: OrderId


class ReceiptIn(Body):
    sku: Sku
    quantity: Quantity
    reference_id: ReferenceId
    location: LocationCode | None = None
    lot_number: LotNumber | None = None
    expires_at: AwareDatetime | None = None


class AdjustmentIn(Body):
    sku: Sku
    quantity: Literal["on_hand", "unavailable"]
    reason: Reason
    reference_id: ReferenceId
    batch_id: Annotated[int, Field(strict=True, ge=1, le=MAX_ROW_ID)] | None = None
    delta: Annotated[int, Field(strict=True, ge=-MAX_QUANTITY, le=MAX_QUANTITY)] | None = None
    set: Annotated[int, Field(strict=True, ge=0, le=MAX_QUANTITY)] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> AdjustmentIn:
        if (self.delta is None) == (self.set is None):
            raise ValueError("give exactly one of delta or set")
        if self.delta == 0:
            raise ValueError("delta must not be 0")
        return self


class WmsSyncIn(Body):
    reason: Reason
    requested_by: Annotated[str, Field(min_length=1, max_length=200)]
    sku: Sku | None = None
    sku_batch_id: Annotated[int, Field(strict=True, ge=1, le=MAX_ROW_ID)] | None = None
    priority: Literal["low", "normal", "high"] = "normal"
    connector: Annotated[str, Field(min_length=1, max_length=64)] | None = None


# -- responses: every 2xx body is built as one of these -----------------------------


def as_json(model: BaseModel) -> dict[str, Any]:
    """A response model as its JSON body; optional members never set are left out."""
    return model.model_dump(mode="json", exclude_unset=True)


class AllocationOut(BaseModel):
    batch_id: int
    lot_number: str | None
    location: str
    quantity: int


class LineOut(BaseModel):
    sku: str
    quantity: int
    allocations: list[AllocationOut]


class ReservationOut(BaseModel):
    order_id: str
    status: Literal["PENDING", "CONFIRMED", "CANCELLED", "EXPIRED", "FULFILLED"]
    expires_at: str
    lines: list[LineOut]
    location: str | None = None
    reason: str | None = None

    @classmethod
    def of(cls, v: ReservationView) -> ReservationOut:
        doc: dict[str, Any] = {
            "order_id": v.order_id,
            "status": v.status.value,
            "expires_at": v.expires_at.isoformat(),
            "lines": [LineOut.model_validate(li, from_attributes=True) for li in v.lines],
        }
        if v.location is not None:
            doc["location"] = v.location
        if v.reason is not None:
            doc["reason"] = v.reason
        return cls.model_validate(doc)


def reservation_json(v: ReservationView) -> dict[str, Any]:
    """``as_json(ReservationOut.of(v))`` built directly, without the models: the answer
    of the reserve and reservation routes, the hottest ones (D-363). The view's types
    are the models' already; tests/unit/test_schemas.py holds the two equal."""
    doc: dict[str, Any] = {
        "order_id": v.order_id,
        "status": v.status.value,
        "expires_at": v.expires_at.isoformat(),
        "lines": [
            {
                "sku": li.sku,
                "quantity": li.quantity,
                "allocations": [
                    {
                        "batch_id": a.batch_id,
                        "lot_number": a.lot_number,
                        "location": a.location,
                        "quantity": a.quantity,
                    }
                    for a in li.allocations
                ],
            }
            for li in v.lines
        ],
    }
    if v.location is not None:
        doc["location"] = v.location
    if v.reason is not None:
        doc["reason"] = v.reason
    return doc


class BatchOut(BaseModel):
    batch_id: int
    location: str
    lot_number: str | None
    expires_at: str | None
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    oversold: int
    available: int
    shortfall: int
    expired: bool
    version: int

    @classmethod
    def of(cls, b: BatchFigures) -> BatchOut:
        return cls(
            batch_id=b.batch_id,
            location=b.location,
            lot_number=b.lot_number,
            expires_at=b.expires_at.isoformat() if b.expires_at else None,
            on_hand=b.on_hand,
            unavailable=b.unavailable,
            reserved=b.reserved,
            committed=b.committed,
            oversold=b.oversold,
            available=b.available,
            shortfall=b.shortfall,
            expired=b.expired,
            version=b.version,
        )


class LevelOut(BaseModel):
    sku: str
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    oversold: int
    available: int
    shortfall: int
    version: int
    updated_at: str

    @classmethod
    def from_level(cls, lv: LevelView) -> LevelOut:
        return cls(
            sku=lv.sku,
            on_hand=lv.on_hand,
            unavailable=lv.unavailable,
            reserved=lv.reserved,
            committed=lv.committed,
            oversold=lv.oversold,
            available=lv.available,
            shortfall=lv.shortfall,
            version=lv.version,
            updated_at=lv.updated_at.isoformat(),
        )


class StockOut(LevelOut):
    batches: list[BatchOut]

    @classmethod
    def of(cls, s: SkuStock) -> StockOut:
        return cls(
            sku=s.sku,
            on_hand=s.on_hand,
            unavailable=s.unavailable,
            reserved=s.reserved,
            committed=s.committed,
            oversold=s.oversold,
            available=s.available,
            shortfall=s.shortfall,
            version=s.version,
            updated_at=s.updated_at.isoformat(),
            batches=[BatchOut.of(b) for b in s.batches],
        )


class ReceiptOut(BaseModel):
    reference_id: str
    batch_id: int
    sku: str
    quantity: int
    location: str
    lot_number: str | None
    expires_at: str | None
    level: LevelOut


class AdjustmentOut(BaseModel):
    reference_id: str
    sku: str
    batch_id: int
    quantity: Literal["on_hand", "unavailable"]
    delta: int | None
    set: int | None
    reason: str
    applied_delta: int
    level: LevelOut


class StockListOut(BaseModel):
    items: list[StockOut]
    not_found: list[str]


class LedgerEntryOut(BaseModel):
    id: int
    batch_id: int
    type: str
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    oversold: int
    source: str
    reference_id: str | None
    reason: str | None
    created_at: str

    @classmethod
    def of(cls, e: LedgerEntry) -> LedgerEntryOut:
        return cls(
            id=e.id,
            batch_id=e.batch_id,
            type=e.entry_type,
            on_hand=e.on_hand,
            unavailable=e.unavailable,
            reserved=e.reserved,
            committed=e.committed,
            oversold=e.oversold,
            source=e.source,
            reference_id=e.reference_id,
            reason=e.reason,
            created_at=e.created_at.isoformat(),
        )


class LedgerOut(BaseModel):
    sku: str
    entries: list[LedgerEntryOut]
    next: int | None

    @classmethod
    def of(cls, page: LedgerPage) -> LedgerOut:
        return cls(
            sku=page.sku, entries=[LedgerEntryOut.of(e) for e in page.entries], next=page.next
        )


class WmsSyncOut(BaseModel):
    sync_request_id: int
    connector: str
    kind: Literal["batch", "sku", "full", "incremental"]
    sku: str | None
    sku_batch_id: int | None
    reason: str
    requested_by: str
    priority: Literal["low", "normal", "high"]
    status: Literal["PENDING", "IN_PROGRESS", "DONE", "FAILED"]
    error: str | None
    attempts: int
    pages: int
    rows_seen: int
    rows_rejected: int
    adjustments: int
    shortfalls: int
    created_at: str
    started_at: str | None
    finished_at: str | None
    total: int | None = Field(
        description="Rows of the whole snapshot, when the WMS gives it (not for incremental)"
    )
    percent: float | None = Field(description="rows_seen of total, 0-100; null without a total")
    eta_seconds: float | None = Field(
        description="Seconds left at the average rate so far (IN_PROGRESS with a total)"
    )

    @classmethod
    def of(cls, r: SyncRequest, now: datetime) -> WmsSyncOut:
        p = r.progress(now)
        return cls.model_validate(
            {
                "sync_request_id": r.id,
                "connector": r.connector,
                "kind": r.kind.value,
                "sku": r.sku,
                "sku_batch_id": r.sku_batch_id,
                "reason": r.reason,
                "requested_by": r.requested_by,
                "priority": r.priority,
                "status": r.status,
                "error": r.error,
                "attempts": r.attempts,
                "pages": r.pages,
                "rows_seen": r.rows_seen,
                "rows_rejected": r.rows_rejected,
                "adjustments": r.adjustments,
                "shortfalls": r.shortfalls,
                "created_at": r.created_at.isoformat(),
                "started_at": r.started_at.isoformat() if r.started_at else None,
                "finished_at": r.finished_at.isoformat() if r.finished_at else None,
                "total": p.total,
                "percent": p.percent,
                "eta_seconds": p.eta_seconds,
            }
        )


class DeadLetterOut(BaseModel):
    id: int
    queue: str
    message_id: str | None
    routing_key: str | None
    body: Any
    raw_body_base64: str | None = Field(
        description="The body exactly as it came, base64, when it is not JSON."
    )
    headers: Any
    error: str | None
    attempts: int
    status: Literal["DEAD", "REPLAYED", "DISCARDED"]
    created_at: str
    resolved_at: str | None
    resolved_by: str | None


class DeadLetterListOut(BaseModel):
    items: list[DeadLetterOut]
    next: int | None


class UnlistedSkuOut(BaseModel):
    sku: str
    since: AwareDatetime | None


class UnlistedListOut(BaseModel):
    """A page of a channel's UNLISTED SKUs; pass ``next`` as ``after`` for the next."""

    channel: str
    items: list[UnlistedSkuOut]
    next: str | None


class OutboxStatusOut(BaseModel):
    pending: int
    failed: int
    oldest_pending_seconds: float | None


class BrokerStatusOut(BaseModel):
    kind: str
    error: str | None = Field(default=None, description="Set only while the broker is down.")


class WmsStatusOut(BaseModel):
    has_change_token: bool
    last_full_sync_at: str | None
    last_incremental_sync_at: str | None
    next_incremental_sync_at: str | None
    open_syncs: int
    outbound_pending: int
    outbound_dead: int
    outbound_oldest_pending_seconds: float | None
    last_failure: FailureOut | None = Field(
        description="The WMS's last failed sync or outbound send and when; kept on success."
    )


class CursorOut(BaseModel):
    last_modified: str | None
    sku: str | None
    token: str | None
    pages: int
    records: int
    updated_at: str | None


class FailureOut(BaseModel):
    message: str
    at: str


class ConnectorStatusOut(BaseModel):
    cursor: CursorOut
    circuit: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    circuit_opened_at: str | None
    last_error: str | None = Field(description="The circuit's last error, cleared on close.")
    last_failure: FailureOut | None = Field(
        description="The connector's last failed poll, push or sync and when; kept on success."
    )


class LagOut(BaseModel):
    p50: float | None
    p99: float | None
    samples: int


class ChannelStatusOut(BaseModel):
    type: str
    lag_ms: LagOut
    window_s: int
    alerting: bool
    alert_threshold_ms: int
    pending: int
    synced: int
    unlisted: int
    unlisted_skus: str = Field(description="The admin path that lists them.")
    unlisted_recheck_s: float
    dead: int
    oldest_pending_s: float | None
    pushes_in_window: int
    changes_in_window: int
    last_reconciled_at: str | None
    drift_repaired: int
    divergence_found: int
    last_sampled_at: str | None
    last_failure: FailureOut | None = Field(
        description="The channel's last failed or refused push and when; kept on success."
    )
    locations: list[str] | None = Field(
        default=None,
        description=(
            "The channel's own locations (Shopify location gids), each with its own figure "
            "per SKU (see /admin/channels/{channel}/skus/{sku}); null: one figure per SKU."
        ),
    )


class StatusOut(BaseModel):
    """The operator's page: the pipes, each WMS, each polled connector, each channel."""

    outbox: OutboxStatusOut
    dead_letters: dict[str, int]
    broker: BrokerStatusOut
    queues: dict[str, int] | None = None
    wms: dict[str, WmsStatusOut]
    connectors: dict[str, ConnectorStatusOut]
    channels: dict[str, ChannelStatusOut]


class WebhookOut(BaseModel):
    event_id: str
    status: Literal["queued", "duplicate", "ignored"]
    topic: str | None = None
    records: int | None = None
    refused: list[dict[str, Any]] | None = None


class Problem(BaseModel):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    model_config = ConfigDict(extra="allow")


# What each error status means on our routes, for the OpenAPI document.
ERROR_STATUSES: dict[int, str] = {
    401: "No valid bearer token (or, on a webhook, no valid signature).",
    403: "The token lacks the scope this route needs.",
    404: "Nothing with that id.",
    409: "The request contradicts the current state (insufficient-stock, "
    "reservation-expired, conflict; also an Idempotency-Key reused with another body).",
    413: "The body is larger than the configured limit.",
    422: "The request is not valid; ``errors`` names each field.",
    500: "An unexpected error; ``request_id`` is in the server's log line.",
    503: "The database is not reachable; try again after ``Retry-After`` seconds.",
}
# Every route that needs a token can answer these.
AUTHENTICATED = (401, 403, 500, 503)


def problems(*statuses: int, authenticated: bool = True) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: each status with the problem+json schema."""
    wanted = sorted({*statuses, *(AUTHENTICATED if authenticated else (500, 503))})
    # The model registers the Problem schema; api/common.py's OpenAPI hook files it under
    # application/problem+json, the media type these answers have.
    return {code: {"model": Problem, "description": ERROR_STATUSES[code]} for code in wanted}
