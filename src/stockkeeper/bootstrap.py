"""Wiring: read config once, start what it needs, build the services, pass them down."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from stockkeeper.api.auth import TokenBook, build_token_book
from stockkeeper.config import (
    AmazonChannelConfig,
    ChannelConfig,
    ConfigError,
    ConnectorConfig,
    HttpConnectorConfig,
    IngestOptions,
    MarketplaceConnectorConfig,
    Settings,
    WmsConnectorConfig,
)
from stockkeeper.connectors.carriers import ConfiguredCarriers
from stockkeeper.connectors.channels import ChannelAdapter
from stockkeeper.connectors.lwa import LwaCredentials
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.broker import Broker
from stockkeeper.messaging.consumer import RetryPolicy
from stockkeeper.messaging.pgqueue import PgQueueBroker
from stockkeeper.messaging.rabbitmq import RabbitMQBroker
from stockkeeper.messaging.topology import QUEUES
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.admin import Operations
from stockkeeper.services.ingest import IngestService
from stockkeeper.services.orders import Orders
from stockkeeper.services.propagation import Propagation
from stockkeeper.services.reservations import Reservations
from stockkeeper.services.stock import Stock
from stockkeeper.services.unit import Clock, utcnow
from stockkeeper.services.wms import WmsService
from stockkeeper.store.budget import server_room
from stockkeeper.store.embedded import EmbeddedPostgres, start_embedded
from stockkeeper.store.errors import StoreError
from stockkeeper.store.migrate import migrate
from stockkeeper.store.pool import ONE_OFF, Connections, Pool, create_pool, create_session_pool

SECRET_KEYS = (
    "token_env",
    "secret_env",
    "dsn_env",
    "client_id_env",
    "client_secret_env",
    "refresh_token_env",
)

log = get_logger("stockkeeper.bootstrap")


@dataclass
class Container:
    """Everything a process needs, built once at start."""

    settings: Settings
    pool: Pool
    metrics: Metrics
    tokens: TokenBook
    reservations: Reservations
    stock: Stock
    wms: WmsService
    ingest: IngestService
    propagation: Propagation
    orders: Orders
    broker: Broker
    # Where LISTEN connections and advisory locks come from: ``pool`` itself, or behind
    # PgBouncer a small pool straight to PostgreSQL (store/pool.py).
    session_pool: Pool
    clock: Clock = utcnow
    embedded: EmbeddedPostgres | None = None
    failpoints: Failpoints = field(default_factory=Failpoints)
    _broker_ready: bool = False
    # Consumers of one process start together and each asks for the broker: one of
    # them connects it, the others wait for that (a connect each left extra LISTEN
    # connections, or RabbitMQ connections, open that close() never saw).
    _broker_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _operations: Operations | None = None

    @property
    def retry_policy(self) -> RetryPolicy:
        b = self.settings.broker
        return RetryPolicy(b.retry_base_ms, b.retry_max_ms, b.max_attempts)

    async def connected_broker(self) -> Broker:
        """The broker, connected (and its topology declared) on first use, once however
        many callers ask at the same time."""
        async with self._broker_lock:
            if not self._broker_ready:
                await self.broker.connect()
                self._broker_ready = True
        return self.broker

    async def operations(self) -> Operations:
        if self._operations is None:
            self._operations = Operations(self.pool, await self.connected_broker(), self.metrics)
        return self._operations

    async def close(self) -> None:
        if self._broker_ready:
            await self.broker.close()
        if self.session_pool is not self.pool:
            await self.session_pool.close()
        await self.pool.close()
        if self.embedded is not None:
            self.embedded.stop()


def env_secret(cfg: ConnectorConfig, key: str) -> str | None:
    """The secret a connector's config names by environment variable (``key`` is the
    config key: token_env, secret_env, dsn_env); None when the key is not set."""
    var: str | None = getattr(cfg, key, None)
    if var is None:
        return None
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"connector {cfg.id}: environment variable {var} ({key}) is not set")
    return value


def check_tokens(settings: Settings) -> None:
    """Every ``api.tokens`` entry that names a variable finds it set (what the config
    alone cannot check), so a missing one stops the start before anything is made."""
    for t in settings.api.tokens:
        t.resolve()


def check_connectors(settings: Settings, uses: Iterable[ConnectorConfig] | None = None) -> None:
    """What the config alone cannot check: secrets present, adapters known. Only for the
    connectors in ``uses`` when given (a command that calls no webhook needs no webhook
    secret); for every configured connector when not."""
    from stockkeeper.connectors.marketplace import ADAPTERS

    wanted = None if uses is None else {id(cfg) for cfg in uses}
    for i, cfg in enumerate(settings.connectors):
        if wanted is not None and id(cfg) not in wanted:
            continue
        for key in SECRET_KEYS:
            env_secret(cfg, key)  # a missing secret stops the start, naming the variable
        if isinstance(cfg, MarketplaceConnectorConfig) and cfg.adapter not in ADAPTERS:
            raise ConfigError(
                f"connectors.{i}.adapter: unknown marketplace adapter {cfg.adapter!r}; "
                f"known: {', '.join(sorted(ADAPTERS))}"
            )


def connector_token(cfg: HttpConnectorConfig) -> str | None:
    """The API token of a connector, from the environment variable its config names."""
    return env_secret(cfg, "token_env")


def lwa_credentials(cfg: ChannelConfig) -> LwaCredentials | None:
    """Amazon's Login with Amazon credentials, from the variables the config names;
    None for a channel without them."""
    if not isinstance(cfg, AmazonChannelConfig) or cfg.refresh_token_env is None:
        return None
    client_id = env_secret(cfg, "client_id_env")
    client_secret = env_secret(cfg, "client_secret_env")
    refresh_token = env_secret(cfg, "refresh_token_env")
    if not (client_id and client_secret and refresh_token):  # env_secret raised already
        raise ConfigError(f"connector {cfg.id}: Login with Amazon credentials are incomplete")
    return LwaCredentials(client_id, client_secret, refresh_token, token_url=cfg.lwa_url)


def channel_adapter(cfg: ChannelConfig, metrics: Metrics | None = None) -> ChannelAdapter:
    """The adapter of one channel, with the secrets its config names."""
    from stockkeeper.connectors.channel_registry import make_channel

    return make_channel(
        cfg,
        token=connector_token(cfg),
        secret=env_secret(cfg, "secret_env"),
        lwa=lwa_credentials(cfg),
        metrics=metrics,
    )


def make_broker(
    settings: Settings,
    pool: Pool,
    session_pool: Pool | None = None,
    metrics: Metrics | None = None,
) -> Broker:
    """RabbitMQ when ``broker.url`` is set, else the embedded PostgreSQL queue (its
    LISTEN connection from ``session_pool``, default ``pool``)."""
    b = settings.broker
    if b.url:
        return RabbitMQBroker(
            b.url, prefix=b.prefix, reconnect_interval_s=b.reconnect_interval_ms / 1000
        )
    return PgQueueBroker(
        pool,
        prefix=b.prefix,
        lease_ms=b.lease_ms,
        poll_ms=b.poll_ms,
        listen_pool=session_pool,
        metrics=metrics,
    )


def database_url(settings: Settings, *, create: bool = True) -> tuple[str, EmbeddedPostgres | None]:
    """The configured URL, or the embedded server's when none is set (made in the data
    directory when there is none yet, unless ``create`` is false)."""
    if settings.database.url:
        return settings.database.url, None
    server = start_embedded(settings.data_dir, create=create)
    return server.url, server


def shown_url(url: str) -> str:
    """``url`` fit for a message: its password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


async def open_pools(url: str, settings: Settings, needs: Connections) -> tuple[Pool, Pool]:
    """The transaction pool and the session pool (the same one without PgBouncer); a
    database that cannot be opened is a :class:`ConfigError` naming the key."""
    cfg = settings.database
    where = (
        f"database.url ({shown_url(url)})"
        if cfg.url
        else f"the embedded PostgreSQL in {settings.data_dir}"
    )
    try:
        pool = await create_pool(url, cfg, size=needs.pool_size(cfg))
    except StoreError as exc:
        raise ConfigError(f"{where}: cannot connect: {exc}") from exc
    if not cfg.pgbouncer:
        return pool, pool
    try:
        return pool, await create_session_pool(cfg, needs.session_pool_size())
    except StoreError as exc:
        await pool.close()
        assert cfg.direct_url is not None
        raise ConfigError(
            f"database.direct_url ({shown_url(cfg.direct_url)}): cannot connect: {exc}"
        ) from exc
    except BaseException:
        await pool.close()
        raise


async def check_room(pool: Pool, session_pool: Pool, settings: Settings) -> int:
    """Warn, naming the numbers, when the server has fewer free connection slots than
    this process may still open; return how many would find none (0: all fit)."""
    via_pgbouncer = settings.database.pgbouncer
    # Behind PgBouncer only the session pool is ours on the server; PgBouncer's own
    # server pool (default_pool_size) is sized in its ini.
    direct = session_pool if via_pgbouncer else pool
    planned = direct.get_max_size()
    async with session_pool.acquire() as conn:
        room = await server_room(conn)
    opened = direct.get_size()
    short = room.short_by(planned - opened)
    numbers = {
        "max_connections": room.max_connections,
        "reserved": room.reserved,
        "in_use": room.in_use,
        "free": room.free,
        "this_process": planned,
        "already_open": opened,
    }
    if short:
        log.warning(
            "database.connections_short",
            short_by=short,
            hint="lower database.pool_size, raise max_connections, or put PgBouncer "
            "in front (database.pgbouncer)",
            **numbers,
        )
    else:
        # Debug: what fits needs no line before every command's own output (D-389).
        log.debug("database.connection_budget", **numbers)
    return short


async def build(
    settings: Settings,
    *,
    run_migrations: bool = True,
    clock: Clock = utcnow,
    metrics: Metrics | None = None,
    needs: Connections = ONE_OFF,
    uses: Iterable[ConnectorConfig] | None = None,
    create_database: bool = True,
) -> Container:
    """Everything a process needs. ``needs`` is what its services hold at once
    (``wiring.connections``); it sizes the pools unless ``database.pool_size`` is set.
    ``uses``: the connectors whose secrets must be set (default: all);
    ``create_database``: whether a missing embedded database is made."""
    check_tokens(settings)
    check_connectors(settings, uses)
    url, embedded = database_url(settings, create=create_database)
    pool, session_pool = await open_pools(url, settings, needs)
    try:
        await check_room(pool, session_pool, settings)
        if run_migrations:
            # An advisory lock for the whole run: a session of its own.
            async with session_pool.acquire() as conn:
                await migrate(conn)
        metrics = metrics or Metrics()
        metrics.start_known(
            queues=[spec.name for spec in QUEUES],
            ingest=[c.id for c in settings.connectors_of(IngestOptions)],
            wms=[c.id for c in settings.connectors_of(WmsConnectorConfig)],
            channels=[c.id for c in settings.connectors_of(ChannelConfig)],
        )
        reservations = Reservations(
            pool,
            metrics,
            strategy=settings.concurrency.strategy,
            max_retries=settings.concurrency.max_retries,
            default_ttl_seconds=settings.reservations.default_ttl_seconds,
            max_ttl_seconds=settings.reservations.max_ttl_seconds,
            clock=clock,
        )
        return Container(
            settings=settings,
            pool=pool,
            metrics=metrics,
            tokens=build_token_book(settings),
            reservations=reservations,
            stock=Stock(pool, clock),
            wms=WmsService(
                pool,
                metrics,
                settings.connectors_of(WmsConnectorConfig),
                clock,
                levels_per_message=settings.bulk.levels_per_message,
            ),
            ingest=IngestService(
                metrics,
                settings.connectors_of(IngestOptions),
                clock,
                levels_per_message=settings.bulk.levels_per_message,
            ),
            propagation=Propagation(
                pool,
                metrics,
                settings.connectors_of(ChannelConfig),
                settings.propagation,
                settings.monitoring,
                clock,
            ),
            orders=Orders(
                pool,
                metrics,
                reservations,
                ConfiguredCarriers(settings.orders.carriers),
                payment_timeout_seconds=settings.orders.payment_timeout_seconds,
                clock=clock,
            ),
            broker=make_broker(settings, pool, session_pool, metrics),
            session_pool=session_pool,
            clock=clock,
            embedded=embedded,
            failpoints=Failpoints.from_env(),
        )
    except BaseException:
        if session_pool is not pool:
            await session_pool.close()
        await pool.close()
        raise
