"""RabbitMQ's dead-letter queue, read into ``dead_letter``.

A message RabbitMQ dead-letters (handed back more often than its queue's
``x-delivery-limit``: a consumer that died on it every time) waits in the
``dead-letters`` queue. The drain writes each to ``dead_letter``, under the queue it
came from and with why, and acks it only after the row committed: nothing is dropped.
At least once: a crash between the commit and the ack writes it twice, two rows of one
message id that an operator replays or discards like any other. A database outage is
waited out, as consumers do. The embedded queue needs no drain: its claim moves a
message past the same limit into ``dead_letter`` itself, in the same words (D-458).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from stockkeeper.messaging.broker import Broker, Delivery
from stockkeeper.messaging.consumer import (
    ConsumerStopped,
    attempt_of,
    carried_headers,
    through_outages,
)
from stockkeeper.messaging.envelope import ROUTING_KEY_HEADER
from stockkeeper.messaging.rabbitmq import DEAD_LETTER_QUEUE, RabbitMQBroker
from stockkeeper.messaging.topology import (
    DELIVERY_LIMIT,
    DELIVERY_LIMIT_REASON,
    REJECTED_REASON,
    past_delivery_limit,
    rejected_unrecorded,
)
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import dead_letters
from stockkeeper.store.pool import Pool, connection
from stockkeeper.waiting import wait_any

log = get_logger("stockkeeper.dead_letter_queue")

DRAIN = "dead-letter-drain"
PREFETCH = 16


@dataclass(frozen=True, slots=True)
class Death:
    """Why RabbitMQ dead-lettered a message, from the newest entry of its ``x-death``."""

    queue: str
    reason: str
    routing_key: str | None
    deliveries: int | None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def death_of(headers: dict[str, Any], delivery_limit: int | None = None) -> Death:
    """The newest death of a dead-lettered message (RabbitMQ lists them newest first).

    Its deliveries: ``x-delivery-count`` where RabbitMQ kept it; for a death past the
    ``delivery_limit`` our queues are declared with, else that limit plus one (RabbitMQ
    3.x drops the count on the way: the message was handed out once and redelivered up
    to the limit, as the embedded queue counts it too, D-458)."""
    deaths = headers.get("x-death") or []
    newest: dict[str, Any] = deaths[0] if deaths and isinstance(deaths[0], dict) else {}
    keys = newest.get("routing-keys") or []
    reason = _text(newest.get("reason", headers.get("x-first-death-reason", "?")))
    count = headers.get("x-delivery-count")
    deliveries = int(count) if count is not None else None
    if deliveries is None and reason == DELIVERY_LIMIT_REASON and delivery_limit is not None:
        deliveries = delivery_limit + 1
    return Death(
        queue=_text(newest.get("queue", headers.get("x-first-death-queue", "?"))),
        reason=reason,
        routing_key=_text(keys[0]) if keys else None,
        deliveries=deliveries,
    )


def death_error(death: Death, queue: str) -> str:
    """The ``dead_letter.error`` of a message RabbitMQ dead-lettered, in its reason's
    words: past the delivery limit, or rejected by a consumer that could not even
    record its failure (after ``broker.max_attempts`` deliveries)."""
    said = f"RabbitMQ dead-lettered it from {queue} ({death.reason})"
    if death.reason == DELIVERY_LIMIT_REASON:
        times = death.deliveries or "too many"
        return past_delivery_limit("RabbitMQ", queue, times, "x-delivery-limit")
    if death.reason == REJECTED_REASON:
        return rejected_unrecorded("RabbitMQ", queue)
    return said


class DeadLetterDrain:
    """Moves what RabbitMQ dead-lettered into ``dead_letter``; one per dispatcher."""

    def __init__(self, broker: Broker, pool: Pool, metrics: Metrics, prefix: str = "") -> None:
        self.broker = broker
        # The x-delivery-limit the queues are declared with: how often a message past it
        # was delivered, where RabbitMQ does not say.
        limit = broker.delivery_limit if isinstance(broker, RabbitMQBroker) else DELIVERY_LIMIT
        self.delivery_limit = limit
        self.pool = pool
        self.metrics = metrics
        self.prefix = prefix
        self._stopping = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        self._stopping.clear()
        sub = await self.broker.consume(DEAD_LETTER_QUEUE, self.on_delivery, PREFETCH)
        log.info("dead_letter_drain.started", queue=self.prefix + DEAD_LETTER_QUEUE)
        await stop.wait()
        self._stopping.set()
        await sub.cancel()

    def _queue(self, name: str) -> str:
        return name.removeprefix(self.prefix)

    async def on_delivery(self, d: Delivery) -> None:
        death = death_of(d.headers, self.delivery_limit)
        queue = self._queue(death.queue)
        routing_key = d.headers.get(ROUTING_KEY_HEADER) or death.routing_key or d.routing_key
        error = death_error(death, queue)
        # Past the delivery limit, its attempts are its deliveries, as on the embedded
        # queue (D-458); else the consumer's own count.
        attempts = attempt_of(d.headers)
        if death.reason == DELIVERY_LIMIT_REASON and death.deliveries:
            attempts = death.deliveries

        async def record() -> int:
            async with connection(self.pool) as conn:
                return await dead_letters.record(
                    conn,
                    queue=queue,
                    message_id=d.message_id,
                    routing_key=_text(routing_key),
                    body=d.body,
                    headers=carried_headers(d.headers),
                    error=error,
                    attempts=attempts,
                )

        try:
            row = await through_outages(
                record,
                self.pool,
                self._stopping,
                consumer=DRAIN,
                message_id=str(d.message_id),
                metrics=self.metrics,
            )
        except ConsumerStopped:
            await d.requeue()
            return
        except Exception:
            # Not an outage, and not ours to drop: hand it back and try again later.
            log.exception("dead_letter_drain.failed", message_id=d.message_id, queue=queue)
            await wait_any(self._stopping, at_most=1.0)
            await d.requeue()
            return
        log.error(
            "dead_letter_drain.dead_letter",
            dead_letter_id=row,
            message_id=d.message_id,
            queue=queue,
            reason=death.reason,
        )
        self.metrics.dead_letters.labels(queue=queue).inc()
        await d.ack()
