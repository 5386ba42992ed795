"""inventory-api: reserve, release, confirm, fulfil, read stock, receipts, adjustments;
the order routes (api/orders.py) and webhooks (api/webhooks.py) join it here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, TypeAdapter
from starlette.responses import Response

from stockkeeper.api import idempotency, schemas
from stockkeeper.api.auth import Principal, require
from stockkeeper.api.common import checked_path, location, new_app
from stockkeeper.api.orders import add_order_routes
from stockkeeper.api.problems import ApiProblem, JSONResponse
from stockkeeper.api.webhooks import add_webhook_routes
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.coalescer import ReserveCoalescer
from stockkeeper.services.reservations import ReservationView, ReserveRequest
from stockkeeper.services.stock import (
    Adjusted,
    Adjustment,
    Applied,
    Receipt,
    Received,
)
from stockkeeper.store.pool import Conn

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container

READ = Depends(require("inventory:read"))
WRITE = Depends(require("inventory:write"))
ADMIN = Depends(require("admin"))
MAX_BULK = 500
_sku_adapter: TypeAdapter[str] = TypeAdapter(schemas.Sku)
_order_id: TypeAdapter[str] = TypeAdapter(schemas.OrderId)


def _check_sku(sku: str, where: str = "path") -> str:
    return checked_path(_sku_adapter, sku, f"{where}.sku")


def _held(view: ReservationView) -> tuple[int, dict[str, Any]]:
    return 200, schemas.reservation_json(view)


def _received(done: Applied[Received]) -> tuple[int, BaseModel]:
    """A receipt: 201 when applied now, 200 with the first answer on a repeat."""
    r = done.result
    return (201 if done.created else 200), schemas.ReceiptOut(
        reference_id=r.reference_id,
        batch_id=r.batch_id,
        sku=r.sku,
        quantity=r.quantity,
        location=r.location,
        lot_number=r.lot_number,
        expires_at=r.expires_at.isoformat() if r.expires_at else None,
        level=schemas.LevelOut.from_level(r.level),
    )


def _adjusted(done: Applied[Adjusted]) -> tuple[int, BaseModel]:
    """An adjustment: 201 when applied now, 200 with the first answer on a repeat."""
    a = done.result
    return (201 if done.created else 200), schemas.AdjustmentOut(
        reference_id=a.reference_id,
        sku=a.sku,
        batch_id=a.batch_id,
        quantity=a.quantity,
        delta=a.delta,
        set=a.set,
        reason=a.reason,
        applied_delta=a.applied_delta,
        level=schemas.LevelOut.from_level(a.level),
    )


def _ok(model: BaseModel) -> Response:
    return JSONResponse(schemas.as_json(model))


def create_inventory_app(container: Container) -> FastAPI:
    app = new_app(container, "inventory-api", "stockkeeper inventory-api")
    svc = container.reservations
    stock = container.stock
    # One coalescer per process (D-200); a request with an Idempotency-Key runs in the
    # key's transaction instead, so it is applied on its own.
    conc = container.settings.concurrency
    coalescer = (
        ReserveCoalescer(
            svc,
            window_ms=conc.coalesce_window_ms,
            max_batch=conc.coalesce_max_batch,
            max_in_flight=conc.coalesce_max_in_flight,
            failpoints=container.failpoints,
        )
        if conc.coalesce_max_batch > 1
        else None
    )
    app.state.coalescer = coalescer

    async def reserve_one(req: ReserveRequest, conn: Conn | None) -> ReservationView:
        if conn is None and coalescer is not None:
            return await coalescer.reserve(req)
        return await svc.reserve(req, conn)

    @app.post(
        "/inventory/reserve",
        status_code=201,
        response_model=schemas.ReservationOut,
        responses={
            **schemas.repeated(schemas.ReservationOut, "the same order, as it stands now"),
            **schemas.problems(409, 413, 422),
        },
        summary="Reserve stock for an order",
        openapi_extra=idempotency.key_header(),
        tags=["reservations"],
    )
    async def reserve(
        body: schemas.ReserveIn, request: Request, who: Principal = WRITE
    ) -> Response:
        """Hold stock for all lines of an order, or none. A repeat of the same order: 200."""
        req = ReserveRequest(
            body.order_id,
            tuple(OrderLine(li.sku, li.quantity) for li in body.lines),
            body.ttl_seconds,
            body.location,
        )
        resp = await idempotency.run(
            request,
            who,
            body,
            lambda conn: reserve_one(req, conn),
            lambda view: (201 if view.created else 200, schemas.reservation_json(view)),
        )
        if resp.status_code < 300:  # where the reservation reads back (D-450)
            resp.headers["Location"] = location("/reservations", body.order_id)
        return resp

    @app.post(
        "/inventory/release",
        response_model=schemas.ReservationOut,
        responses=schemas.problems(404, 409, 413, 422),
        summary="Release a reservation",
        openapi_extra=idempotency.key_header(),
        tags=["reservations"],
    )
    async def release(
        body: schemas.ReleaseIn, request: Request, who: Principal = WRITE
    ) -> Response:
        """Give the stock of a PENDING or CONFIRMED reservation back. Repeats are harmless."""
        return await idempotency.run(
            request, who, body, lambda conn: svc.release(body.order_id, body.reason, conn), _held
        )

    @app.post(
        "/inventory/confirm",
        response_model=schemas.ReservationOut,
        responses=schemas.problems(404, 409, 413, 422),
        summary="Confirm a reservation (payment taken)",
        openapi_extra=idempotency.key_header(),
        tags=["reservations"],
    )
    async def confirm(body: schemas.OrderRef, request: Request, who: Principal = WRITE) -> Response:
        """Turn a held reservation into committed stock (payment taken)."""
        return await idempotency.run(
            request, who, body, lambda conn: svc.confirm(body.order_id, conn), _held
        )

    @app.post(
        "/inventory/fulfil",
        response_model=schemas.ReservationOut,
        responses=schemas.problems(404, 409, 413, 422),
        summary="Fulfil a reservation (shipped)",
        openapi_extra=idempotency.key_header(),
        tags=["reservations"],
    )
    async def fulfil(body: schemas.OrderRef, request: Request, who: Principal = WRITE) -> Response:
        """The order shipped: committed and on_hand go down."""
        return await idempotency.run(
            request, who, body, lambda conn: svc.fulfil(body.order_id, conn), _held
        )

    @app.post(
        "/inventory/receipts",
        status_code=201,
        response_model=schemas.ReceiptOut,
        responses={
            **schemas.repeated(schemas.ReceiptOut, "the same reference_id, its first answer"),
            **schemas.problems(409, 413, 422),
        },
        summary="Receive stock",
        openapi_extra=idempotency.key_header(),
        tags=["stock"],
    )
    async def receipts(
        body: schemas.ReceiptIn, request: Request, who: Principal = WRITE
    ) -> Response:
        """Stock arrived. Applied once per reference_id; a repeat answers 200."""
        r = Receipt(
            body.sku,
            body.quantity,
            body.reference_id,
            body.location,
            body.lot_number,
            body.expires_at,
        )
        return await idempotency.run(
            request,
            who,
            body,
            lambda conn: stock.receive(r, conn),
            _received,
        )

    @app.post(
        "/inventory/adjustments",
        status_code=201,
        response_model=schemas.AdjustmentOut,
        responses={
            **schemas.repeated(schemas.AdjustmentOut, "the same reference_id, its first answer"),
            **schemas.problems(404, 409, 413, 422),
        },
        summary="Adjust a batch's figures",
        openapi_extra=idempotency.key_header(),
        tags=["stock"],
    )
    async def adjustments(
        body: schemas.AdjustmentIn, request: Request, who: Principal = ADMIN
    ) -> Response:
        """Correct on_hand or unavailable of a batch. Applied once per reference_id."""
        a = Adjustment(
            body.sku,
            body.quantity,
            body.reason,
            body.reference_id,
            body.batch_id,
            body.delta,
            body.set,
        )
        return await idempotency.run(
            request,
            who,
            body,
            lambda conn: stock.adjust(a, conn),
            _adjusted,
        )

    @app.get(
        "/inventory",
        response_model=schemas.StockListOut,
        responses=schemas.problems(422),
        summary="Stock of several SKUs",
        tags=["stock"],
    )
    async def bulk(
        sku: Annotated[list[str], Query(max_length=MAX_BULK)] = [],  # noqa: B006
        who: Principal = READ,
    ) -> Response:
        """Stock of up to 500 SKUs: ?sku=a&sku=b."""
        if not sku:
            raise ApiProblem.invalid("query.sku", "give at least one ?sku=")
        if len(sku) > MAX_BULK:
            raise ApiProblem.invalid("query.sku", f"at most {MAX_BULK} SKUs per request")
        wanted = list(dict.fromkeys(_check_sku(s, "query") for s in sku))
        items = await stock.get_many(wanted)
        found = {i.sku for i in items}
        return _ok(
            schemas.StockListOut(
                items=[schemas.StockOut.of(i) for i in items],
                not_found=[s for s in wanted if s not in found],
            )
        )

    # A SKU may hold "/" (sent as %2F, which the server decodes before routing): the
    # routes take the rest of the path, the ledger's first, so ".../ledger" is its own.
    @app.get(
        "/inventory/{sku:path}/ledger",
        response_model=schemas.LedgerOut,
        responses=schemas.problems(404, 422),
        summary="A SKU's ledger",
        tags=["stock"],
    )
    async def ledger(
        sku: str,
        after: Annotated[int, Query(ge=0, le=schemas.MAX_ROW_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        who: Principal = READ,
    ) -> Response:
        """The SKU's ledger, oldest first; pass ``next`` as ``after`` for the next page."""
        page = await stock.ledger(_check_sku(sku), after, limit)
        return _ok(schemas.LedgerOut.of(page))

    @app.get(
        "/inventory/{sku:path}",
        response_model=schemas.StockOut,
        responses=schemas.problems(404, 422),
        summary="Stock of one SKU",
        tags=["stock"],
    )
    async def get_one(sku: str, who: Principal = READ) -> Response:
        """A SKU's figures and its batches."""
        return _ok(schemas.StockOut.of(await stock.get(_check_sku(sku))))

    @app.get(
        "/reservations/{order_id:path}",
        response_model=schemas.ReservationOut,
        responses=schemas.problems(404, 422),
        summary="A reservation",
        tags=["reservations"],
    )
    async def get_reservation(order_id: str, who: Principal = READ) -> Response:
        """A reservation as it stands."""
        oid = checked_path(_order_id, order_id, "path.order_id")
        return _ok(schemas.ReservationOut.of(await svc.get(oid)))

    if container.settings.api.expose_noop:

        @app.post("/noop", include_in_schema=False)
        async def noop(body: schemas.ReserveIn, who: Principal = WRITE) -> Response:
            """Auth and body validation, no database: the HTTP stack's ceiling for bench/."""
            return JSONResponse({"order_id": body.order_id}, status_code=201)

    add_webhook_routes(app, container)
    add_order_routes(app, container)
    return app
