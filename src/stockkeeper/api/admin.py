"""admin-api: force WMS sync, dead letters and status."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request
from pydantic import BaseModel, BeforeValidator
from starlette.responses import Response

from stockkeeper.api import idempotency, schemas
from stockkeeper.api.admin_lists import add_list_routes
from stockkeeper.api.auth import Principal, require
from stockkeeper.api.channel_rules import add_rule_routes
from stockkeeper.api.common import ConnectorId, RowId, new_app
from stockkeeper.api.problems import JSONResponse
from stockkeeper.api.ui.pages import add_ui_routes
from stockkeeper.config import ErpConnectorConfig, MarketplaceConnectorConfig
from stockkeeper.services.admin import PipesStatus
from stockkeeper.services.ingest import connector_status
from stockkeeper.services.listing import Listing
from stockkeeper.services.propagation import ChannelStatus
from stockkeeper.services.wms import WmsStatus
from stockkeeper.store.connector_state import Failure, Overview
from stockkeeper.store.dead_letters import DeadLetter

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container
    from stockkeeper.services.admin import Operations

ADMIN = Depends(require("admin"))


def _ok(model: BaseModel) -> Response:
    return JSONResponse(schemas.as_json(model))


def _blank_is_none(value: object) -> object:
    """``?queue=`` (a form's empty field, the contract's ``?queue=&limit=``) filters
    nothing, as no ``queue`` does (D-455)."""
    return None if value == "" else value


def _blank_is_zero(value: object) -> object:
    """``?after=`` is the first page, as on every other list (D-455)."""
    return 0 if value == "" else value


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def dead_letter_out(r: DeadLetter) -> schemas.DeadLetterOut:
    return schemas.DeadLetterOut(
        id=r.id,
        queue=r.queue,
        message_id=str(r.message_id) if r.message_id else None,
        routing_key=r.routing_key,
        body=r.body,
        # The exact bytes, for a body that is not JSON (any bytes at all).
        raw_body_base64=(
            base64.b64encode(r.raw_body).decode() if r.body is None and r.raw_body else None
        ),
        headers=r.headers,
        error=r.error,
        attempts=r.attempts,
        status=r.status,
        created_at=r.created_at.isoformat(),
        resolved_at=_iso(r.resolved_at),
        resolved_by=r.resolved_by,
    )


def failure_out(f: Failure | None) -> schemas.FailureOut | None:
    return schemas.FailureOut(message=f.message, at=f.at.isoformat()) if f else None


def connector_out(r: Overview) -> schemas.ConnectorStatusOut:
    return schemas.ConnectorStatusOut(
        cursor=schemas.CursorOut(
            last_modified=_iso(r.last_modified),
            sku=r.sku,
            token=r.token,
            pages=r.pages or 0,
            records=r.records or 0,
            updated_at=_iso(r.cursor_updated_at),
        ),
        circuit=r.circuit or "closed",
        consecutive_failures=r.failures or 0,
        circuit_opened_at=_iso(r.opened_at),
        last_error=r.last_error,
        last_failure=failure_out(r.last_failure),
    )


def wms_out(w: WmsStatus) -> schemas.WmsStatusOut:
    return schemas.WmsStatusOut(
        has_change_token=w.has_change_token,
        last_full_sync_at=_iso(w.last_full_sync_at),
        last_incremental_sync_at=_iso(w.last_incremental_sync_at),
        next_incremental_sync_at=_iso(w.next_incremental_sync_at),
        open_syncs=w.open_syncs,
        outbound_pending=w.outbound_pending,
        outbound_dead=w.outbound_dead,
        outbound_oldest_pending_seconds=w.outbound_oldest_pending_seconds,
        last_failure=failure_out(w.last_failure),
    )


def channel_out(ch: str, c: ChannelStatus) -> schemas.ChannelStatusOut:
    return schemas.ChannelStatusOut(
        type=c.type,
        lag_ms=schemas.LagOut(p50=c.lag_p50_ms, p99=c.lag_p99_ms, samples=c.lag_samples),
        window_s=c.window_s,
        alerting=c.alerting,
        alert_threshold_ms=c.alert_threshold_ms,
        pending=c.pending,
        synced=c.synced,
        unlisted=c.unlisted,
        unlisted_skus=f"/admin/channels/{ch}/unlisted",
        unlisted_recheck_s=c.unlisted_recheck_s,
        dead=c.dead,
        oldest_pending_s=c.oldest_pending_s,
        pushes_in_window=c.pushes_in_window,
        changes_in_window=c.changes_in_window,
        last_reconciled_at=_iso(c.last_reconciled_at),
        drift_repaired=c.drift_repaired,
        divergence_found=c.divergence_found,
        last_sampled_at=_iso(c.last_sampled_at),
        last_failure=failure_out(c.last_failure),
        locations=None if c.locations is None else list(c.locations),
    )


def status_out(
    pipes: PipesStatus,
    wms: dict[str, WmsStatus],
    connectors: list[Overview],
    channels: dict[str, ChannelStatus],
) -> schemas.StatusOut:
    broker = schemas.BrokerStatusOut(kind=pipes.broker)
    if pipes.broker_error is not None:
        broker.error = pipes.broker_error
    out = schemas.StatusOut(
        outbox=schemas.OutboxStatusOut(
            pending=pipes.outbox.pending,
            failed=pipes.outbox.failed,
            oldest_pending_seconds=pipes.outbox.oldest_pending_s,
        ),
        dead_letters=pipes.dead_letters,
        broker=broker,
        wms={k: wms_out(v) for k, v in wms.items()},
        connectors={r.connector: connector_out(r) for r in connectors},
        channels={k: channel_out(k, v) for k, v in channels.items()},
    )
    if pipes.queues is not None:
        out.queues = pipes.queues
    return out


def create_admin_app(container: Container) -> FastAPI:
    async def ops() -> Operations:
        return await container.operations()

    async def refresh_pipes() -> None:
        # Outbox backlog, open dead letters and queue depths are measured, not counted:
        # each scrape of admin-api's /metrics measures them again (D-405).
        await (await ops()).status()

    app = new_app(container, "admin-api", "stockkeeper admin-api", before_scrape=refresh_pipes)

    @app.get(
        "/admin/dead-letters",
        response_model=schemas.DeadLetterListOut,
        responses=schemas.problems(422),
        summary="List dead letters",
        tags=["dead letters"],
    )
    async def list_dead_letters(
        queue: Annotated[
            Annotated[str, schemas.ID_TEXT] | None,
            Query(max_length=200, description="one queue's; empty or absent: every queue's"),
            BeforeValidator(_blank_is_none),
        ] = None,
        status: Literal["DEAD", "REPLAYED", "DISCARDED"] | None = "DEAD",
        after: Annotated[
            int,
            Query(ge=0, le=schemas.MAX_ROW_ID, description="the `next` of the previous page"),
            BeforeValidator(_blank_is_zero),
        ] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        who: Principal = ADMIN,
    ) -> Response:
        """Messages that failed every attempt (or could not be read), oldest first."""
        page = await (await ops()).dead_letters(queue, status, after, limit)
        return _ok(
            schemas.DeadLetterListOut(
                items=[dead_letter_out(r) for r in page.items], next=page.next
            )
        )

    @app.post(
        "/admin/dead-letters/{dead_letter_id}/replay",
        response_model=schemas.DeadLetterOut,
        responses=schemas.problems(404, 409, 422),
        summary="Replay a dead letter",
        openapi_extra=idempotency.key_header(),
        tags=["dead letters"],
    )
    async def replay(dead_letter_id: RowId, request: Request, who: Principal = ADMIN) -> Response:
        """Send the message back to its queue as a first attempt."""
        operations = await ops()
        return await idempotency.run(
            request,
            who,
            None,
            lambda conn: operations.replay(dead_letter_id, who.name, conn),
            lambda dead: (200, dead_letter_out(dead)),
        )

    @app.post(
        "/admin/dead-letters/{dead_letter_id}/discard",
        response_model=schemas.DeadLetterOut,
        responses=schemas.problems(404, 409, 422),
        summary="Discard a dead letter",
        openapi_extra=idempotency.key_header(),
        tags=["dead letters"],
    )
    async def discard(dead_letter_id: RowId, request: Request, who: Principal = ADMIN) -> Response:
        """Drop the message for good (kept in the table, marked DISCARDED)."""
        operations = await ops()
        return await idempotency.run(
            request,
            who,
            None,
            lambda conn: operations.discard(dead_letter_id, who.name, conn),
            lambda dead: (200, dead_letter_out(dead)),
        )

    @app.post(
        "/admin/wms/sync",
        status_code=202,
        response_model=schemas.WmsSyncOut,
        responses=schemas.problems(404, 409, 413, 422),
        summary="Force a WMS sync",
        openapi_extra=idempotency.key_header(),
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
        channel: ConnectorId,
        after: Annotated[str, Query(max_length=128), schemas.ID_TEXT] = "",
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
        open syncs and outbound backlog; per polled connector its cursor, circuit and last
        failure; per sales channel its sync lag (p50, p99), backlog and alert."""
        pipes = await (await ops()).status()
        wms = await container.wms.status()
        polled = [
            c.id
            for c in container.settings.connectors
            if isinstance(c, ErpConnectorConfig | MarketplaceConnectorConfig)
        ]
        async with container.pool.acquire() as conn:
            connectors = await connector_status(conn, polled)
        channels = await container.propagation.status()
        return _ok(status_out(pipes, wms, connectors, channels))

    listing = Listing(container.pool, container.settings, container.clock)
    add_list_routes(app, listing)
    add_ui_routes(app, container, listing)
    add_rule_routes(app, container)
    return app
