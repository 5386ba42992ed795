"""admin-api: the lists (SKUs, reservations, orders, WMS sync requests, a channel's
unsettled SKUs) and "poll now" for the polled connectors (issue 16).

Every list is keyset-paged: ``after`` takes the ``next`` of the previous page; ``limit``
is bounded. The ops page (api/ui/) reads the same services.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request
from starlette.responses import Response

from stockkeeper.api import idempotency, schemas
from stockkeeper.api.auth import Principal, require
from stockkeeper.api.common import ConnectorId
from stockkeeper.api.list_schemas import (
    ChannelSkuListOut,
    ChannelSkuOut,
    LagHistoryOut,
    OrderListOut,
    PollRequestOut,
    ReservationListOut,
    SkuListOut,
    WmsSyncListOut,
)
from stockkeeper.api.problems import JSONResponse
from stockkeeper.services.listing import Listing

ADMIN = Depends(require("admin"))
Cursor = Annotated[
    str | None,
    Query(max_length=200, description="the `next` of the previous page"),
    schemas.ID_TEXT,
]
MAX_AGE_S = 10 * 365 * 86_400.0

ReservationStatus = Literal["PENDING", "CONFIRMED", "CANCELLED", "EXPIRED", "FULFILLED"]
OrderStatus = Literal[
    "PENDING",
    "AWAITING_PAYMENT",
    "FAILED",
    "PAID",
    "READY_TO_SHIP",
    "SHIPPED",
    "CANCELLED",
    "EXPIRED",
]
SyncStatus = Literal["PENDING", "IN_PROGRESS", "DONE", "FAILED"]


def add_list_routes(app: FastAPI, listing: Listing) -> None:
    """The list and "poll now" routes, on the admin app."""

    @app.get(
        "/admin/skus",
        response_model=SkuListOut,
        responses=schemas.problems(422),
        summary="List and search SKUs",
        tags=["lists"],
    )
    async def list_skus(
        prefix: Annotated[
            str, Query(max_length=128, description="SKUs starting with it"), schemas.ID_PART
        ] = "",
        sold_out: Annotated[bool, Query(description="only SKUs with available = 0")] = False,
        short: Annotated[bool, Query(description="only SKUs with shortfall > 0")] = False,
        after: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """SKUs with their figures, by SKU in byte order (so a prefix is a range)."""
        page = await listing.skus(
            prefix=prefix,
            after=after,
            unavailable_only=sold_out,
            shortfall_only=short,
            limit=limit,
        )
        return JSONResponse(schemas.as_json(SkuListOut.of(page)))

    @app.get(
        "/admin/reservations",
        response_model=ReservationListOut,
        responses=schemas.problems(422),
        summary="List reservations",
        tags=["lists"],
    )
    async def list_reservations(
        status: ReservationStatus | None = None,
        sku: Annotated[
            str | None, Query(max_length=128, description="holding this SKU"), schemas.ID_TEXT
        ] = None,
        expiring_within_s: Annotated[
            float | None,
            Query(ge=0, le=MAX_AGE_S, description="PENDING ones due within this time"),
        ] = None,
        after: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """Reservations by age (optionally of one status or holding one SKU); with
        ``expiring_within_s``, the PENDING ones about to expire, soonest first."""
        page = await listing.reservations(
            status=status,
            sku=sku,
            expiring_within_s=expiring_within_s,
            after=after,
            limit=limit,
        )
        return JSONResponse(schemas.as_json(ReservationListOut.of(page)))

    @app.get(
        "/admin/orders",
        response_model=OrderListOut,
        responses=schemas.problems(422),
        summary="List orders",
        tags=["lists"],
    )
    async def list_orders(
        status: OrderStatus | None = None,
        older_than_s: Annotated[
            float, Query(ge=0, le=MAX_AGE_S, description="placed at least this long ago")
        ] = 0,
        after: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """Orders oldest first, with their age (optionally of one status)."""
        page = await listing.orders(
            status=status, older_than_s=older_than_s, after=after, limit=limit
        )
        return JSONResponse(schemas.as_json(OrderListOut.of(page)))

    @app.get(
        "/admin/wms/sync",
        response_model=WmsSyncListOut,
        responses=schemas.problems(422),
        summary="List WMS sync requests",
        tags=["wms"],
    )
    async def list_wms_syncs(
        status: SyncStatus | None = None,
        after: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        who: Principal = ADMIN,
    ) -> Response:
        """Force and scheduled sync requests, newest first, with how far each got."""
        page = await listing.sync_requests(status=status, after=after, limit=limit)
        return JSONResponse(schemas.as_json(WmsSyncListOut.of(page, listing.clock())))

    @app.get(
        "/admin/channels/{channel}/skus",
        response_model=ChannelSkuListOut,
        responses=schemas.problems(404, 422),
        summary="A channel's SKUs not in sync",
        tags=["channels"],
    )
    async def channel_skus(
        channel: ConnectorId,
        state: Literal["all", "pending", "unlisted", "failing"] = "all",
        after: Cursor = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """The channel's SKUs that are PENDING, UNLISTED, DEAD, failing (an error on the
        last try) or acknowledged at an older version than we hold, by SKU: the version
        we hold, the one in flight, and the newest the channel acknowledged."""
        page = await listing.channel_skus(channel, state=state, after=after, limit=limit)
        body = ChannelSkuListOut(
            channel=channel, items=[ChannelSkuOut.of(c) for c in page.items], next=page.next
        )
        return JSONResponse(schemas.as_json(body))

    @app.get(
        "/admin/channels/lag",
        response_model=LagHistoryOut,
        responses=schemas.problems(422),
        summary="Sync lag over time, per channel",
        tags=["channels"],
    )
    async def channel_lag(
        window_s: Annotated[int, Query(ge=60, le=86_400)] = 3600,
        bucket_s: Annotated[int, Query(ge=10, le=3600)] = 60,
        who: Principal = ADMIN,
    ) -> Response:
        """p50 and p99 of the lag of acknowledged pushes per bucket over the window,
        from the push log every propagator writes (kept push_log_retention_s)."""
        series = await listing.lag_history(window_s=window_s, bucket_s=bucket_s)
        return JSONResponse(schemas.as_json(LagHistoryOut.of(window_s, bucket_s, series)))

    @app.post(
        "/admin/connectors/{connector}/poll",
        status_code=202,
        response_model=PollRequestOut,
        responses=schemas.problems(404, 422),
        summary="Poll now",
        openapi_extra=idempotency.key_header(),
        tags=["connectors"],
    )
    async def poll_now(
        connector: ConnectorId,
        request: Request,
        who: Principal = ADMIN,
    ) -> Response:
        """Ask the poller of an ERP or marketplace connector to run its next poll at
        once, on whichever replica holds it. 202 with the pending request; asked again
        while it is pending, the same request. 404 for a connector that is not polled."""
        return await idempotency.run(
            request,
            who,
            None,
            lambda conn: listing.request_poll(connector, who.name, conn),
            lambda req: (202, PollRequestOut.of(req)),
        )
