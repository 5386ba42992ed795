"""Runs services in one process: HTTP apps under uvicorn and worker loops, stopped together.

What each service starts is :data:`stockkeeper.wiring.SERVICES`; this module runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Sequence
from typing import Any

import uvicorn
from prometheus_client import start_http_server

from stockkeeper.bootstrap import Container
from stockkeeper.messaging.consumer import Consumer
from stockkeeper.observability.logging import get_logger
from stockkeeper.wiring import ConsumerSpec, HttpApp, build_services

log = get_logger("stockkeeper.runner")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the runner stops every service at once."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def _http_server(container: Container, http: HttpApp) -> _Server:
    config = uvicorn.Config(
        http.app,
        host=container.settings.api.host,
        port=http.port,
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


def _worker_name(loop: Callable[..., object]) -> str:
    """A loop's name for the log: ``Dispatcher.run``, ``run_pollers``."""
    func = getattr(loop, "func", loop)  # a functools.partial
    return str(getattr(func, "__qualname__", repr(func)))


async def _logged_stop(kind: str, name: str, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work``, then log that it stopped (and how, if it failed)."""
    try:
        await work
    except BaseException as exc:
        log.warning(f"{kind}.stopped", name=name, error=repr(exc))
        raise
    log.info(f"{kind}.stopped", name=name)


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
        batch_size=container.settings.broker.consumer_batch_size if spec.batch else 1,
        handle_many=spec.handle_many,
        one_as_single=spec.one_as_single,
    )
    sub = await consumer.start(container.settings.broker.prefetch)
    log.info("consumer.started", consumer=spec.name, queue=spec.queue)
    await stop.wait()
    await sub.cancel()


@contextlib.contextmanager
def _stopped_by_signals(stop: asyncio.Event) -> Iterator[None]:
    """SIGINT and SIGTERM set ``stop`` while inside."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


async def _run_together(
    tasks: Sequence[Coroutine[Any, Any, None]], servers: Sequence[_Server], stop: asyncio.Event
) -> None:
    """Run ``tasks`` until ``stop`` is set or one of them ends, then stop and await them
    all; exit naming the first failure."""

    async def stopper() -> None:
        await stop.wait()
        log.info("runner.stopping")
        for srv in servers:
            srv.should_exit = True

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
    failed = [t.exception() for t in running if t.exception() is not None]
    if failed:
        raise SystemExit(f"stockkeeper: {failed[0]}")


def freeze_startup_heap() -> None:
    """Leave what the process built to start (modules, the apps and their routes and
    models, the container) out of every later garbage collection.

    Those objects live as long as the process, but the collector's full passes walked
    them all again: about 120 ms with the event loop stopped, several times a minute
    under load, which made the reserve bench's p99 and about a quarter of its server
    CPU per reservation (D-402). ``gc.freeze`` moves them to the permanent generation;
    objects made afterwards are collected as before.
    """
    gc.collect()
    gc.freeze()


def serve_metrics(container: Container, port: int) -> None:
    """The workers' Prometheus endpoint on ``port`` (``monitoring.metrics_port``) of
    ``api.host``, the address the HTTP services listen on (prometheus_client's default
    is every interface); a port that is taken stops the start with a message naming the
    key, not a traceback."""
    host = container.settings.api.host
    try:
        start_http_server(port, addr=host, registry=container.metrics.registry)
    except OSError as exc:
        raise SystemExit(
            f"stockkeeper: monitoring.metrics_port {port} cannot be opened on {host} "
            f"({exc.strerror or exc}); "
            "each worker process on a host needs a port of its own "
            "(STOCKKEEPER_MONITORING__METRICS_PORT), or 0 for none"
        ) from exc


async def serve(
    container: Container, services: Iterable[str], consumers: Sequence[ConsumerSpec] = ()
) -> None:
    """Run ``services`` (names in :data:`~stockkeeper.wiring.SERVICES`) and ``consumers``
    until SIGINT or SIGTERM, then stop them all gracefully."""
    wanted = list(services)
    stop = asyncio.Event()
    with _stopped_by_signals(stop):
        built = await build_services(container, wanted)
        if consumers or built.consumers:
            # Connected before anything runs: a broker that cannot be reached stops the
            # start with the setting to look at, before any consumer has begun.
            await container.connected_broker()
        named = [(http.name, _http_server(container, http)) for http in built.apps]
        metrics_port = container.settings.monitoring.metrics_port
        if not named and metrics_port:
            serve_metrics(container, metrics_port)
        tasks = [_logged_stop("http", name, _guarded(name, srv)) for name, srv in named]
        tasks += [_logged_stop("worker", _worker_name(lp), lp(stop)) for lp in built.loops]
        tasks += [
            _logged_stop("consumer", spec.name, _run_consumer(container, spec, stop))
            for spec in [*consumers, *built.consumers]
        ]
        freeze_startup_heap()
        log.info("runner.started", services=wanted, pid=os.getpid())
        await _run_together(tasks, [srv for _, srv in named], stop)
