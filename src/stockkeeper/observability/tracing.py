"""OpenTelemetry traces: one trace follows a change from the HTTP request to the channel.

Off unless ``tracing.exporter`` is set (D-240). Off means no SDK tracer provider is
installed: every span below is the OpenTelemetry API's no-op, the FastAPI, asyncpg and
httpx instrumentations are not applied, and the helpers return before doing any work,
so tracing costs nothing measurable when it is not wanted.

The path of one change (D-241):

- inventory-api: the FastAPI instrumentation opens the request's server span; the
  asyncpg instrumentation adds a span per statement of its transaction.
- the outbox: :func:`current_traceparent` is stored with each ``domain_event`` row
  (column ``trace_context``), written in the same transaction as the change.
- the dispatcher: a ``publish <type>`` producer span, child of the stored context, whose
  W3C ``traceparent`` travels in the message headers (both broker adapters carry headers
  as they are).
- a consumer: :func:`consuming` opens a consumer span continuing that ``traceparent``;
  events its handler writes to the outbox continue the same trace.
- the channel call: the httpx instrumentation adds a client span and injects
  ``traceparent`` into the request to the channel.

OpenTelemetry keeps its provider process-wide; :func:`install` is the one place that
sets it, so a process has tracing on or off for its whole life.

Off, the W3C trace context still travels (D-406), as OpenTelemetry's API without an SDK
passes on what it is given: a request's ``traceparent`` (the caller's, else a new one)
is :func:`carried <carrying>` while it is handled, stored with the outbox rows it
writes, put in the message headers by the dispatcher (a new one for a row that has
none) and carried by the consumer while it handles the message; log lines show its
``trace_id``. No span is recorded or exported, and nothing is instrumented.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from stockkeeper.config.settings import TracingConfig

TRACEPARENT = "traceparent"
TRACER_NAME = "stockkeeper"

_W3C = TraceContextTextMapPropagator()

# version-trace_id-parent_id-flags, lower-case hex (W3C Trace Context, level 1); a later
# version may append fields after a "-", which are ignored.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_NO_TRACE = "0" * 32
_NO_SPAN = "0" * 16
# With tracing off: the traceparent of the request or message being handled (D-406).
_carried: ContextVar[str | None] = ContextVar("stockkeeper_traceparent", default=None)


def valid_traceparent(value: Any) -> str | None:
    """``value`` as a W3C ``traceparent`` (its version-00 part), or None when it is not
    one (absent, malformed, version ff, an all-zero trace or parent id)."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str) or len(value) > 512:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace_id, parent_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _NO_TRACE:
        return None
    if parent_id == _NO_SPAN:
        return None
    return f"00-{trace_id}-{parent_id}-{flags}"


def new_traceparent() -> str:
    """A new trace's ``traceparent``, not sampled (nothing here records it)."""
    raw = os.urandom(24).hex()
    trace_id, parent_id = raw[:32], raw[32:]
    if trace_id == _NO_TRACE or parent_id == _NO_SPAN:  # pragma: no cover (2^-64)
        return new_traceparent()
    return f"00-{trace_id}-{parent_id}-00"


def carry(traceparent: Any) -> Token[str | None] | None:
    """With tracing off, make ``traceparent`` (a valid one, else a new one) the context
    of what runs from here in this task: what it writes to the outbox and logs carries
    it. Give the token to :func:`uncarry`. On, the spans carry the context: None."""
    if _State.enabled:
        return None
    return _carried.set(valid_traceparent(traceparent) or new_traceparent())


def uncarry(token: Token[str | None] | None) -> None:
    if token is not None:
        _carried.reset(token)


@contextlib.contextmanager
def carrying(traceparent: Any) -> Iterator[None]:
    """:func:`carry` for a block."""
    token = carry(traceparent)
    try:
        yield
    finally:
        uncarry(token)


def carried_traceparent() -> str | None:
    """With tracing off, the traceparent :func:`carry` set for this task, if any."""
    return _carried.get()


class _State:
    """Whether this process installed a tracer provider (OpenTelemetry's own state is
    process-wide too: the provider can be set once)."""

    enabled = False
    instrumented = False
    database_spans = False


def enabled() -> bool:
    """Whether this process records spans."""
    return _State.enabled


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def exporter_for(config: TracingConfig) -> SpanExporter | None:
    """The span exporter ``config`` asks for; None when tracing is off."""
    if config.exporter is None:
        return None
    if config.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if config.exporter == "discard":
        return _discard()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=config.endpoint)


def configure(config: TracingConfig, *, service: str | None = None) -> TracerProvider | None:
    """Install the SDK tracer provider and the instrumentations when ``config`` sets an
    exporter; otherwise do nothing at all and return None."""
    exporter = exporter_for(config)
    if exporter is None:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    attributes: dict[str, str] = {"service.name": config.service_name}
    if service:
        attributes["stockkeeper.service"] = service
    provider = TracerProvider(
        resource=Resource.create(attributes),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    install(provider, database_spans=config.database_spans)
    return provider


def install(provider: TracerProvider, *, database_spans: bool = True) -> None:
    """Make ``provider`` this process's tracer provider and apply the httpx and (with
    ``database_spans``) asyncpg instrumentations (the tests install one with an
    in-memory exporter)."""
    if trace.get_tracer_provider() is not provider:
        trace.set_tracer_provider(provider)
    _State.enabled = True
    if _State.instrumented:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if database_spans:
        AsyncPGInstrumentor().instrument()  # type: ignore[no-untyped-call]
        _State.database_spans = True
    HTTPXClientInstrumentor().instrument()
    _State.instrumented = True


def uninstall() -> None:
    """Stop recording and take the asyncpg and httpx instrumentations off again (the
    provider itself stays: OpenTelemetry sets it once per process). For tests."""
    _State.enabled = False
    if not _State.instrumented:
        return
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    if _State.database_spans:
        AsyncPGInstrumentor().uninstrument()  # type: ignore[no-untyped-call]
        _State.database_spans = False
    HTTPXClientInstrumentor().uninstrument()
    _State.instrumented = False


def instrument_app(app: FastAPI) -> None:
    """A server span per request of ``app``, continuing an incoming ``traceparent``."""
    if not _State.enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, exclude_spans=["receive", "send"])


def current_traceparent() -> str | None:
    """The W3C ``traceparent`` of the active span, to store with an outbox row (tracing
    off: the one carried, D-406); None outside any request or message."""
    if not _State.enabled:
        return _carried.get()
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get(TRACEPARENT)


def _parent(traceparent: Any) -> otel_context.Context | None:
    if not isinstance(traceparent, str) or not traceparent:
        return None
    return _W3C.extract({TRACEPARENT: traceparent})


def producer_span(name: str, traceparent: str | None, **attributes: Any) -> Span | None:
    """A started ``PRODUCER`` span, child of ``traceparent`` (a stored outbox context);
    the caller ends it once the broker confirmed. None when tracing is off."""
    if not _State.enabled:
        return None
    return tracer().start_span(
        name, context=_parent(traceparent), kind=SpanKind.PRODUCER, attributes=attributes
    )


def consumer_span(name: str, headers: Mapping[str, Any], **attributes: Any) -> Span | None:
    """A started ``CONSUMER`` span continuing the ``traceparent`` of ``headers``, for a
    message applied in a batch (not made current: the batch's messages share one
    task); the caller ends it. None when tracing is off."""
    if not _State.enabled:
        return None
    return tracer().start_span(
        name,
        context=_parent(headers.get(TRACEPARENT)),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )


def traceparent_of(span: Span) -> str | None:
    """The ``traceparent`` header value that makes a receiver's span a child of ``span``."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT)


@contextlib.contextmanager
def consuming(name: str, headers: Mapping[str, Any], **attributes: Any) -> Iterator[Span | None]:
    """A ``CONSUMER`` span around one message's handling, continuing the ``traceparent``
    of its headers, and current while the handler runs. Tracing off: the header's
    ``traceparent`` (else a new one) is carried while the handler runs (D-406)."""
    if not _State.enabled:
        with carrying(headers.get(TRACEPARENT)):
            yield None
        return
    with tracer().start_as_current_span(
        name,
        context=_parent(headers.get(TRACEPARENT)),
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    ) as span:
        yield span


@contextlib.contextmanager
def continuing(name: str, traceparents: list[str | None], **attributes: Any) -> Iterator[None]:
    """A span around work done for several traced changes at once (a channel push of a
    batch): child of the first ``traceparent``, linked to the others. No-op when off."""
    if not _State.enabled:
        yield
        return
    contexts = [c for c in (_parent(t) for t in traceparents) if c is not None]
    links = [Link(trace.get_current_span(c).get_span_context()) for c in contexts[1:]]
    with tracer().start_as_current_span(
        name, context=contexts[0] if contexts else None, links=links, attributes=attributes
    ):
        yield


def add_trace_id(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id`` and ``span_id`` of the active span, if any
    (tracing off: of the carried ``traceparent``)."""
    if not _State.enabled:
        carried = _carried.get()
        if carried is not None:
            event.setdefault("trace_id", carried[3:35])
            event.setdefault("span_id", carried[36:52])
        return event
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def _discard() -> SpanExporter:
    """A span exporter that drops every span: the SDK's whole cost with no sink
    (``tracing.exporter: discard``, for measuring the overhead)."""
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return Discard()
