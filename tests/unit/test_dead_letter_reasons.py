"""What a message RabbitMQ dead-lettered is recorded with: its own reason's words."""

from __future__ import annotations

from stockkeeper.messaging.dead_letter_queue import death_error, death_of


def headers(reason: str, count: int | None = None) -> dict[str, object]:
    h: dict[str, object] = {
        "x-death": [
            {"queue": "p.wms.outbound", "reason": reason, "routing-keys": ["inventory.allocated"]}
        ]
    }
    if count is not None:
        h["x-delivery-count"] = count
    return h


def test_past_the_delivery_limit() -> None:
    error = death_error(death_of(headers("delivery_limit", 11)), "wms.outbound")
    assert "(delivery_limit)" in error
    assert "delivered 11 times without an ack (x-delivery-limit)" in error


def test_past_the_delivery_limit_without_a_count_is_the_limit_plus_one() -> None:
    # RabbitMQ 3.x keeps no x-delivery-count on the dead-lettered copy: the limit the
    # queues are declared with says it, as the embedded queue counts (D-458).
    death = death_of(headers("delivery_limit"), delivery_limit=10)
    assert death.deliveries == 11
    error = death_error(death, "wms.outbound")
    assert "delivered 11 times without an ack (x-delivery-limit)" in error
    assert death_of(headers("rejected"), delivery_limit=10).deliveries is None


def test_rejected_by_a_consumer_is_not_called_a_delivery_limit() -> None:
    error = death_error(death_of(headers("rejected", 3)), "wms.outbound")
    assert "(rejected)" in error
    assert "x-delivery-limit" not in error
    assert "broker.max_attempts" in error


def test_another_reason_is_named_as_it_is() -> None:
    error = death_error(death_of(headers("expired")), "wms.outbound")
    assert error == "RabbitMQ dead-lettered it from wms.outbound (expired)"
