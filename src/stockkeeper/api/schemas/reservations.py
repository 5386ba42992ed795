"""Bodies of the reservation routes: reserve, release, confirm and fulfil in, the
reservation out (``ReservationOut``, and ``reservation_json``, the same answer built
without the models on the hottest routes, D-363)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from stockkeeper.api.schemas.fields import Body, LocationCode, OrderId, Quantity, Reason, Sku
from stockkeeper.domain.quantities import MAX_QUANTITY

if TYPE_CHECKING:
    from stockkeeper.services.reservations import ReservationView


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
