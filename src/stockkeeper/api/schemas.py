"""Request and response bodies. Every input is validated here, strictly."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from stockkeeper.domain.quantities import MAX_QUANTITY

if TYPE_CHECKING:
    from stockkeeper.services.reservations import ReservationView
    from stockkeeper.services.stock import LedgerEntry, LedgerPage
    from stockkeeper.services.wms import SyncRequest

# Printable, no surrounding whitespace: what a shopkeeper would type as a code.
CODE = r"^[^\s\x00-\x1f](?:[^\x00-\x1f]*[^\s\x00-\x1f])?$"
Sku = Annotated[str, Field(min_length=1, max_length=128, pattern=CODE)]
OrderId = Annotated[str, Field(min_length=1, max_length=128, pattern=CODE)]
ReferenceId = Annotated[str, Field(min_length=1, max_length=200, pattern=CODE)]
LocationCode = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
LotNumber = Annotated[str, Field(min_length=1, max_length=128, pattern=CODE)]
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
    batch_id: Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)] | None = None
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
    sku_batch_id: Annotated[int, Field(strict=True, ge=1, le=2**63 - 1)] | None = None
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


class BatchOut(BaseModel):
    batch_id: int
    location: str
    lot_number: str | None
    expires_at: str | None
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    available: int
    shortfall: int
    expired: bool
    version: int


class LevelOut(BaseModel):
    sku: str
    on_hand: int
    unavailable: int
    reserved: int
    committed: int
    available: int
    shortfall: int
    version: int
    updated_at: str


class StockOut(LevelOut):
    batches: list[BatchOut]


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

    @classmethod
    def of(cls, r: SyncRequest) -> WmsSyncOut:
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
            }
        )


class DeadLetterOut(BaseModel):
    id: int
    queue: str
    message_id: str | None
    routing_key: str | None
    body: Any
    raw_body: Any
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


class StatusOut(BaseModel):
    """The operator's page; each section is as its service reports it."""

    outbox: dict[str, Any]
    dead_letters: dict[str, int]
    broker: dict[str, str]
    queues: dict[str, int] | None = None
    wms: dict[str, Any]
    connectors: Any
    channels: Any


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


PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (401, 403, 404, 409, 413, 422)
}
