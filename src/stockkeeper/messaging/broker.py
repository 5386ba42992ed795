"""The Broker port. Services never know which adapter they run on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from stockkeeper.store.pool import Conn


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to publish: routed by ``exchange`` and ``routing_key``."""

    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any] = field(default_factory=dict)


class Delivery(Protocol):
    """A message handed to a consumer. Exactly one of ack, requeue or reject must follow."""

    @property
    def queue(self) -> str: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def headers(self) -> dict[str, Any]: ...
    @property
    def redelivered(self) -> bool: ...
    @property
    def deliveries(self) -> int:
        """How many times the broker has handed this message out, this time included."""
        ...

    async def ack(self) -> None:
        """Done with it: the broker forgets the message."""

    async def requeue(self) -> None:
        """Not handled (shutting down): deliver it again, to us or another consumer."""

    async def reject(self) -> None:
        """Give up on it without requeueing: the broker's own dead-letter handling takes
        it (RabbitMQ: the queue's dead-letter exchange, if one is set by policy; the
        embedded queue: the row is marked dead). For failures we cannot even record."""


Handler = Callable[[Delivery], Awaitable[None]]


class Subscription(Protocol):
    async def cancel(self) -> None:
        """Stop receiving; messages in flight finish first."""


class Broker(Protocol):
    """What stockkeeper needs of a message broker."""

    name: str

    async def connect(self) -> None:
        """Open connections and declare the topology (idempotent)."""

    async def close(self) -> None: ...

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish in order; return only when the broker has confirmed every message.

        Raises if any message was not confirmed; the caller publishes them again.
        """

    async def send_to_queue(self, queue: str, message: OutgoingMessage, delay_ms: int = 0) -> None:
        """Put a message on one queue directly, after ``delay_ms`` (retries, replays)."""

    async def consume(self, queue: str, handler: Handler, prefetch: int) -> Subscription:
        """Call ``handler`` for each message of ``queue``, one at a time, in order."""

    async def queue_depths(self) -> dict[str, int]:
        """Messages waiting per queue."""


@runtime_checkable
class PublishesInTransaction(Protocol):
    """A broker that keeps its messages in stockkeeper's own database (the embedded
    queue): it can write them in the caller's transaction, so the outbox rows are marked
    SENT in the same commit that makes the messages deliverable, exactly once (D-132)."""

    async def publish_in(self, conn: Conn, messages: Sequence[OutgoingMessage]) -> None:
        """Like ``Broker.publish``, on ``conn`` inside its open transaction: the messages
        exist once that transaction commits, and not at all if it rolls back."""


@runtime_checkable
class AcksMany(Protocol):
    """A broker that settles a batch's acks at once (RabbitMQ: one ``basic.ack`` with
    ``multiple``; the embedded queue: one DELETE), for the batched consumer runner."""

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """Ack ``deliveries``, all handed out by one subscription. Every delivery that
        subscription handed out before the last of them must be settled already or be
        among them (the runner settles a batch's failures first)."""


@runtime_checkable
class Reconnects(Protocol):
    """A broker whose connection comes back by itself after an outage (RabbitMQ's
    robust connection), and says so: the dispatcher, backing off while it was away,
    tries again at once instead of at the end of its pause (D-434)."""

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the connection is back after a loss."""


class BrokerUnavailable(Exception):
    """The broker cannot take messages right now; retry later."""


class PublishRejected(Exception):
    """The broker refused some messages (a nack); the others were confirmed."""

    def __init__(self, message_ids: list[str], reason: str) -> None:
        super().__init__(f"{reason}: {len(message_ids)} message(s)")
        self.message_ids = message_ids
        self.reason = reason
