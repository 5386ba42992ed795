"""Response bodies of the admin lists (api/admin_lists.py), built from the typed results
of services/listing.py. Every page has ``items`` and ``next``: pass ``next`` back as
``after`` for the following page; None on the last one."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from stockkeeper.api.schemas import LevelOut, WmsSyncOut
from stockkeeper.services.listing import (
    ChannelSku,
    LagPoint,
    OrderSummary,
    Page,
    ReservationSummary,
)
from stockkeeper.services.stock import LevelView
from stockkeeper.services.wms import SyncRequest
from stockkeeper.store.poll_requests import PollRequest


class SkuListOut(BaseModel):
    items: list[LevelOut]
    next: str | None

    @classmethod
    def of(cls, page: Page[LevelView]) -> SkuListOut:
        return cls(items=[LevelOut.from_level(s) for s in page.items], next=page.next)


class RequestedLineOut(BaseModel):
    sku: str
    quantity: int


class ReservationSummaryOut(BaseModel):
    order_id: str
    status: Literal["PENDING", "CONFIRMED", "CANCELLED", "EXPIRED", "FULFILLED"]
    location: str | None
    lines: list[RequestedLineOut]
    expires_at: datetime
    reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, r: ReservationSummary) -> ReservationSummaryOut:
        return cls.model_validate(
            {
                "order_id": r.order_id,
                "status": r.status,
                "location": r.location,
                "lines": [{"sku": s, "quantity": q} for s, q in r.lines],
                "expires_at": r.expires_at,
                "reason": r.reason,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
        )


class ReservationListOut(BaseModel):
    items: list[ReservationSummaryOut]
    next: str | None

    @classmethod
    def of(cls, page: Page[ReservationSummary]) -> ReservationListOut:
        return cls(items=[ReservationSummaryOut.of(r) for r in page.items], next=page.next)


class OrderSummaryOut(BaseModel):
    order_id: str
    status: Literal[
        "PENDING",
        "AWAITING_PAYMENT",
        "FAILED",
        "PAID",
        "READY_TO_SHIP",
        "SHIPPED",
        "CANCELLED",
        "EXPIRED",
    ]
    reason: str | None
    created_at: datetime
    decided_at: datetime | None
    updated_at: datetime
    payment_due_at: datetime | None
    age_s: float

    @classmethod
    def of(cls, o: OrderSummary) -> OrderSummaryOut:
        return cls.model_validate(
            {
                "order_id": o.order_id,
                "status": o.status,
                "reason": o.reason,
                "created_at": o.created_at,
                "decided_at": o.decided_at,
                "updated_at": o.updated_at,
                "payment_due_at": o.payment_due_at,
                "age_s": o.age_s,
            }
        )


class OrderListOut(BaseModel):
    items: list[OrderSummaryOut]
    next: str | None

    @classmethod
    def of(cls, page: Page[OrderSummary]) -> OrderListOut:
        return cls(items=[OrderSummaryOut.of(o) for o in page.items], next=page.next)


class WmsSyncListOut(BaseModel):
    items: list[WmsSyncOut]
    next: str | None

    @classmethod
    def of(cls, page: Page[SyncRequest], now: datetime) -> WmsSyncListOut:
        return cls(items=[WmsSyncOut.of(r, now) for r in page.items], next=page.next)


class ChannelSkuOut(BaseModel):
    sku: str
    status: Literal["PENDING", "SYNCED", "UNLISTED", "DEAD"]
    desired_version: int
    desired_quantity: int
    pushing_version: int | None
    acknowledged_version: int
    acknowledged_quantity: int | None
    acknowledged_at: datetime | None
    pending_since: datetime | None
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    unlisted_at: datetime | None

    @classmethod
    def of(cls, c: ChannelSku) -> ChannelSkuOut:
        return cls.model_validate(
            {
                "sku": c.sku,
                "status": c.status,
                "desired_version": c.desired_version,
                "desired_quantity": c.desired_quantity,
                "pushing_version": c.pushing_version,
                "acknowledged_version": c.acknowledged_version,
                "acknowledged_quantity": c.acknowledged_quantity,
                "acknowledged_at": c.acknowledged_at,
                "pending_since": c.pending_since,
                "attempts": c.attempts,
                "next_attempt_at": c.next_attempt_at,
                "last_error": c.last_error,
                "unlisted_at": c.unlisted_at,
            }
        )


class ChannelSkuListOut(BaseModel):
    channel: str
    items: list[ChannelSkuOut]
    next: str | None


class PollRequestOut(BaseModel):
    """A pending "poll now": the connector's poller takes it at its next round."""

    connector: str
    status: Literal["PENDING"] = "PENDING"
    requested_at: datetime
    requested_by: str

    @classmethod
    def of(cls, p: PollRequest) -> PollRequestOut:
        return cls(
            connector=p.connector,
            status="PENDING",
            requested_at=p.requested_at,
            requested_by=p.requested_by,
        )


class LagPointOut(BaseModel):
    at: datetime
    p50_ms: float
    p99_ms: float
    pushes: int


class LagHistoryOut(BaseModel):
    """Per channel, the sync lag of acknowledged pushes per bucket (oldest first)."""

    window_s: int
    bucket_s: int
    channels: dict[str, list[LagPointOut]]

    @classmethod
    def of(
        cls, window_s: int, bucket_s: int, series: dict[str, tuple[LagPoint, ...]]
    ) -> LagHistoryOut:
        return cls(
            window_s=window_s,
            bucket_s=bucket_s,
            channels={
                ch: [
                    LagPointOut(at=p.at, p50_ms=p.p50_ms, p99_ms=p.p99_ms, pushes=p.pushes)
                    for p in points
                ]
                for ch, points in series.items()
            },
        )
