"""The sections of the configuration, one model each, and :class:`Settings` over them.

Re-exported by :mod:`stockkeeper.config`; import them from there. Reading them from the
YAML file and the environment is :mod:`stockkeeper.config.loader`.
"""

from __future__ import annotations

import os
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, field_validator, model_validator

from stockkeeper.config.base import ConfigError, Section
from stockkeeper.config.connectors import (
    AnyConnector,
    ChannelConfig,
    ConnectorConfig,
    WebhookConnectorConfig,
)
from stockkeeper.domain.backoff import Backoff

C = TypeVar("C", bound=ConnectorConfig)

Port = Annotated[int, Field(ge=1, le=65535)]
Scope = Literal["inventory:read", "inventory:write", "admin"]


class DatabaseConfig(Section):
    url: str | None = None
    # Connections per process. Unset: what the services the process runs need
    # (wiring.CONNECTIONS, e.g. 2 for an ingest consumer), so a default deployment
    # fits PostgreSQL's default max_connections of 100.
    pool_size: int | None = Field(default=None, ge=1, le=1000)
    statement_timeout_ms: int = Field(default=15000, ge=0)
    # ``url`` points at PgBouncer in transaction mode: no prepared-statement cache, and
    # what needs a session of its own (LISTEN, advisory locks, migrations) goes to
    # ``direct_url``, PostgreSQL itself.
    pgbouncer: bool = False
    direct_url: str | None = None

    @field_validator("url", "direct_url")
    @classmethod
    def _a_postgresql_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (or unset for the embedded one)")
        return url

    @model_validator(mode="after")
    def _direct_behind_pgbouncer(self) -> DatabaseConfig:
        if self.pgbouncer and not self.direct_url:
            raise ValueError(
                "database.direct_url is required with database.pgbouncer: LISTEN, advisory "
                "locks and migrations need a direct connection to PostgreSQL"
            )
        if self.pgbouncer and not self.url:
            raise ValueError("database.url (PgBouncer's address) is required with pgbouncer")
        return self


class BrokerConfig(Section):
    url: str | None = None
    # Prepended to every exchange and queue name: several stockkeepers on one vhost.
    prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=64)
    # Messages a consumer takes ahead of the one it is handling.
    prefetch: int = Field(default=32, ge=1, le=10_000)
    # Consumers whose handlers can share a transaction apply up to this many of the
    # messages handed out at once in one transaction (1: one transaction per message);
    # they take max(prefetch, 2 x this) ahead (D-321).
    consumer_batch_size: int = Field(default=64, ge=1, le=10_000)
    # RabbitMQ only: wait before reconnecting after the connection drops.
    reconnect_interval_ms: int = Field(default=1000, ge=100)
    # Consumer retries: base delay, doubling, capped; then the dead letters.
    retry_base_ms: int = Field(default=1000, ge=1)
    retry_max_ms: int = Field(default=30_000, ge=1)
    max_attempts: int = Field(default=10, ge=1, le=1000)
    # Embedded queue only: how long a consumer holds a message before it is redelivered,
    # and how often idle consumers look for work when no notification arrives.
    lease_ms: int = Field(default=30_000, ge=100)
    poll_ms: int = Field(default=500, ge=10)

    @field_validator("url")
    @classmethod
    def _an_amqp_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL (or unset for the embedded queue)")
        return url

    def redelivery_window_s(self) -> float:
        """The longest a message can still come back after a consumer first saw it:
        every retry's backoff (no jitter), plus one lease per attempt for a consumer
        that dies holding it (embedded queue; RabbitMQ redelivers sooner)."""
        backoff = Backoff.from_ms(self.retry_base_ms, self.retry_max_ms)
        return backoff.total_s(self.max_attempts) + self.max_attempts * self.lease_ms / 1000


class DispatcherConfig(Section):
    batch_size: int = Field(default=500, ge=1, le=10_000)
    # Fallback poll when no NOTIFY arrives.
    poll_interval_ms: int = Field(default=1000, ge=10)
    # Publish attempts of one event that the broker rejects before it is marked FAILED.
    max_attempts: int = Field(default=10, ge=1)


class TokenConfig(Section):
    token: str | None = Field(default=None, min_length=16)
    token_env: str | None = None
    name: str | None = None
    scopes: list[Scope] = Field(min_length=1)

    @model_validator(mode="after")
    def _one_source(self) -> TokenConfig:
        if (self.token is None) == (self.token_env is None):
            raise ValueError("give exactly one of token or token_env")
        return self

    def resolve(self) -> str:
        if self.token is not None:
            return self.token
        assert self.token_env is not None
        value = os.environ.get(self.token_env)
        if not value:
            raise ConfigError(f"api.tokens: environment variable {self.token_env} is not set")
        return value


class ApiConfig(Section):
    host: str = "127.0.0.1"
    inventory_port: Port = 8080
    admin_port: Port = 8081
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    idempotency_ttl_seconds: int = Field(default=86_400, ge=60)
    # Adds POST /noop (auth and validation, no database): the ceiling bench/ compares with.
    expose_noop: bool = False
    tokens: list[TokenConfig] = Field(default_factory=list)


class Strategy(StrEnum):
    CONDITIONAL = "conditional"
    ROW_LOCK = "row_lock"
    OPTIMISTIC = "optimistic"


class ConcurrencyConfig(Section):
    strategy: Strategy = Strategy.CONDITIONAL
    max_retries: int = Field(default=5, ge=0, le=1000)
    # Request coalescing of POST /inventory/reserve (services/coalescer.py): requests
    # arriving within this window of the first are applied in one transaction.
    coalesce_window_ms: float = Field(default=2.0, ge=0, le=1000)
    # At most this many requests per coalesced transaction; 1 turns coalescing off.
    # A batch costs a constant number of statements whatever its size (D-290), so it
    # is on by default (D-291).
    coalesce_max_batch: int = Field(default=64, ge=1, le=1000)
    # Coalesced transactions in flight at once per process (each holds a connection).
    coalesce_max_in_flight: int = Field(default=4, ge=1, le=64)


# The longest hold a setting may name: ten years. A larger one would put expiry times
# past what a datetime can hold, and every reserve would fail (D-480).
MAX_HOLD_SECONDS = 10 * 366 * 86_400


class ReservationsConfig(Section):
    default_ttl_seconds: int = Field(default=900, ge=1, le=MAX_HOLD_SECONDS)
    max_ttl_seconds: int = Field(default=7 * 86_400, ge=1, le=MAX_HOLD_SECONDS)
    expiry_interval_ms: int = Field(default=1000, ge=10)
    expiry_batch_size: int = Field(default=200, ge=1, le=10_000)


class CarrierConfig(Section):
    """A carrier and its flat quote (the same price and transit time for every parcel)."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    cost: Decimal = Field(ge=0, le=1_000_000)
    # Share of parcels delivered as promised: the cost is divided by it when choosing.
    reliability: Decimal = Field(gt=0, le=1)
    transit_days: int = Field(ge=0, le=365)
    # ISO 3166-1 alpha-2 codes it ships to; empty: everywhere.
    countries: list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]] = Field(default_factory=list)


class OrdersConfig(Section):
    """The order saga (POST /orders and ``stockkeeper run saga``)."""

    # How long a placed order's stock is held for its payment; then it EXPIREs. At most
    # reservations.max_ttl_seconds.
    payment_timeout_seconds: int = Field(default=900, ge=1, le=MAX_HOLD_SECONDS)
    # Consumers of orders.saga in one saga process. Each applies what the broker handed
    # it as one batch: a lone reserve step is 9 round trips, a batch of them ~13 (D-371).
    consumers: int = Field(default=4, ge=1, le=64)
    carriers: list[CarrierConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_carriers(self) -> OrdersConfig:
        ids = [c.id for c in self.carriers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"carriers: duplicate id {', '.join(dupes)}")
        return self


class PropagationConfig(Section):
    # A push a channel failed (after the call's own retries) is tried again after
    # backoff_base_ms, doubling up to backoff_max_ms; after max_attempts it is a dead letter.
    backoff_base_ms: int = Field(default=1000, ge=1)
    backoff_max_ms: int = Field(default=30000, ge=1)
    max_attempts: int = Field(default=10, ge=1)
    # Consumers of channel.propagation in one propagator process (each handles one
    # message at a time; the per-SKU version guard makes their order irrelevant).
    consumers: int = Field(default=4, ge=1, le=64)
    # How long pushes are kept in channel_push (lag percentiles, audit).
    push_log_retention_s: int = Field(default=86_400, ge=60)
    # On shutdown, how long pushes in flight may finish; those still going are then let
    # go (due again at once, no attempt counted), never dead-lettered.
    shutdown_grace_s: float = Field(default=5.0, ge=0, le=600)


class BulkConfig(Section):
    """How changes of many SKUs at once travel (D-220)."""

    # SKUs per inventory.levels_changed message written by a transaction that changed
    # several (an ingest page, a WMS snapshot page); 0: one level_changed per SKU.
    levels_per_message: int = Field(default=500, ge=0, le=10_000)


class RetentionConfig(Section):
    """How long append-heavy tables keep their rows; the expiry worker prunes them in
    small batches. The inventory ledger is never pruned: it is the stock's history."""

    # Outbox rows the broker accepted (SENT), counted from sent_at. FAILED rows stay
    # until an operator deals with them.
    outbox_sent_s: int = Field(default=7 * 86_400, ge=60)
    # Consumer idempotency records, from processed_at: longer than the longest
    # redelivery window (broker.redelivery_window_s), or a late redelivery would apply
    # twice. Checked at load.
    processed_message_s: int = Field(default=7 * 86_400, ge=60)
    # A consumer's per-SKU position, from its last advance: the same bound, or a late
    # stale event would be applied over a newer one.
    consumer_position_s: int = Field(default=30 * 86_400, ge=60)
    # The WMS call log (every try of every call), from the call.
    wms_call_s: int = Field(default=7 * 86_400, ge=60)
    # Webhook delivery ids taken once, from their arrival: longer than every webhook
    # connector's tolerance_s (checked at load), past which a delivery is refused anyway.
    webhook_delivery_s: int = Field(default=7 * 86_400, ge=60)
    # Dead letters an operator replayed or discarded, from the resolution (their post
    # mortem). Open (DEAD) ones are never pruned.
    dead_letter_resolved_s: int = Field(default=30 * 86_400, ge=60)
    # WMS outbound items the WMS accepted (SENT), from the send. Their event id keeps a
    # redelivered allocation from being queued again, so longer than the longest
    # redelivery window (checked at load). PENDING and DEAD items are never pruned.
    wms_outbound_sent_s: int = Field(default=30 * 86_400, ge=60)
    # WMS syncs that ended (DONE or FAILED), from the end: GET /admin/wms/sync/{id} and
    # the sync list answer for them until then. Open ones are never pruned.
    wms_sync_finished_s: int = Field(default=30 * 86_400, ge=60)
    # Rows deleted per statement (each its own short transaction), batches per table
    # per run, and how often the expiry worker runs the pruning.
    batch_size: int = Field(default=1000, ge=1, le=10_000)
    max_batches: int = Field(default=100, ge=1, le=100_000)
    interval_s: float = Field(default=60.0, gt=0, le=86_400)


class MonitoringConfig(Section):
    # Sync lag alert: p99 of commit-to-acknowledgement over the last lag_window_s.
    p99_lag_alert_ms: int = Field(default=5000, ge=1)
    lag_window_s: int = Field(default=300, ge=5, le=86_400)
    lag_check_interval_s: float = Field(default=10.0, gt=0, le=3600)
    metrics_port: int = Field(default=9100, ge=0, le=65535)


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    # JSON lines, or a readable console format; unset: console on a terminal, JSON
    # otherwise (a file, a pipe, a container's log).
    json_output: bool | None = Field(default=None, alias="json")
    # A line per HTTP request at info: method, route template, status, duration, id.
    access_log: bool = True


class TracingConfig(Section):
    """OpenTelemetry traces (D-240). Off unless ``exporter`` is set: no SDK tracer
    provider is installed and every span is the API's no-op."""

    # otlp: OTLP over HTTP/protobuf to ``endpoint``; console: spans as JSON on stdout;
    # discard: spans recorded and dropped (to measure the overhead, bench/reserve.py).
    exporter: Literal["otlp", "console", "discard"] | None = None
    # The collector's traces URL, e.g. http://localhost:4318/v1/traces (otlp only).
    endpoint: str | None = None
    # service.name of every span; the process's services are added as an attribute.
    service_name: str = Field(default="stockkeeper", min_length=1, max_length=200)
    # Share of new traces recorded (parent-based: a continued trace follows its parent).
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    # A span per SQL statement (the asyncpg instrumentation): the most detail and most
    # of the cost (bench/reserve.py --tracing); false keeps the request, outbox,
    # broker, consumer and channel spans only.
    database_spans: bool = True

    @model_validator(mode="after")
    def _endpoint_for_otlp(self) -> TracingConfig:
        if self.exporter == "otlp" and not self.endpoint:
            raise ValueError("tracing.endpoint is required with tracing.exporter: otlp")
        return self


class Settings(Section):
    data_dir: Path = Path("./.stockkeeper")
    database: DatabaseConfig = DatabaseConfig()
    broker: BrokerConfig = BrokerConfig()
    dispatcher: DispatcherConfig = DispatcherConfig()
    api: ApiConfig = ApiConfig()
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    reservations: ReservationsConfig = ReservationsConfig()
    orders: OrdersConfig = OrdersConfig()
    propagation: PropagationConfig = PropagationConfig()
    bulk: BulkConfig = BulkConfig()
    retention: RetentionConfig = RetentionConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    connectors: list[AnyConnector] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_connector_ids(self) -> Settings:
        ids = [c.id for c in self.connectors]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"connectors: duplicate id {', '.join(dupes)}")
        for ch in self.connectors_of(ChannelConfig):
            unknown = sorted(set(ch.echo_sources) - set(ids))
            if unknown:
                raise ValueError(
                    f"connectors: {ch.id}.echo_sources names no connector: {', '.join(unknown)}"
                )
        return self

    @model_validator(mode="after")
    def _payment_fits_a_reservation(self) -> Settings:
        if self.orders.payment_timeout_seconds > self.reservations.max_ttl_seconds:
            raise ValueError(
                "orders.payment_timeout_seconds must not exceed reservations.max_ttl_seconds "
                f"({self.reservations.max_ttl_seconds})"
            )
        return self

    @model_validator(mode="after")
    def _retention_outlasts_redelivery(self) -> Settings:
        window = self.broker.redelivery_window_s()
        for key in ("processed_message_s", "consumer_position_s", "wms_outbound_sent_s"):
            kept = getattr(self.retention, key)
            if kept <= window:
                raise ValueError(
                    f"retention.{key} ({kept} s) must be longer than the longest redelivery "
                    f"window, {window:.0f} s (from broker.retry_base_ms, retry_max_ms, "
                    "max_attempts and lease_ms)"
                )
        return self

    @model_validator(mode="after")
    def _deliveries_outlast_the_replay_window(self) -> Settings:
        kept = self.retention.webhook_delivery_s
        for hook in self.connectors_of(WebhookConnectorConfig):
            if kept <= hook.tolerance_s:
                raise ValueError(
                    f"retention.webhook_delivery_s ({kept} s) must be longer than "
                    f"connector {hook.id}'s tolerance_s ({hook.tolerance_s} s), or a "
                    "delivery sent again within it would be applied twice"
                )
        return self

    def connectors_of(self, kind: type[C]) -> list[C]:
        return [c for c in self.connectors if isinstance(c, kind)]
