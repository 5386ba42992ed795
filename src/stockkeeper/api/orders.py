"""Orders on the inventory-api: place (202, the saga does the rest), poll, pay, cancel."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response

from stockkeeper.api import idempotency, schemas
from stockkeeper.api.auth import Principal, require
from stockkeeper.api.common import checked_path, location
from stockkeeper.api.order_schemas import (
    CancelIn,
    OrderAcceptedOut,
    OrderIn,
    OrderOut,
    PaymentIn,
)
from stockkeeper.api.problems import JSONResponse
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.orders import OrderView, PlaceOrder

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container

READ = Depends(require("inventory:read"))
WRITE = Depends(require("inventory:write"))
_order_id: TypeAdapter[str] = TypeAdapter(schemas.OrderId)
# A polled status must never come from a cache between us and the storefront.
NO_STORE = {"Cache-Control": "no-store"}


def _check_order_id(order_id: str) -> str:
    return checked_path(_order_id, order_id, "path.order_id")


def _order(view: OrderView) -> tuple[int, BaseModel]:
    return 200, OrderOut.of(view)


def add_order_routes(app: FastAPI, container: Container) -> None:
    orders = container.orders

    @app.post(
        "/orders",
        status_code=202,
        response_model=OrderAcceptedOut,
        responses={
            **schemas.repeated(OrderAcceptedOut, "the same order, its status now"),
            **schemas.problems(409, 413, 422),
        },
        summary="Place an order",
        openapi_extra=idempotency.key_header(),
        tags=["orders"],
    )
    async def place_order(body: OrderIn, request: Request, who: Principal = WRITE) -> Response:
        """Take an order: 202 at once, PENDING; poll GET /orders/{id} for what follows.
        The same order again: 200 with its status as it stands."""
        req = PlaceOrder(
            body.order_id,
            tuple(OrderLine(li.sku, li.quantity) for li in body.lines),
            body.ship_to.model_dump(exclude_none=True),
            body.required_delivery_date,
        )

        resp = await idempotency.run(
            request,
            who,
            body,
            lambda conn: orders.place(req, conn),
            lambda view: (202 if view.created else 200, OrderAcceptedOut.of(view)),
            one_statement=True,
        )
        if resp.status_code < 300:
            resp.headers["Location"] = location("/orders", body.order_id)
        return resp

    # An order id may hold "/" (sent as %2F, which the server decodes before routing):
    # the routes take the rest of the path, so the 202's Location reads back (D-467).
    @app.get(
        "/orders/{order_id:path}",
        response_model=OrderOut,
        responses=schemas.problems(404, 422),
        summary="An order's status",
        tags=["orders"],
    )
    async def get_order(order_id: str, who: Principal = READ) -> Response:
        """The order as it stands: its status, and why (reason, shortages), its carrier."""
        view = await orders.get(_check_order_id(order_id))
        return JSONResponse(schemas.as_json(OrderOut.of(view)), headers=NO_STORE)

    @app.post(
        "/orders/{order_id:path}/payment",
        response_model=OrderOut,
        responses=schemas.problems(404, 409, 413, 422),
        summary="Record an order's payment",
        openapi_extra=idempotency.key_header(),
        tags=["orders"],
    )
    async def pay_order(
        order_id: str, body: PaymentIn, request: Request, who: Principal = WRITE
    ) -> Response:
        """The payment's outcome. succeeded: the stock is committed (PAID) and a carrier
        is chosen next; failed: the stock is given back (CANCELLED). Too late: 409
        reservation-expired, and the order is EXPIRED."""
        oid = _check_order_id(order_id)

        return await idempotency.run(
            request,
            who,
            body,
            lambda conn: orders.pay(
                oid, succeeded=body.status == "succeeded", reference=body.reference, conn=conn
            ),
            _order,
        )

    @app.post(
        "/orders/{order_id:path}/cancel",
        response_model=OrderOut,
        responses=schemas.problems(404, 409, 413, 422),
        summary="Cancel an order",
        openapi_extra=idempotency.key_header(),
        tags=["orders"],
    )
    async def cancel_order(
        order_id: str, request: Request, body: CancelIn | None = None, who: Principal = WRITE
    ) -> Response:
        """Cancel the order and give its stock back; a repeat changes nothing. A shipped
        order cannot be cancelled (409)."""
        oid = _check_order_id(order_id)
        reason = body.reason if body else None

        return await idempotency.run(
            request, who, body, lambda conn: orders.cancel(oid, reason, conn), _order
        )
