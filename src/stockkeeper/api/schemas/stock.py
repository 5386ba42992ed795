"""Bodies of the stock routes: receipts and adjustments in; a SKU's level, its batches,
a list of SKUs and the ledger out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field, model_validator

from stockkeeper.api.schemas.fields import (
    MAX_ROW_ID,
    Body,
    Instant,
    LocationCode,
    LotNumber,
    Quantity,
    Reason,
    ReferenceId,
    Sku,
)
from stockkeeper.domain.quantities import MAX_QUANTITY

if TYPE_CHECKING:
    from stockkeeper.services.stock import (
        BatchFigures,
        LedgerEntry,
        LedgerPage,
        LevelView,
        SkuStock,
    )


class ReceiptIn(Body):
    sku: Sku
    quantity: Quantity
    reference_id: ReferenceId
    location: LocationCode | None = None
    lot_number: LotNumber | None = None
    expires_at: Instant | None = None


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
