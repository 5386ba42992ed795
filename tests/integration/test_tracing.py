"""One reservation's trace, from the HTTP request to the channel call (issue 16.5).

The SDK's in-memory exporter collects the spans of the API request, the dispatcher's
publish, the propagator's consumer and its push to a sandbox channel; they must share
one trace id and link up parent to child in that order.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.channel_registry import make_channel
from stockkeeper.messaging.consumer import Consumer
from stockkeeper.observability import tracing
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.dispatcher import Dispatcher
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.channel_webhook import WebhookReceiverState
from stockkeeper_sandbox.server import SandboxServer
from tests.conftest import CHANNEL_WEBHOOK_SECRET, DEFAULT_BROKER_URL, FakeClock
from tests.support import auth

CHANNEL = "hooks"
SECRET_ENV = "SK_TEST_TRACE_HOOK_SECRET"
_PROVIDER: list[tuple[TracerProvider, InMemorySpanExporter]] = []


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this test, into memory. OpenTelemetry's provider is process-wide
    and set once: it is kept for the session, and tracing is switched off again after
    the test (tracing.uninstall), so other tests run as they would without it."""
    if not _PROVIDER:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        _PROVIDER.append((provider, exporter))
    provider, exporter = _PROVIDER[0]
    exporter.clear()
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()


@pytest.fixture(params=["pgqueue", "rabbitmq"])
async def c(
    request: pytest.FixtureRequest,
    config: dict[str, Any],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    broker_prefix: str,
    webhook_channel: tuple[WebhookReceiverState, SandboxServer],
) -> AsyncIterator[Container]:
    """The embedded queue, then RabbitMQ: both carry the traceparent header."""
    monkeypatch.setenv(SECRET_ENV, CHANNEL_WEBHOOK_SECRET)
    config["broker"] = {"prefix": broker_prefix, "poll_ms": 50}
    if request.param == "rabbitmq":
        # The URL the rabbit_url fixture checks (an async fixture cannot be asked for here).
        config["broker"]["url"] = os.environ.get("STOCKKEEPER_TEST_BROKER_URL", DEFAULT_BROKER_URL)
    config["connectors"] = [
        {
            "id": CHANNEL,
            "type": "outbound_webhook",
            "url": f"{webhook_channel[1].url}/levels",
            "secret_env": SECRET_ENV,
        }
    ]
    container = await build(Settings.model_validate(config), clock=clock)
    yield container
    await container.close()


async def until(done: Callable[[], bool], worker: Propagator) -> None:
    """Push what is due until ``done`` (the consumer runs alongside, on the broker)."""
    deadline = time.monotonic() + 20
    while not done():
        assert time.monotonic() < deadline, "nothing reached the channel"
        if not await worker.push_once(CHANNEL):
            await asyncio.sleep(0.02)  # the consumer has not recorded the level yet


def one(found: list[ReadableSpan], what: str) -> ReadableSpan:
    assert len(found) == 1, f"{what}: {[s.name for s in found]}"
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_reservation_is_one_trace_from_the_api_to_the_channel(
    c: Container,
    spans: InMemorySpanExporter,
    webhook_channel: tuple[WebhookReceiverState, SandboxServer],
) -> None:
    await c.stock.receive(Receipt("SKU-T", 5, "rcpt-1"))
    broker = await c.connected_broker()
    dispatcher = Dispatcher(c.pool, broker, c.metrics)
    while await dispatcher.dispatch_once():  # the receipt's events, outside any trace
        pass
    cfg = c.settings.connectors_of(ChannelConfig)[0]
    adapter = make_channel(cfg, token=None, secret=CHANNEL_WEBHOOK_SECRET)
    worker = Propagator(c.propagation, {CHANNEL: adapter}, c.pool)
    consumer = Consumer(
        "propagator",
        "channel.propagation",
        worker.handler(),
        pool=c.pool,
        broker=broker,
        metrics=c.metrics,
    )
    sub = await consumer.start(prefetch=4)
    try:
        # The receipt's level change reaches the channel first, untraced.
        await until(lambda: bool(webhook_channel[0].deliveries()), worker)
        spans.clear()
        webhook_channel[0].traceparents.clear()

        app = create_inventory_app(c)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            r = await client.post(
                "/inventory/reserve",
                json={"order_id": "o-trace", "lines": [{"sku": "SKU-T", "quantity": 2}]},
                headers=auth(),
            )
        assert r.status_code == 201, r.text
        while await dispatcher.dispatch_once():
            pass
        # The consumer records the new level; the sender pushes it.
        await until(lambda: bool(webhook_channel[0].traceparents), worker)
    finally:
        await sub.cancel()
        await adapter.aclose()

    finished = list(spans.get_finished_spans())
    by_id = {s.context.span_id: s for s in finished}
    server = one(
        [s for s in finished if s.kind is SpanKind.SERVER and "/inventory/reserve" in s.name],
        "the API's server span",
    )
    trace_id = server.context.trace_id
    publish = one(
        [s for s in finished if s.name == "publish inventory.level_changed"],
        "the dispatcher's publish of the level change",
    )
    consume = one(
        [s for s in finished if s.name == "consume inventory.level_changed"],
        "the propagator's consumer span",
    )
    push = one([s for s in finished if s.name == f"push {CHANNEL}"], "the channel push")
    call = one(
        [s for s in finished if s.kind is SpanKind.CLIENT and parent_id(s) == push.context.span_id],
        "the channel's HTTP call",
    )
    for s in (publish, consume, push, call):
        assert s.context.trace_id == trace_id, s.name
    assert parent_id(publish) == server.context.span_id  # the stored outbox context
    assert publish.kind is SpanKind.PRODUCER
    assert parent_id(consume) == publish.context.span_id  # traceparent in the headers
    assert consume.kind is SpanKind.CONSUMER
    assert parent_id(push) == consume.context.span_id  # stored with the due push
    # The reservation's statements ran inside the request's trace (asyncpg spans).
    assert any(
        s.kind is SpanKind.CLIENT
        and s.context.trace_id == trace_id
        and s.parent is not None
        and s.parent.span_id in by_id
        and s.attributes
        and "db.system" in s.attributes
        for s in finished
    )
    # The channel was told the trace too (W3C traceparent of the HTTP call).
    (sent,) = webhook_channel[0].traceparents
    assert sent.split("-")[1] == format(trace_id, "032x")


async def test_log_lines_carry_the_trace_id_of_the_active_span(
    spans: InMemorySpanExporter,
) -> None:
    event: dict[str, Any] = {}
    assert tracing.add_trace_id(None, "info", dict(event)) == {}
    with tracing.tracer().start_as_current_span("work") as span:
        line = tracing.add_trace_id(None, "info", {"event": "x"})
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")


def test_tracing_is_off_unless_an_exporter_is_set() -> None:
    from stockkeeper.config import TracingConfig

    assert tracing.configure(TracingConfig()) is None
    assert not tracing.enabled()
    assert tracing.current_traceparent() is None
    with tracing.consuming(
        "consume x", {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    ) as s:
        assert s is None
    with pytest.raises(ValueError, match=r"tracing\.endpoint"):
        TracingConfig.model_validate({"exporter": "otlp"})
