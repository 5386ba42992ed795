"""The body of ``GET /admin/status``: the outbox, the broker, each WMS, each polled
connector, each channel."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class OutboxStatusOut(BaseModel):
    pending: int
    failed: int
    oldest_pending_seconds: float | None


class BrokerStatusOut(BaseModel):
    kind: str
    error: str | None = Field(default=None, description="Set only while the broker is down.")


class WmsStatusOut(BaseModel):
    has_change_token: bool
    last_full_sync_at: str | None
    last_incremental_sync_at: str | None
    next_incremental_sync_at: str | None
    open_syncs: int
    outbound_pending: int
    outbound_dead: int
    outbound_oldest_pending_seconds: float | None
    last_failure: FailureOut | None = Field(
        description="The WMS's last failed sync or outbound send and when; kept on success."
    )


class CursorOut(BaseModel):
    last_modified: str | None
    sku: str | None
    token: str | None
    pages: int
    records: int
    updated_at: str | None


class FailureOut(BaseModel):
    message: str
    at: str


class ConnectorStatusOut(BaseModel):
    cursor: CursorOut
    circuit: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    circuit_opened_at: str | None
    last_error: str | None = Field(description="The circuit's last error, cleared on close.")
    last_failure: FailureOut | None = Field(
        description="The connector's last failed poll, push or sync and when; kept on success."
    )


class LagOut(BaseModel):
    p50: float | None
    p99: float | None
    samples: int


class ChannelStatusOut(BaseModel):
    type: str
    lag_ms: LagOut
    window_s: int
    alerting: bool
    alert_threshold_ms: int
    pending: int
    synced: int
    unlisted: int
    unlisted_skus: str = Field(description="The admin path that lists them.")
    unlisted_recheck_s: float
    dead: int
    oldest_pending_s: float | None
    pushes_in_window: int
    changes_in_window: int
    last_reconciled_at: str | None
    drift_repaired: int
    divergence_found: int
    last_sampled_at: str | None
    last_failure: FailureOut | None = Field(
        description="The channel's last failed or refused push and when; kept on success."
    )
    locations: list[str] | None = Field(
        default=None,
        description=(
            "The channel's own locations (Shopify location gids), each with its own figure "
            "per SKU (see /admin/channels/{channel}/skus/{sku}); null: one figure per SKU."
        ),
    )


class StatusOut(BaseModel):
    """The operator's page: the pipes, each WMS, each polled connector, each channel."""

    outbox: OutboxStatusOut
    dead_letters: dict[str, int]
    broker: BrokerStatusOut
    queues: dict[str, int] | None = None
    wms: dict[str, WmsStatusOut]
    connectors: dict[str, ConnectorStatusOut]
    channels: dict[str, ChannelStatusOut]
