"""Bodies of the admin API's actions: a forced WMS sync in and out, dead letters, a
channel's SKUs it does not list."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field

from stockkeeper.api.schemas.fields import ID_TEXT, MAX_ROW_ID, Body, Reason, Sku

if TYPE_CHECKING:
    from stockkeeper.services.wms import SyncRequest


class WmsSyncIn(Body):
    reason: Reason
    requested_by: Annotated[str, Field(min_length=1, max_length=200), ID_TEXT]
    sku: Sku | None = None
    sku_batch_id: Annotated[int, Field(strict=True, ge=1, le=MAX_ROW_ID)] | None = None
    priority: Literal["low", "normal", "high"] = "normal"
    connector: Annotated[str, Field(min_length=1, max_length=64), ID_TEXT] | None = None


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
