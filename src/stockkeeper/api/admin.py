"""admin-api: force WMS sync, dead letters and status."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from stockkeeper.api import idempotency, schemas
from stockkeeper.api.admin_lists import add_list_routes
from stockkeeper.api.auth import Principal, require
from stockkeeper.api.channel_rules import add_rule_routes
from stockkeeper.api.common import RowId, new_app
from stockkeeper.api.problems import JSONResponse
from stockkeeper.api.ui.pages import add_ui_routes
from stockkeeper.config import ErpConnectorConfig, MarketplaceConnectorConfig
from stockkeeper.services.ingest import connector_status
from stockkeeper.services.listing import Listing

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container
    from stockkeeper.services.admin import Operations

ADMIN = Depends(require("admin"))


def _ok(model: BaseModel) -> Response:
    return JSONResponse(schemas.as_json(model))


def create_admin_app(container: Container) -> FastAPI:
    app = new_app(container, "admin-api", "stockkeeper admin-api")

    async def ops() -> Operations:
        return await container.operations()

    @app.get(
        "/admin/dead-letters",
        response_model=schemas.DeadLetterListOut,
        responses=schemas.problems(422),
        summary="List dead letters",
        tags=["dead letters"],
    )
    async def list_dead_letters(
        queue: Annotated[str | None, Query(max_length=200)] = None,
        status: Literal["DEAD", "REPLAYED", "DISCARDED"] | None = "DEAD",
        after: Annotated[int, Query(ge=0, le=schemas.MAX_ROW_ID)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """Messages that failed every attempt (or could not be read), oldest first."""
        page = await (await ops()).dead_letters(queue, status, after, limit)
        return _ok(schemas.DeadLetterListOut.model_validate(page))

    @app.post(
        "/admin/dead-letters/{dead_letter_id}/replay",
        response_model=schemas.DeadLetterOut,
        responses=schemas.problems(404, 409, 422),
        summary="Replay a dead letter",
        tags=["dead letters"],
    )
    async def replay(dead_letter_id: RowId, who: Principal = ADMIN) -> Response:
        """Send the message back to its queue as a first attempt."""
        dead = await (await ops()).replay(dead_letter_id, who.name)
        return _ok(schemas.DeadLetterOut.model_validate(dead))

    @app.post(
        "/admin/dead-letters/{dead_letter_id}/discard",
        response_model=schemas.DeadLetterOut,
        responses=schemas.problems(404, 409, 422),
        summary="Discard a dead letter",
        tags=["dead letters"],
    )
    async def discard(dead_letter_id: RowId, who: Principal = ADMIN) -> Response:
        """Drop the message for good (kept in the table, marked DISCARDED)."""
        dead = await (await ops()).discard(dead_letter_id, who.name)
        return _ok(schemas.DeadLetterOut.model_validate(dead))

    @app.post(
        "/admin/wms/sync",
        status_code=202,
        response_model=schemas.WmsSyncOut,
        responses=schemas.problems(404, 409, 413, 422),
        summary="Force a WMS sync",
        dependencies=[idempotency.KEY_HEADER],
        tags=["wms"],
    )
    async def force_wms_sync(
        body: schemas.WmsSyncIn, request: Request, who: Principal = ADMIN
    ) -> Response:
        """Ask the wms-sync worker to re-read one batch, one SKU, or everything (no sku
        and no sku_batch_id) from the WMS. Answers at once; follow the request by id."""

        return await idempotency.run(
            request,
            who,
            body,
            lambda conn: container.wms.request_sync(
                reason=body.reason,
                requested_by=body.requested_by,
                sku=body.sku,
                sku_batch_id=body.sku_batch_id,
                priority=body.priority,
                connector=body.connector,
                conn=conn,
            ),
            lambda req: (202, schemas.WmsSyncOut.of(req, container.clock())),
        )

    @app.get(
        "/admin/wms/sync/{sync_request_id}",
        response_model=schemas.WmsSyncOut,
        responses=schemas.problems(404, 422),
        summary="A WMS sync request",
        tags=["wms"],
    )
    async def wms_sync_status(sync_request_id: RowId, who: Principal = ADMIN) -> Response:
        """PENDING, IN_PROGRESS, then DONE or FAILED (with the reason), and the tallies."""
        return _ok(
            schemas.WmsSyncOut.of(
                await container.wms.get_request(sync_request_id), container.clock()
            )
        )

    @app.get(
        "/admin/channels/{channel}/unlisted",
        response_model=schemas.UnlistedListOut,
        responses=schemas.problems(404, 422),
        summary="A channel's SKUs it does not list",
        tags=["channels"],
    )
    async def channel_unlisted(
        channel: Annotated[str, Path(max_length=200)],
        after: Annotated[str, Query(max_length=128)] = "",
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """The SKUs the channel said it does not list, by SKU (keyset: ``after``). Each is
        probed again by its next level change once the channel's unlisted_recheck_s has
        passed; listed on the channel, it flows again."""
        page = await container.propagation.unlisted(channel, after, limit)
        return _ok(
            schemas.UnlistedListOut(
                channel=page.channel,
                items=[schemas.UnlistedSkuOut(sku=u.sku, since=u.since) for u in page.items],
                next=page.next,
            )
        )

    @app.get(
        "/admin/status",
        response_model=schemas.StatusOut,
        responses=schemas.problems(),
        summary="Operator status",
        tags=["status"],
    )
    async def status(who: Principal = ADMIN) -> Response:
        """Outbox backlog, queue depths, open dead letters; per WMS its sync schedule,
        open syncs and outbound backlog; per polled connector its cursor and circuit;
        per sales channel its sync lag (p50, p99), backlog and alert."""
        doc = await (await ops()).status()
        doc["wms"] = await container.wms.status()
        polled = [
            c.id
            for c in container.settings.connectors
            if isinstance(c, ErpConnectorConfig | MarketplaceConnectorConfig)
        ]
        async with container.pool.acquire() as conn:
            doc["connectors"] = await connector_status(conn, polled)
        doc["channels"] = await container.propagation.status()
        return _ok(schemas.StatusOut.model_validate(doc))

    listing = Listing(container.pool, container.settings, container.clock)
    add_list_routes(app, listing)
    add_ui_routes(app, container, listing)
    add_rule_routes(app, container)
    return app
