"""``POST /webhooks/{connector}``: signed updates from outside, on the inventory-api.

The signature is checked on the raw body before anything is parsed; a missing, wrong or
stale one is 401 and nothing is stored. A body over the connector's limit is 413, one
that does not parse 422. A good delivery is queued (an ``ingest.<connector>`` outbox
event) together with its delivery id in one transaction and answered 202; the same
delivery again is 202 with nothing new queued.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from starlette.responses import Response

from stockkeeper.api.common import ConnectorId
from stockkeeper.api.problems import ApiProblem, JSONResponse
from stockkeeper.api.schemas import WebhookOut, problems
from stockkeeper.bootstrap import env_secret
from stockkeeper.config import WebhookConnectorConfig
from stockkeeper.connectors.signatures import SignatureError
from stockkeeper.connectors.webhook import PRESETS, Unparseable
from stockkeeper.services.ingest import queue_records
from stockkeeper.services.unit import transaction
from stockkeeper.store import webhook_deliveries
from stockkeeper.store.webhook_deliveries import Claim

if TYPE_CHECKING:
    from stockkeeper.bootstrap import Container


def add_webhook_routes(app: FastAPI, container: Container) -> None:
    hooks = {c.id: c for c in container.settings.connectors_of(WebhookConnectorConfig)}
    secrets = {name: (env_secret(cfg, "secret_env") or "").encode() for name, cfg in hooks.items()}
    counted = container.metrics.webhook_requests

    def refuse(name: str, status: int, slug: str, detail: str, **headers: str) -> ApiProblem:
        counted.labels(connector=name, status=str(status)).inc()
        return ApiProblem(slug, detail, headers or None)

    @app.post(
        "/webhooks/{connector}",
        status_code=202,
        response_model=WebhookOut,
        responses=problems(401, 404, 409, 413, 422, authenticated=False),
        summary="Receive a signed webhook delivery",
        # No bearer token: the connector's signature over the raw body is the check.
        openapi_extra={"security": []},
        tags=["webhooks"],
    )
    async def receive_webhook(connector: ConnectorId, request: Request) -> Response:
        """A signed delivery of levels or sales from a configured webhook connector."""
        cfg = hooks.get(connector)
        if cfg is None:
            raise ApiProblem("not-found", f"no webhook connector {connector!r}")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise refuse(connector, 413, "payload-too-large", _too_large(cfg))
        body = await request.body()
        if len(body) > cfg.max_body_bytes:
            raise refuse(connector, 413, "payload-too-large", _too_large(cfg))
        preset = PRESETS[cfg.preset]
        try:
            preset.verify(cfg, secrets[connector], request.headers, body)
        except SignatureError as exc:
            raise refuse(connector, 401, "unauthorized", f"signature refused: {exc}") from None
        try:
            delivery = preset.parse(cfg, request.headers, body)
        except Unparseable as exc:
            raise refuse(connector, 422, "validation", str(exc)) from None
        doc: dict[str, Any] = {"event_id": delivery.event_id}
        async with transaction(container.pool) as conn:
            claimed = await webhook_deliveries.claim(
                conn, connector, delivery.event_id, delivery.digest
            )
            if claimed is Claim.CONFLICT:
                # Not a duplicate: answering 202 would drop what it reports (D-441).
                raise refuse(
                    connector,
                    409,
                    "conflict",
                    f"event id {delivery.event_id!r} was delivered before with another "
                    "body; nothing of this delivery is queued (give it an id of its own)",
                )
            if claimed is Claim.DUPLICATE:
                doc["status"] = "duplicate"
            elif delivery.ignored is not None:
                doc.update(status="ignored", topic=delivery.ignored)
            else:
                await queue_records(
                    conn,
                    connector,
                    delivery.levels,
                    delivery.sales,
                    delivery.refused,
                    per_message=cfg.records_per_message,  # as the pollers do (D-484)
                )
                doc.update(
                    status="queued",
                    records=len(delivery.levels) + len(delivery.sales),
                    refused=[{"record": r.raw, "error": r.error} for r in delivery.refused],
                )
        counted.labels(connector=connector, status="202").inc()
        return JSONResponse(doc, status_code=202)


def _too_large(cfg: WebhookConnectorConfig) -> str:
    return f"the body is larger than {cfg.max_body_bytes} bytes"
