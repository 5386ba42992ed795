"""Configuration: one YAML file, overridden by STOCKKEEPER_SECTION__KEY variables.

Read once at start, validated, passed down. A missing, unknown or invalid key stops
the process with a message that names the key (``ConfigError``).
"""

from __future__ import annotations

import os
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

ENV_PREFIX = "STOCKKEEPER_"
CONFIG_ENV = "STOCKKEEPER_CONFIG"
DEFAULT_CONFIG_FILE = "stockkeeper.yaml"
C = TypeVar("C", bound="ConnectorConfig")
# Variables with our prefix that are not settings.
NOT_SETTINGS = {
    CONFIG_ENV,
    "STOCKKEEPER_TEST_DATABASE_URL",
    "STOCKKEEPER_REQUIRE_SERVICES",
    "STOCKKEEPER_TEST_BROKER_URL",
    "STOCKKEEPER_FAILPOINTS",
}


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]
Scope = Literal["inventory:read", "inventory:write", "admin"]


class DatabaseConfig(Section):
    url: str | None = None
    pool_size: int = Field(default=20, ge=1, le=1000)
    statement_timeout_ms: int = Field(default=15000, ge=0)


class BrokerConfig(Section):
    url: str | None = None
    # Prepended to every exchange and queue name: several stockkeepers on one vhost.
    prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$", max_length=64)
    # Messages a consumer takes ahead of the one it is handling.
    prefetch: int = Field(default=32, ge=1, le=10_000)
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


class ReservationsConfig(Section):
    default_ttl_seconds: int = Field(default=900, ge=1)
    max_ttl_seconds: int = Field(default=7 * 86_400, ge=1)
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
    payment_timeout_seconds: int = Field(default=900, ge=1)
    # Consumers of orders.saga in one saga process. Each handles one message at a time,
    # and a reserve step is ~18 sequential round trips to PostgreSQL (milliseconds).
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


class MonitoringConfig(Section):
    # Sync lag alert: p99 of commit-to-acknowledgement over the last lag_window_s.
    p99_lag_alert_ms: int = Field(default=5000, ge=1)
    lag_window_s: int = Field(default=300, ge=5, le=86_400)
    lag_check_interval_s: float = Field(default=10.0, gt=0, le=3600)
    metrics_port: int = Field(default=9100, ge=0, le=65535)


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    json_output: bool = Field(default=True, alias="json")


class ConnectorConfig(Section):
    """What every outside system has: an id (used in URLs, metrics and cursors)."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    type: str


class HttpConnectorConfig(ConnectorConfig):
    """An outside system reached over HTTP: every call has a timeout and a rate."""

    url: str = Field(pattern=r"^https?://[^\s]+$")
    # The name of the environment variable holding the API token (never the token).
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    rate_limit_rps: float = Field(default=5.0, gt=0, le=10_000)
    timeout_ms: int = Field(default=5000, ge=10, le=600_000)
    # Tries of one call (429, 5xx, timeouts, refused connections), with backoff.
    max_attempts: int = Field(default=5, ge=1, le=50)
    backoff_base_ms: int = Field(default=200, ge=1)
    backoff_max_ms: int = Field(default=10_000, ge=1)


class WmsConnectorConfig(HttpConnectorConfig):
    """A warehouse management system: snapshots in, allocations and releases out."""

    type: Literal["wms"]
    page_size: int = Field(default=500, ge=1, le=5000)
    # Incremental sync from the WMS's change token; 0 turns the schedule off.
    incremental_interval_s: float = Field(default=60.0, ge=0)
    # A sync whose worker stopped reporting progress this long ago is taken over.
    stale_after_s: float = Field(default=120.0, ge=1)
    outbound_batch_size: int = Field(default=100, ge=1, le=500)
    # How long a partly filled outbound batch waits for more before it is sent.
    outbound_wait_ms: int = Field(default=200, ge=0, le=60_000)
    # Sends of one outbound item before it becomes a dead letter, and their backoff.
    outbound_max_attempts: int = Field(default=10, ge=1, le=100)
    outbound_backoff_base_ms: int = Field(default=1000, ge=1)
    outbound_backoff_max_ms: int = Field(default=30_000, ge=1)


EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class PricingConfig(Section):
    """Our price from a source's price: a markup, rounded to a step."""

    markup_percent: Decimal = Field(default=Decimal(0), ge=-100, le=10_000)
    round_to: Decimal = Field(default=Decimal("0.01"), gt=0)


class IngestOptions(ConnectorConfig):
    """What every source of stock updates shares."""

    # Create a SKU we have never seen; off: such records become dead letters.
    auto_create_skus: bool = True
    # Applied where the source carries prices; none: prices are not kept.
    pricing: PricingConfig | None = None


class ErpConnectorConfig(IngestOptions):
    """An ERP read through a read-only SQL view by a keyset cursor."""

    type: Literal["erp"]
    mode: Literal["poll"] = "poll"
    # A SQLAlchemy async URL (postgresql+asyncpg://..., mssql+aioodbc://...), or the
    # name of the environment variable holding it when it carries a password.
    dsn: str | None = Field(default=None, pattern=r"^[a-z0-9+]+://")
    dsn_env: EnvName | None = None
    # The view: columns sku, location, on_hand, price, last_modified.
    view: str = Field(
        default="stock_changes", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$"
    )
    page_size: int = Field(default=1000, ge=1, le=50_000)
    interval_s: float = Field(default=5.0, gt=0)
    # Queries we run on the ERP at once, across its pages (the ERP must never drown).
    max_concurrent_queries: int = Field(default=1, ge=1, le=32)
    query_timeout_ms: int = Field(default=30_000, ge=100)
    # Polling pauses while the ingest queue holds more messages than this.
    backlog_high_water: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _one_dsn(self) -> ErpConnectorConfig:
        if (self.dsn is None) == (self.dsn_env is None):
            raise ValueError("give exactly one of dsn or dsn_env")
        return self


class WebhookConnectorConfig(IngestOptions):
    """Updates pushed to POST /webhooks/{id}, authenticated by an HMAC signature."""

    type: Literal["webhook"]
    mode: Literal["push"] = "push"
    # generic: X-Signature (hex HMAC-SHA256 of "<timestamp>.<body>") and X-Timestamp;
    # shopify: X-Shopify-Hmac-Sha256 (base64 HMAC-SHA256 of the body).
    preset: Literal["generic", "shopify"] = "generic"
    secret_env: EnvName
    # generic: how far X-Timestamp may be from our clock, against replays.
    tolerance_s: int = Field(default=300, ge=1, le=86_400)
    max_body_bytes: int = Field(default=262_144, ge=256, le=16 * 1024 * 1024)


class MarketplaceConnectorConfig(HttpConnectorConfig, IngestOptions):
    """A marketplace API polled for deltas since a token, behind a circuit breaker."""

    type: Literal["marketplace"]
    mode: Literal["poll"] = "poll"
    # The wire format: a name in stockkeeper.connectors.marketplace.ADAPTERS.
    adapter: str = Field(default="generic", pattern=r"^[a-z0-9_]+$")
    # Sales always apply; the marketplace's own levels only where it holds the stock
    # (a fulfilment centre), at this location.
    apply_levels: bool = False
    location: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
    interval_s: float = Field(default=5.0, gt=0)
    page_size: int = Field(default=500, ge=1, le=5000)
    # The breaker opens after this many failed polls in a row ...
    failure_threshold: int = Field(default=5, ge=1)
    # ... and lets one poll through (half-open) after this long.
    cooldown_s: float = Field(default=30.0, gt=0)


class ChannelConfig(HttpConnectorConfig):
    """A sales channel: the propagator pushes our availability to it."""

    # Pushes (calls) in flight at once on this channel.
    concurrency: int = Field(default=4, ge=1, le=64)
    # SKUs per call where the channel's API takes several; 1 elsewhere.
    batch_size: int = Field(default=1, ge=1, le=500)
    # Connectors (the channel's own webhooks or delta feed) whose changes came from this
    # channel: such a change is not pushed back to it.
    echo_sources: list[str] = Field(default_factory=list)
    # Read levels back and re-push where they differ, every this many seconds (channels
    # that can report levels); 0: only when `stockkeeper reconcile-channels` runs.
    reconcile_interval_s: float = Field(default=0.0, ge=0)


class ShopifyChannelConfig(ChannelConfig):
    """Shopify's Admin GraphQL API: ``inventorySetQuantities`` at one location."""

    type: Literal["shopify"]
    # The GraphQL endpoint, e.g. https://shop.myshopify.com/admin/api/2026-04/graphql.json;
    # token_env names the variable holding the Admin API access token.
    location_id: str = Field(pattern=r"^gid://shopify/Location/[0-9]+$")
    # One of Shopify's inventory change reasons.
    reason: str = Field(default="correction", pattern=r"^[a-z_]{1,64}$")
    batch_size: int = Field(default=50, ge=1, le=250)
    rate_limit_rps: float = Field(default=20.0, gt=0, le=10_000)


class AmazonChannelConfig(ChannelConfig):
    """Amazon SP-API Listings Items: ``PATCH`` of ``/attributes/fulfillment_availability``."""

    type: Literal["amazon"]
    # The regional endpoint, e.g. https://sellingpartnerapi-eu.amazon.com; token_env
    # names the variable holding the LWA access token.
    seller_id: str = Field(pattern=r"^[A-Z0-9]{1,32}$")
    marketplace_ids: list[Annotated[str, Field(pattern=r"^[A-Z0-9]{1,32}$")]] = Field(min_length=1)
    fulfillment_channel_code: str = Field(default="DEFAULT", pattern=r"^[A-Z0-9_]{1,32}$")
    product_type: str = Field(default="PRODUCT", pattern=r"^[A-Z0-9_]{1,64}$")
    # patchListingsItem allows 5 requests per second with a burst of 5.
    rate_limit_rps: float = Field(default=5.0, gt=0, le=5)
    concurrency: int = Field(default=5, ge=1, le=64)
    batch_size: Literal[1] = 1


class OutboundWebhookChannelConfig(ChannelConfig):
    """Any URL: an HMAC-SHA256-signed POST of the new levels."""

    type: Literal["outbound_webhook"]
    # The variable holding the signing secret (shared with the receiver).
    secret_env: EnvName
    batch_size: int = Field(default=1, ge=1, le=500)
    rate_limit_rps: float = Field(default=20.0, gt=0, le=10_000)


def _connector_type(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in CONNECTOR_TYPES else None


# One entry per connector type; issue by issue, more types join here.
CONNECTOR_TYPES = (
    "wms",
    "erp",
    "webhook",
    "marketplace",
    "shopify",
    "amazon",
    "outbound_webhook",
)
AnyConnector = Annotated[
    Annotated[WmsConnectorConfig, Tag("wms")]
    | Annotated[ErpConnectorConfig, Tag("erp")]
    | Annotated[WebhookConnectorConfig, Tag("webhook")]
    | Annotated[MarketplaceConnectorConfig, Tag("marketplace")]
    | Annotated[ShopifyChannelConfig, Tag("shopify")]
    | Annotated[AmazonChannelConfig, Tag("amazon")]
    | Annotated[OutboundWebhookChannelConfig, Tag("outbound_webhook")],
    Discriminator(
        _connector_type,
        custom_error_type="connector_type",
        custom_error_message=f"unknown connector type; known: {', '.join(CONNECTOR_TYPES)}",
    ),
]


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
    monitoring: MonitoringConfig = MonitoringConfig()
    logging: LoggingConfig = LoggingConfig()
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

    def connectors_of(self, kind: type[C]) -> list[C]:
        return [c for c in self.connectors if isinstance(c, kind)]


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """STOCKKEEPER_API__INVENTORY_PORT=9000 -> {"api": {"inventory_port": 9000}}.

    Values are read as YAML scalars, so numbers, booleans and lists work as in the file.
    """
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS:
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{name}: empty key segment")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not a valid value: {exc}") from exc
        node = tree
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: conflicts with another variable")
            node = child
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _describe(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        # A connector's type tag is not a key the user wrote: connectors.0.url, not
        # connectors.0.wms.url.
        loc = [p for i, p in enumerate(err["loc"]) if not (i == 2 and p in CONNECTOR_TYPES)]
        key = ".".join(str(p) for p in loc) or "(top level)"
        got = err.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = None, environ: dict[str, str] | None = None
) -> Settings:
    """Read the YAML file (if any) and the environment, validate, and return Settings."""
    env = dict(os.environ if environ is None else environ)
    explicit = path is not None or CONFIG_ENV in env
    file = Path(path if path is not None else env.get(CONFIG_ENV, DEFAULT_CONFIG_FILE))
    data: dict[str, Any] = {}
    origin = "defaults"
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping of sections")
        data = loaded or {}
        origin = str(file)
    elif explicit:
        raise ConfigError(f"config file {file} does not exist")
    overrides = _env_overrides(env)
    if overrides:
        origin += " + environment"
    try:
        return Settings.model_validate(_merge(data, overrides))
    except ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
