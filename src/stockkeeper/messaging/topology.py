"""Exchanges, routing keys and queues (ARCHITECTURE section 5), declared by every adapter."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Binding:
    exchange: str
    pattern: str  # topic pattern: words separated by ".", "*" one word, "#" zero or more


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    bindings: tuple[Binding, ...]


INVENTORY_EVENTS = "inventory.events"
WMS_COMMANDS = "wms.commands"
INVENTORY_INGEST = "inventory.ingest"
ORDERS_SAGA = "orders.saga"
# Operational events (sync.lag_alert, sync.lag_recovered): no queue of ours is bound;
# bind your own to page someone.
OPS_EVENTS = "ops.events"

EXCHANGES = (INVENTORY_EVENTS, WMS_COMMANDS, INVENTORY_INGEST, ORDERS_SAGA, OPS_EVENTS)

QUEUES = (
    QueueSpec(
        "wms.outbound",
        tuple(
            Binding(INVENTORY_EVENTS, f"inventory.{k}")
            for k in ("allocated", "released", "confirmed", "expired")
        ),
    ),
    QueueSpec(
        "channel.propagation",
        (
            Binding(INVENTORY_EVENTS, "inventory.level_changed"),
            # Many SKUs' levels in one message (D-220): the same consumer contract.
            Binding(INVENTORY_EVENTS, "inventory.levels_changed"),
        ),
    ),
    # The two commands by name, as the contract's table lists them (D-408).
    QueueSpec(
        "wms.sync",
        tuple(Binding(WMS_COMMANDS, f"wms.sync.{k}") for k in ("force", "scheduled")),
    ),
    QueueSpec("inventory.ingest", (Binding(INVENTORY_INGEST, "ingest.*"),)),
    # The saga's own commands, and what happened to reservations (an order's among
    # them) elsewhere: the expiry worker, a release, a fulfilment.
    QueueSpec(
        "orders.saga",
        (
            Binding(ORDERS_SAGA, "order.*"),
            *(
                Binding(INVENTORY_EVENTS, f"inventory.{k}")
                for k in ("expired", "released", "fulfilled")
            ),
        ),
    ),
)


# Deliveries without an ack beyond the first before a queue gives a message up to the
# dead letters: a consumer that dies on it (crash, OOM, kill -9, a lease that keeps
# lapsing) or hands it back, again and again. Our own retries are new messages and do not
# count. RabbitMQ gets it as each queue's ``x-delivery-limit`` (its own default would be
# 20, then drop); the embedded queue applies the same count in its claim (D-160, D-458).
DELIVERY_LIMIT = 10
# The reason both brokers give a message past its delivery limit (RabbitMQ's x-death
# reason), in the words ``past_delivery_limit`` writes into ``dead_letter.error``.
DELIVERY_LIMIT_REASON = "delivery_limit"


def past_delivery_limit(broker: str, queue: str, deliveries: int | str, limit: str) -> str:
    """The ``dead_letter.error`` of a message ``broker`` gave up after ``deliveries``
    deliveries from ``queue`` without an ack, the same words on both brokers (so the
    admin API and the ops page show them alike); ``limit`` names the limit passed."""
    return (
        f"{broker} dead-lettered it from {queue} ({DELIVERY_LIMIT_REASON}): delivered "
        f"{deliveries} times without an ack ({limit})"
    )


REJECTED_REASON = "rejected"


def rejected_unrecorded(broker: str, queue: str) -> str:
    """The ``dead_letter.error`` of a message a consumer gave up to ``broker``'s own
    dead-lettering, unable even to record its failure (D-123), alike on both brokers."""
    return (
        f"{broker} dead-lettered it from {queue} ({REJECTED_REASON}): a consumer gave it up "
        "after broker.max_attempts deliveries, unable to record its failure (its log has "
        "consumer.rejected_unrecorded)"
    )


def exchange_for(event_type: str) -> str:
    """Which exchange an outbox event of ``event_type`` is published to."""
    if event_type.startswith("inventory."):
        return INVENTORY_EVENTS
    if event_type.startswith("wms."):
        return WMS_COMMANDS
    if event_type.startswith("ingest."):
        return INVENTORY_INGEST
    if event_type.startswith("order."):
        return ORDERS_SAGA
    if event_type.startswith("sync."):
        return OPS_EVENTS
    raise ValueError(f"no exchange for event type {event_type!r}")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching, for the embedded queue (RabbitMQ does its own)."""
    p, k = pattern.split("."), key.split(".")

    def match(i: int, j: int) -> bool:
        if i == len(p):
            return j == len(k)
        if p[i] == "#":
            return any(match(i + 1, jj) for jj in range(j, len(k) + 1))
        if j == len(k):
            return False
        return (p[i] == "*" or p[i] == k[j]) and match(i + 1, j + 1)

    return match(0, 0)


def queues_for(
    exchange: str, routing_key: str, queues: tuple[QueueSpec, ...] = QUEUES
) -> list[str]:
    return [
        q.name
        for q in queues
        if any(b.exchange == exchange and topic_matches(b.pattern, routing_key) for b in q.bindings)
    ]
