"""Connector entries of the configuration: one per outside system, by ``type``.

Re-exported by :mod:`stockkeeper.config`; import them from there.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, model_validator

from stockkeeper.config.base import EnvName, Section
from stockkeeper.domain.ids import printable


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
    # Records per ingest message (one consumer transaction applies a message set-based,
    # D-221): bigger messages mean fewer transactions, memory grows with it.
    records_per_message: int = Field(default=500, ge=1, le=50_000)
    # A level stamped further ahead of our clock than this is a dead letter: applied, it
    # would hold back every true level of its place until that time comes (D-443). A
    # day covers an ERP's local times read as UTC (at most 14 hours ahead).
    max_ahead_s: int = Field(default=86_400, ge=60, le=366 * 86_400)


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
    # Rows are read only once their last_modified is this old by our clock, so an ERP
    # transaction that stamps rows and commits them within this long is never passed
    # by the cursor while still uncommitted (D-493). 0: every row as soon as it shows.
    settle_ms: int = Field(default=0, ge=0, le=3_600_000)

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
    # How far the sender's time may be from our clock, against replays: X-Timestamp
    # (generic) or X-Shopify-Triggered-At (shopify; Shopify keeps the first trigger time
    # on its retries, so a retry later than this is refused too).
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
    # A round reads pages back to back while the feed says there are more; after this
    # many it ends anyway and the next waits ``interval_s`` (D-471).
    max_pages_per_round: int = Field(default=1000, ge=1, le=1_000_000)
    # The breaker opens after this many failed polls in a row ...
    failure_threshold: int = Field(default=5, ge=1)
    # ... and lets one poll through (half-open) after this long.
    cooldown_s: float = Field(default=30.0, gt=0)


LocationName = Annotated[str, Field(min_length=1, max_length=200)]


class RuleOverrideConfig(Section):
    """A SKU's override of its channel's availability rule; an unset field keeps the
    channel's value (``cap: null`` with ``clear_cap: true`` lifts the cap)."""

    locations: list[LocationName] | None = None
    buffer: int | None = Field(default=None, ge=0, le=1_000_000_000)
    cap: int | None = Field(default=None, ge=0, le=1_000_000_000)
    share_percent: int | None = Field(default=None, ge=0, le=100)
    clear_cap: bool = False


class AvailabilityRulesConfig(Section):
    """What a channel is shown: max(0, min(cap, floor(share% x available at its
    locations)) - buffer) (docs/channels.md). Changed at run time through the admin API,
    the stored rule wins over this one."""

    # Our locations that feed the channel; null: all of them.
    locations: list[LocationName] | None = None
    buffer: int = Field(default=0, ge=0, le=1_000_000_000)
    cap: int | None = Field(default=None, ge=0, le=1_000_000_000)
    share_percent: int = Field(default=100, ge=0, le=100)
    # Keyed by SKU, held to the id rule of every door (D-470): a SKU no door takes
    # ("..", "A\u200bB", "TEA ") would be an override that never applies.
    skus: dict[
        Annotated[str, Field(min_length=1, max_length=128), AfterValidator(printable)],
        RuleOverrideConfig,
    ] = Field(default_factory=dict)


class ChannelConfig(HttpConnectorConfig):
    """A sales channel: the propagator pushes our availability to it."""

    # Which locations feed the channel, a buffer, a cap, a share, per-SKU overrides.
    rules: AvailabilityRulesConfig = Field(default_factory=AvailabilityRulesConfig)

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
    # A SKU the channel said it does not list is probed again by its next level change,
    # at most once per this many seconds (listed meanwhile, it flows again).
    unlisted_recheck_s: float = Field(default=3600.0, ge=0)
    # Divergence sample (channels that can report levels): every this many seconds, read
    # back divergence_sample_size SKUs we believe in sync (walking through them all in
    # turn) and re-push where the channel shows something else; 0: off.
    divergence_sample_s: float = Field(default=300.0, ge=0)
    divergence_sample_size: int = Field(default=20, ge=1, le=250)

    def location_map(self) -> LocationMap | None:
        """The channel's own locations, each fed by some of ours (Shopify's); None: the
        channel has one figure per SKU."""
        return None


ShopifyLocationGid = Annotated[str, Field(pattern=r"^gid://shopify/Location/[0-9]+$")]
# Our locations mapped to one Shopify location: "*" alone means all of them.
ALL_LOCATIONS = "*"


class ShopifyLocationConfig(Section):
    """One Shopify location and the locations of ours whose stock it shows (D-280)."""

    location_id: ShopifyLocationGid
    our_locations: list[LocationName] = Field(min_length=1)


# A Shopify location's gid and the locations of ours that feed it (None: all of them).
LocationMap = tuple[tuple[str, frozenset[str] | None], ...]


class ShopifyChannelConfig(ChannelConfig):
    """Shopify's Admin GraphQL API: ``inventorySetQuantities`` at one location
    (``location_id``) or at several, each fed by some of our locations (``locations``)."""

    type: Literal["shopify"]
    # The GraphQL endpoint, e.g. https://shop.myshopify.com/admin/api/2026-04/graphql.json;
    # token_env names the variable holding the Admin API access token.
    # One location showing all our stock (a single-location shop) ...
    location_id: ShopifyLocationGid | None = None
    # ... or several, each with the locations of ours that feed it (docs/channels.md).
    locations: list[ShopifyLocationConfig] | None = Field(default=None, min_length=1)
    # One of Shopify's inventory change reasons.
    reason: str = Field(default="correction", pattern=r"^[a-z_]{1,64}$")
    batch_size: int = Field(default=50, ge=1, le=250)
    rate_limit_rps: float = Field(default=20.0, gt=0, le=10_000)

    @model_validator(mode="after")
    def _locations_mapped_once(self) -> ShopifyChannelConfig:
        if (self.location_id is None) == (self.locations is None):
            raise ValueError("give exactly one of location_id or locations")
        if self.locations is None:
            return self
        gids = [m.location_id for m in self.locations]
        twice = sorted({g for g in gids if gids.count(g) > 1})
        if twice:
            raise ValueError(f"locations: Shopify location mapped twice: {', '.join(twice)}")
        ours = [o for m in self.locations for o in m.our_locations]
        if ALL_LOCATIONS in ours and len(ours) > 1:
            raise ValueError('locations: "*" (all our locations) must be the only location mapped')
        twice = sorted({o for o in ours if ours.count(o) > 1})
        if twice:
            raise ValueError(
                f"locations: our location mapped to two Shopify locations: {', '.join(twice)}"
            )
        feeding = self.rules.locations
        unknown = sorted(set(ours) - {ALL_LOCATIONS} - set(feeding or ours))
        if unknown:
            raise ValueError(
                f"locations: {', '.join(unknown)} not among the locations that feed the "
                f"channel (rules.locations: {', '.join(feeding or [])})"
            )
        return self

    @property
    def primary_location(self) -> str:
        """The one location of a single-location shop (the first mapped otherwise)."""
        if self.location_id is not None:
            return self.location_id
        assert self.locations  # the validator saw to it
        return self.locations[0].location_id

    def location_map(self) -> LocationMap | None:
        """Per Shopify location, our locations feeding it; None: ``location_id`` alone
        (every location into one, kept on the per-SKU row as before)."""
        if self.locations is None:
            return None
        return tuple(
            (
                m.location_id,
                None if m.our_locations == [ALL_LOCATIONS] else frozenset(m.our_locations),
            )
            for m in self.locations
        )


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
    # Login with Amazon: the variables holding the app's client id and secret and the
    # seller's refresh token. With them the adapter gets (and renews) its own access
    # tokens at lwa_url; without them token_env holds a ready access token.
    client_id_env: EnvName | None = None
    client_secret_env: EnvName | None = None
    refresh_token_env: EnvName | None = None
    lwa_url: str = Field(
        default="https://api.amazon.com/auth/o2/token", pattern=r"^https?://[^\s]+$"
    )
    # A refused refresh token is not asked again for this long (every push meanwhile is
    # dead-lettered at once, naming the refusal).
    lwa_refused_pause_s: float = Field(default=300.0, ge=0)
    # Bulk through the Feeds API (JSON_LISTINGS_FEED): when the channel's due backlog is
    # at least feed_threshold SKUs (0: never), up to feed_max_skus of them go as one feed
    # (the feed schema allows 25,000 messages), its status polled every feed_poll_s
    # until done, or until feed_timeout_s, when the batch is retried as a failure.
    feed_threshold: int = Field(default=0, ge=0)
    feed_max_skus: int = Field(default=10_000, ge=1, le=25_000)
    feed_poll_s: float = Field(default=30.0, gt=0)
    feed_timeout_s: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _feed_polls_in_time(self) -> AmazonChannelConfig:
        if self.feed_poll_s >= self.feed_timeout_s:
            raise ValueError("feed_poll_s must be shorter than feed_timeout_s")
        return self

    @model_validator(mode="after")
    def _lwa_whole(self) -> AmazonChannelConfig:
        lwa = (self.client_id_env, self.client_secret_env, self.refresh_token_env)
        given = [v is not None for v in lwa]
        if any(given) and not all(given):
            raise ValueError(
                "Login with Amazon needs all of client_id_env, client_secret_env and "
                "refresh_token_env"
            )
        if all(given) and self.token_env is not None:
            raise ValueError(
                "token_env and Login with Amazon (refresh_token_env) exclude each other"
            )
        return self


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
