"""The W3C trace context with tracing off (D-406): parsed strictly, carried per task."""

from __future__ import annotations

import asyncio

import pytest

from stockkeeper.observability import tracing

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TP, TP),
        (TP.encode(), TP),
        (f" {TP} ", TP),
        ("01" + TP[2:] + "-future-field", "00" + TP[2:]),
        (TP + "-extra", None),  # version 00 has exactly four fields
        ("ff" + TP[2:], None),
        ("00-" + "0" * 32 + "-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01", None),
        (TP.upper(), None),
        ("00-abc-def-01", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_valid_traceparent(value: object, expected: str | None) -> None:
    assert tracing.valid_traceparent(value) == expected


def test_a_new_traceparent_is_valid_and_not_sampled() -> None:
    a, b = tracing.new_traceparent(), tracing.new_traceparent()
    assert tracing.valid_traceparent(a) == a
    assert a.endswith("-00")
    assert a != b


def test_off_the_carried_context_is_the_current_one_and_in_log_lines() -> None:
    assert not tracing.enabled()
    assert tracing.current_traceparent() is None
    assert tracing.add_trace_id(None, "info", {}) == {}
    with tracing.carrying(TP):
        assert tracing.current_traceparent() == TP
        line = tracing.add_trace_id(None, "info", {"event": "x"})
        assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert line["span_id"] == "00f067aa0ba902b7"
    assert tracing.current_traceparent() is None


def test_off_a_consumer_carries_its_messages_traceparent_or_a_new_one() -> None:
    with tracing.consuming("consume x", {"traceparent": TP}) as span:
        assert span is None
        assert tracing.current_traceparent() == TP
    with tracing.consuming("consume x", {}):
        fresh = tracing.current_traceparent()
    assert fresh is not None
    assert tracing.valid_traceparent(fresh) == fresh
    assert tracing.current_traceparent() is None


async def test_the_carried_context_is_the_tasks_own() -> None:
    async def inside(tp: str) -> str | None:
        with tracing.carrying(tp):
            await asyncio.sleep(0.01)
            return tracing.current_traceparent()

    other = TP[:-2] + "00"
    assert await asyncio.gather(inside(TP), inside(other)) == [TP, other]
