"""Request and response bodies of the order routes. Every input is validated here."""

from __future__ import annotations

import re
from datetime import date
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field

from stockkeeper.api.schemas import (
    PRINTABLE,
    SHORT_TEXT,
    Body,
    LineIn,
    OrderId,
    Reason,
    ReferenceId,
)

if TYPE_CHECKING:
    from stockkeeper.services.orders import OrderView

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _date_text(value: Any) -> Any:
    # Only "YYYY-MM-DD": pydantic alone would also take numbers (epoch seconds) and
    # midnight datetimes, which a storefront sending either has surely not meant.
    if not isinstance(value, str) or not _DATE.match(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    return value


IsoDate = Annotated[date, BeforeValidator(_date_text)]
Text = Annotated[str, Field(min_length=1, max_length=200, description=PRINTABLE), SHORT_TEXT]
Short = Annotated[str, Field(min_length=1, max_length=100, description=PRINTABLE), SHORT_TEXT]
PostalCode = Annotated[str, Field(min_length=1, max_length=20, description=PRINTABLE), SHORT_TEXT]


class AddressIn(Body):
    name: Text
    line1: Text
    line2: Text | None = None
    city: Short
    region: Short | None = None
    postal_code: PostalCode | None = None
    # ISO 3166-1 alpha-2: what carriers are routed by.
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class OrderIn(Body):
    order_id: OrderId
    lines: list[LineIn] = Field(min_length=1, max_length=200)
    ship_to: AddressIn
    required_delivery_date: IsoDate | None = None


class PaymentIn(Body):
    status: Literal["succeeded", "failed"]
    reference: ReferenceId


class CancelIn(Body):
    reason: Reason | None = None


# -- responses: every 2xx body is built as one of these -----------------------------

Status = Literal[
    "PENDING",
    "AWAITING_PAYMENT",
    "FAILED",
    "PAID",
    "READY_TO_SHIP",
    "SHIPPED",
    "CANCELLED",
    "EXPIRED",
]


class OrderAcceptedOut(BaseModel):
    order_id: str
    status: Status

    @classmethod
    def of(cls, view: OrderView) -> OrderAcceptedOut:
        return cls.model_validate({"order_id": view.row.order_id, "status": view.row.status.value})


class OrderLineOut(BaseModel):
    sku: str
    quantity: int


class ShortageOut(BaseModel):
    sku: str
    requested: int
    available: int


class CarrierOut(BaseModel):
    id: str
    cost: str
    reliability: str
    transit_days: int
    estimated_delivery: str


class OrderOut(BaseModel):
    order_id: str
    status: Status
    lines: list[OrderLineOut]
    ship_to: dict[str, str]
    required_delivery_date: str | None = None
    reason: str | None = None
    shortages: list[ShortageOut] | None = None
    carrier: CarrierOut | None = None
    payment_reference: str | None = None
    payment_due_at: str | None = None
    decided_at: str | None = None
    created_at: str
    updated_at: str

    @classmethod
    def of(cls, view: OrderView) -> OrderOut:
        """The order as the storefront reads it; members without a value left out."""
        r = view.row
        doc: dict[str, Any] = {
            "order_id": r.order_id,
            "status": r.status.value,
            "lines": r.lines,
            "ship_to": r.ship_to,
        }
        optional = {
            "required_delivery_date": r.required_delivery_date,
            "reason": r.reason,
            "shortages": r.shortages,
            "carrier": r.carrier,
            "payment_reference": r.payment_reference,
            "payment_due_at": r.payment_due_at,
            "decided_at": r.decided_at,
        }
        for key, value in optional.items():
            if value is not None:
                doc[key] = value.isoformat() if isinstance(value, date) else value
        doc["created_at"] = r.created_at.isoformat()
        doc["updated_at"] = r.updated_at.isoformat()
        return cls.model_validate(doc)
