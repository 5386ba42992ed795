"""What each service starts: one table, name → builder, beside the bootstrap.

``stockkeeper run <service>`` and ``stockkeeper up`` look services up in :data:`SERVICES`.
A builder takes the container (:func:`stockkeeper.bootstrap.build`) and says what the
service adds to the process: HTTP apps, worker loops, consumers. Running them together,
and stopping them together, is :mod:`stockkeeper.workers.runner`'s job.

:data:`CONNECTIONS` says, per service, how many database connections it holds at once;
a process's pool is sized from the services it runs (``database.pool_size`` overrides).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.types import ASGIApp

from stockkeeper.api.admin import create_admin_app
from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container, channel_adapter, connector_token
from stockkeeper.config import (
    ChannelConfig,
    ConnectorConfig,
    ErpConnectorConfig,
    MarketplaceConnectorConfig,
    Settings,
    WebhookConnectorConfig,
    WmsConnectorConfig,
)
from stockkeeper.connectors.http import CallRecord
from stockkeeper.connectors.wms import WmsClient
from stockkeeper.messaging.consumer import BatchEffectHandler, EffectHandler
from stockkeeper.messaging.dead_letter_queue import DeadLetterDrain
from stockkeeper.messaging.rabbitmq import RabbitMQBroker
from stockkeeper.store.pool import Connections
from stockkeeper.store.wms import CallRow
from stockkeeper.workers.dispatcher import Dispatcher
from stockkeeper.workers.embedded_watch import EmbeddedWatch
from stockkeeper.workers.expiry import ExpiryWorker
from stockkeeper.workers.ingest import ingest_handler
from stockkeeper.workers.pollers import run_pollers
from stockkeeper.workers.propagator import Propagator
from stockkeeper.workers.saga import QUEUE as SAGA_QUEUE
from stockkeeper.workers.saga import saga_batch_handler, saga_handler
from stockkeeper.workers.wms_outbound import WmsOutboundWorker
from stockkeeper.workers.wms_sync import WmsSyncWorker

Loop = Callable[[asyncio.Event], Coroutine[Any, Any, None]]
"""A worker loop: runs until the stop event is set."""


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer to run: a name (its idempotency scope), a queue, an effect handler."""

    name: str
    queue: str
    handler: EffectHandler
    drop_stale: bool = False
    # The handler can share a transaction with other messages (each in its own
    # savepoint): the runner applies batches (``broker.consumer_batch_size``).
    batch: bool = False
    # The effect of a whole batch at once (set-based), for a batch consumer (D-320).
    handle_many: BatchEffectHandler | None = None
    # A batch of one message goes the one-message way (no savepoint), D-371.
    one_as_single: bool = False


@dataclass(frozen=True)
class HttpApp:
    """An HTTP app to serve on ``api.host`` at ``port``; ``name`` is the service's."""

    name: str
    app: ASGIApp
    port: int


@dataclass
class Service:
    """What one service (or several, merged) adds to the process."""

    apps: list[HttpApp] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)
    consumers: list[ConsumerSpec] = field(default_factory=list)


Builder = Callable[[Container], Awaitable[Service]]


async def _inventory_api(container: Container) -> Service:
    port = container.settings.api.inventory_port
    return Service(apps=[HttpApp("inventory-api", create_inventory_app(container), port)])


async def _admin_api(container: Container) -> Service:
    port = container.settings.api.admin_port
    return Service(apps=[HttpApp("admin-api", create_admin_app(container), port)])


async def _expiry(container: Container) -> Service:
    return Service(loops=[ExpiryWorker(container).run])


async def _dispatcher(container: Container) -> Service:
    """The dispatcher; on RabbitMQ also the drain of its dead-letter queue (D-160)."""
    d = container.settings.dispatcher
    broker = await container.connected_broker()
    dispatcher = Dispatcher(
        container.pool,
        broker,
        container.metrics,
        batch_size=d.batch_size,
        poll_ms=d.poll_interval_ms,
        max_attempts=d.max_attempts,
        failpoints=container.failpoints,
        listen_pool=container.session_pool,
    )
    loops: list[Loop] = [dispatcher.run]
    if isinstance(broker, RabbitMQBroker):
        prefix = container.settings.broker.prefix
        loops.append(DeadLetterDrain(broker, container.pool, container.metrics, prefix).run)
    return Service(loops=loops)


def _keep_call(kept: list[CallRow], rec: CallRecord) -> None:
    kept.append(
        CallRow(rec.operation, rec.attempt, rec.status, rec.outcome, rec.duration_ms, rec.error)
    )


def _wms_clients(container: Container) -> tuple[dict[str, WmsClient], dict[str, list[CallRow]]]:
    """One client per WMS connector; each try of each call is kept for the audit table."""
    clients: dict[str, WmsClient] = {}
    calls: dict[str, list[CallRow]] = {}
    for cfg in container.settings.connectors_of(WmsConnectorConfig):
        kept: list[CallRow] = []
        calls[cfg.id] = kept
        clients[cfg.id] = WmsClient(
            cfg,
            metrics=container.metrics,
            token=connector_token(cfg),
            on_call=functools.partial(_keep_call, kept),
        )
    return clients, calls


async def _wms_sync(container: Container) -> Service:
    configs = container.settings.connectors_of(WmsConnectorConfig)
    clients, calls = _wms_clients(container)
    sync = WmsSyncWorker(container.wms, clients, configs, container.metrics, calls)
    return Service(
        loops=[sync.run], consumers=[ConsumerSpec("wms-sync", "wms.sync", sync.handler())]
    )


async def _wms_outbound(container: Container) -> Service:
    configs = container.settings.connectors_of(WmsConnectorConfig)
    clients, calls = _wms_clients(container)
    out = WmsOutboundWorker(
        container.wms,
        clients,
        configs,
        container.pool,
        container.metrics,
        container.clock,
        calls,
    )
    return Service(
        loops=[out.run], consumers=[ConsumerSpec("wms-outbound", "wms.outbound", out.handler())]
    )


async def _ingest(container: Container) -> Service:
    handler = ingest_handler(container.ingest)
    return Service(consumers=[ConsumerSpec("ingest", "inventory.ingest", handler)])


async def _pollers(container: Container) -> Service:
    return Service(loops=[functools.partial(run_pollers, container)])


async def _propagator(container: Container) -> Service:
    """The propagator with one adapter per channel, and its consumers."""
    adapters = {
        cfg.id: channel_adapter(cfg, container.metrics)
        for cfg in container.settings.connectors_of(ChannelConfig)
    }
    worker = Propagator(
        container.propagation, adapters, container.pool, listen_pool=container.session_pool
    )
    n = container.settings.propagation.consumers
    # One name: their idempotency scope is the same, whichever replica takes a message.
    spec = ConsumerSpec(
        "propagator",
        "channel.propagation",
        worker.handler(),
        batch=True,
        handle_many=worker.batch_handler(),
    )
    specs = [spec] * n
    return Service(loops=[worker.run], consumers=specs)


async def _saga(container: Container) -> Service:
    handler = saga_handler(container.orders, container.failpoints)
    n = container.settings.orders.consumers
    # Batches of what the broker has handed out (D-371): the reserve of several orders
    # set-based in one transaction; a lone message the one-message way.
    spec = ConsumerSpec(
        "saga",
        SAGA_QUEUE,
        handler,
        batch=True,
        handle_many=saga_batch_handler(container.orders, container.failpoints),
        one_as_single=True,
    )
    return Service(consumers=[spec] * n)


SERVICES: Final[Mapping[str, Builder]] = {
    "inventory-api": _inventory_api,
    "admin-api": _admin_api,
    "expiry": _expiry,
    "dispatcher": _dispatcher,
    "wms-sync": _wms_sync,
    "wms-outbound": _wms_outbound,
    "ingest": _ingest,
    "pollers": _pollers,
    "propagator": _propagator,
    "saga": _saga,
}
"""Every service ``stockkeeper run`` knows, in the order ``stockkeeper up`` starts them."""


async def build_services(container: Container, names: Iterable[str]) -> Service:
    """Build the services ``names``, in that order, merged into one."""
    merged = Service()
    for name in names:
        part = await SERVICES[name](container)
        merged.apps += part.apps
        merged.loops += part.loops
        merged.consumers += part.consumers
    if container.embedded is not None:
        # Ours to keep: started again if it goes away (workers/embedded_watch.py).
        merged.loops.append(EmbeddedWatch(container.embedded, container.metrics).run)
    return merged


# -- the connection budget -------------------------------------------------------------


def _pollers_need(s: Settings) -> Connections:
    n = len(s.connectors_of(ErpConnectorConfig)) + len(s.connectors_of(MarketplaceConnectorConfig))
    return Connections(work=n, session=n)  # a tick each, and each holds its leader lock


def _propagator_need(s: Settings) -> Connections:
    # Its consumers, one sender loop per channel, the lag monitor; the wake-up LISTEN.
    return Connections(s.propagation.consumers + len(s.connectors_of(ChannelConfig)) + 1, 1)


CONNECTIONS: Final[Mapping[str, Callable[[Settings], Connections]]] = {
    # One per request in flight; past that, requests queue for a connection in the
    # process (pool.acquire) rather than for a slot on the server.
    "inventory-api": lambda s: Connections(10),
    "admin-api": lambda s: Connections(3),
    "expiry": lambda s: Connections(1),
    # Two claim transactions on RabbitMQ (a batch in flight while the next is claimed,
    # D-376); on the embedded queue, one, and the queue's insert beside it on another.
    "dispatcher": lambda s: Connections(2, session=1),
    "wms-sync": lambda s: Connections(2),  # the sync loop and its consumer
    "wms-outbound": lambda s: Connections(2),
    "ingest": lambda s: Connections(1),  # one consumer: one message at a time
    "pollers": _pollers_need,
    "propagator": _propagator_need,
    "saga": lambda s: Connections(s.orders.consumers),
}
"""What each service holds at once. A consumer handles one message at a time, so it
needs one connection whatever ``broker.prefetch`` is; a process gets one spare on top."""

USES_BROKER: Final = frozenset(SERVICES) - {"inventory-api", "expiry"}
"""Services that connect to the broker (pollers: for queue depths): on the embedded
queue, one LISTEN per process."""


def connections(settings: Settings, names: Iterable[str]) -> Connections:
    """What the services ``names`` hold at once, run together in one process."""
    wanted = list(names)
    total = Connections(0)
    for name in wanted:
        total += CONNECTIONS[name](settings)
    if not settings.broker.url and USES_BROKER.intersection(wanted):
        total += Connections(0, session=1)  # the embedded queue's LISTEN
    return total


SERVICE_CONNECTORS: Final[Mapping[str, tuple[type[ConnectorConfig], ...]]] = {
    "inventory-api": (WebhookConnectorConfig,),  # checks the webhooks' signatures
    "wms-sync": (WmsConnectorConfig,),
    "wms-outbound": (WmsConnectorConfig,),
    "pollers": (ErpConnectorConfig, MarketplaceConnectorConfig),
    "propagator": (ChannelConfig,),
}
"""The kinds of connector each service talks to; the others talk to none."""


def connectors_used(settings: Settings, names: Iterable[str]) -> list[ConnectorConfig]:
    """The configured connectors the services ``names`` talk to: the ones whose secrets
    they need."""
    kinds = tuple(k for name in names for k in SERVICE_CONNECTORS.get(name, ()))
    return [cfg for cfg in settings.connectors if isinstance(cfg, kinds)]
