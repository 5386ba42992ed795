"""Runs services in one process: HTTP apps under uvicorn and worker loops, stopped together."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Coroutine, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import uvicorn
from prometheus_client import start_http_server

from stockkeeper.api.admin import create_admin_app
from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container, connector_token, env_secret
from stockkeeper.config import ChannelConfig, WmsConnectorConfig
from stockkeeper.connectors.channel_registry import make_channel
from stockkeeper.connectors.http import CallRecord
from stockkeeper.connectors.wms import WmsClient
from stockkeeper.messaging.consumer import Consumer, EffectHandler
from stockkeeper.observability.logging import get_logger
from stockkeeper.store.wms import CallRow
from stockkeeper.workers.dispatcher import Dispatcher
from stockkeeper.workers.expiry import ExpiryWorker
from stockkeeper.workers.ingest import ingest_handler
from stockkeeper.workers.pollers import run_pollers
from stockkeeper.workers.propagator import Propagator
from stockkeeper.workers.saga import QUEUE as SAGA_QUEUE
from stockkeeper.workers.saga import saga_handler
from stockkeeper.workers.wms_outbound import WmsOutboundWorker
from stockkeeper.workers.wms_sync import WmsSyncWorker

log = get_logger("stockkeeper.runner")

HTTP_SERVICES = ("inventory-api", "admin-api")
WORKER_SERVICES = (
    "expiry",
    "dispatcher",
    "wms-sync",
    "wms-outbound",
    "ingest",
    "pollers",
    "propagator",
    "saga",
)
SERVICES = HTTP_SERVICES + WORKER_SERVICES


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner stops every service at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _http_server(container: Container, service: str) -> _Server:
    api = container.settings.api
    if service == "inventory-api":
        app, port = create_inventory_app(container), api.inventory_port
    else:
        app, port = create_admin_app(container), api.admin_port
    config = uvicorn.Config(
        app,
        host=api.host,
        port=port,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
    )
    return _Server(config)


async def _guarded(name: str, server: _Server) -> None:
    """uvicorn exits the interpreter when it cannot bind; turn that into an error of ours."""
    try:
        await server.serve()
    except SystemExit:
        cfg = server.config
        raise RuntimeError(f"{name} could not start on {cfg.host}:{cfg.port}") from None


@dataclass(frozen=True)
class ConsumerSpec:
    """A consumer to run: a name (its idempotency scope), a queue, an effect handler."""

    name: str
    queue: str
    handler: EffectHandler
    drop_stale: bool = False


async def _run_consumer(container: Container, spec: ConsumerSpec, stop: asyncio.Event) -> None:
    consumer = Consumer(
        spec.name,
        spec.queue,
        spec.handler,
        pool=container.pool,
        broker=await container.connected_broker(),
        metrics=container.metrics,
        policy=container.retry_policy,
        drop_stale=spec.drop_stale,
        failpoints=container.failpoints,
    )
    sub = await consumer.start(container.settings.broker.prefetch)
    log.info("consumer.started", consumer=spec.name, queue=spec.queue)
    await stop.wait()
    await sub.cancel()


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


def _wms_workers(
    container: Container, wanted: Sequence[str], stop: asyncio.Event
) -> tuple[list[Coroutine[Any, Any, None]], list[ConsumerSpec]]:
    configs = container.settings.connectors_of(WmsConnectorConfig)
    tasks: list[Coroutine[Any, Any, None]] = []
    specs: list[ConsumerSpec] = []
    if "wms-sync" in wanted:
        clients, calls = _wms_clients(container)
        sync = WmsSyncWorker(container.wms, clients, configs, container.metrics, calls)
        tasks.append(sync.run(stop))
        specs.append(ConsumerSpec("wms-sync", "wms.sync", sync.handler()))
    if "wms-outbound" in wanted:
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
        tasks.append(out.run(stop))
        specs.append(ConsumerSpec("wms-outbound", "wms.outbound", out.handler()))
    return tasks, specs


def _propagator(container: Container) -> tuple[Propagator, list[ConsumerSpec]]:
    """The propagator with one adapter per channel, and its consumers."""
    adapters = {
        cfg.id: make_channel(
            cfg,
            token=connector_token(cfg),
            secret=env_secret(cfg, "secret_env"),
            metrics=container.metrics,
        )
        for cfg in container.settings.connectors_of(ChannelConfig)
    }
    worker = Propagator(container.propagation, adapters, container.pool)
    n = container.settings.propagation.consumers
    # One name: their idempotency scope is the same, whichever replica takes a message.
    specs = [ConsumerSpec("propagator", "channel.propagation", worker.handler())] * n
    return worker, specs


async def serve(
    container: Container, services: Iterable[str], consumers: Sequence[ConsumerSpec] = ()
) -> None:
    """Run ``services`` until SIGINT or SIGTERM, then stop them all gracefully."""
    wanted = list(services)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    named = [(s, _http_server(container, s)) for s in wanted if s in HTTP_SERVICES]
    servers = [srv for _, srv in named]
    tasks: list[Coroutine[Any, Any, None]] = [_guarded(name, srv) for name, srv in named]
    if "expiry" in wanted:
        tasks.append(ExpiryWorker(container).run(stop))
    if "dispatcher" in wanted:
        d = container.settings.dispatcher
        dispatcher = Dispatcher(
            container.pool,
            await container.connected_broker(),
            container.metrics,
            batch_size=d.batch_size,
            poll_ms=d.poll_interval_ms,
            max_attempts=d.max_attempts,
            failpoints=container.failpoints,
        )
        tasks.append(dispatcher.run(stop))
    consumers = list(consumers)
    if "wms-sync" in wanted or "wms-outbound" in wanted:
        wms_tasks, wms_consumers = _wms_workers(container, wanted, stop)
        tasks += wms_tasks
        consumers += wms_consumers
    if "pollers" in wanted:
        tasks.append(run_pollers(container, stop))
    if "propagator" in wanted:
        propagator, propagation_consumers = _propagator(container)
        tasks.append(propagator.run(stop))
        consumers += propagation_consumers
    if "ingest" in wanted:
        consumers.append(
            ConsumerSpec("ingest", "inventory.ingest", ingest_handler(container.ingest))
        )
    if "saga" in wanted:
        handler = saga_handler(container.orders, container.failpoints)
        consumers += [
            ConsumerSpec("saga", SAGA_QUEUE, handler)
            for _ in range(container.settings.orders.consumers)
        ]
    for spec in consumers:
        tasks.append(_run_consumer(container, spec, stop))
    if not servers and container.settings.monitoring.metrics_port:
        start_http_server(
            container.settings.monitoring.metrics_port, registry=container.metrics.registry
        )

    async def stopper() -> None:
        await stop.wait()
        log.info("runner.stopping")
        for srv in servers:
            srv.should_exit = True

    log.info("runner.started", services=wanted)
    running = [asyncio.ensure_future(t) for t in tasks]
    watcher = asyncio.ensure_future(stopper())
    try:
        done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        if not stop.is_set():
            # One service ended on its own (a port in use, say): stop the rest.
            for t in done:
                if t.exception() is not None:
                    log.error("runner.service_failed", error=repr(t.exception()))
            stop.set()
        await asyncio.gather(*running, return_exceptions=True)
    finally:
        watcher.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    failed = [t.exception() for t in running if t.exception() is not None]
    if failed:
        raise SystemExit(f"stockkeeper: {failed[0]}")
