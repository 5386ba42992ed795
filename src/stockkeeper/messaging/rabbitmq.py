"""The RabbitMQ adapter (aio-pika): topic exchanges, durable quorum queues, publisher
confirms, prefetch, and a robust connection that reconnects and restores consumers.

Delayed retries use one quorum queue per delay (``<queue>.retry.<ms>``) whose messages
expire into the default exchange, routed straight back to ``<queue>``: no plugin needed,
and a message waiting for its retry never blocks the ones behind it.

Every queue states its own delivery limit and dead-lettering rather than inheriting the
broker's defaults (RabbitMQ 4 drops a quorum queue's message after 20 redeliveries
unless told otherwise): a message handed back more than ``delivery_limit`` times (a
consumer that crashes on it, again and again) is dead-lettered, at least once, to the
``dead-letters`` queue, which :mod:`stockkeeper.messaging.dead_letter_queue` reads into
``dead_letter``. The retry queues' expiry into their queue is at least once too. A
queue declared by an older stockkeeper with other arguments cannot be re-declared
(PRECONDITION_FAILED): :class:`TopologyMismatch` says which and what to do (D-160).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url

from stockkeeper.messaging.broker import (
    BrokerUnavailable,
    Delivery,
    Handler,
    OutgoingMessage,
    PublishRejected,
)
from stockkeeper.messaging.envelope import DELIVERY_COUNT_HEADER, ROUTING_KEY_HEADER
from stockkeeper.messaging.topology import DELIVERY_LIMIT as DELIVERY_LIMIT
from stockkeeper.messaging.topology import EXCHANGES, QUEUES, QueueSpec
from stockkeeper.observability import logging as logs
from stockkeeper.observability.logging import get_logger

QUORUM = {"x-queue-type": "quorum"}
# Dead-lettering that waits for the target queue's confirm (never lost on the way);
# RabbitMQ requires reject-publish overflow alongside it.
AT_LEAST_ONCE = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
# Each queue's x-delivery-limit is DELIVERY_LIMIT (topology.py), the embedded queue's too.
# Where messages past their delivery limit wait to be written to ``dead_letter``.
DEAD_LETTER_QUEUE = "dead-letters"
# The dead-letter queue is only acked once the row is written, so it is handed back only
# by a stopping drain; its limit is far away, so RabbitMQ 4's default (20, then drop)
# never applies to it. It dead-letters nowhere: it is the end of the line.
DEAD_LETTER_QUEUE_LIMIT = 1_000_000
log = get_logger("stockkeeper.rabbitmq")


class TopologyMismatch(Exception):
    """A queue exists on the broker with arguments other than ours (declared by an older
    stockkeeper): RabbitMQ refuses to re-declare it. Not retried: an operator decides."""


def queue_arguments(
    name: str, prefix: str = "", delivery_limit: int = DELIVERY_LIMIT
) -> dict[str, Any]:
    """The arguments queue ``name`` (unprefixed) is declared with, every time."""
    if name == DEAD_LETTER_QUEUE:
        return {**QUORUM, "x-delivery-limit": DEAD_LETTER_QUEUE_LIMIT}
    return {
        **QUORUM,
        **AT_LEAST_ONCE,
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": prefix + DEAD_LETTER_QUEUE,
    }


def retry_queue_arguments(target: str, delay_ms: int) -> dict[str, Any]:
    """A retry queue's: expire after ``delay_ms`` into ``target`` (a full queue name),
    at least once."""
    return {
        **QUORUM,
        **AT_LEAST_ONCE,
        "x-message-ttl": delay_ms,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": target,
    }


_MISMATCH_HELP = (
    "RabbitMQ refused to declare queue {queue!r}: it already exists with other arguments "
    "(declared by an older stockkeeper, before queues stated their own delivery limit "
    "and dead-lettering; the broker said: {reply}). A queue's arguments cannot change in "
    "place. Stop what publishes to it, let its consumers empty it, delete it "
    "(rabbitmqctl delete_queue {queue}) and start again: see D-160 in docs/decisions.md."
)


@dataclass(slots=True)
class RabbitDelivery:
    queue: str
    _message: AbstractIncomingMessage

    @property
    def message_id(self) -> str | None:
        return self._message.message_id

    @property
    def routing_key(self) -> str:
        original = (self._message.headers or {}).get(ROUTING_KEY_HEADER)
        if isinstance(original, bytes):
            original = original.decode()
        return str(original) if original else (self._message.routing_key or "")

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def headers(self) -> dict[str, Any]:
        return dict(self._message.headers or {})

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    @property
    def deliveries(self) -> int:
        # A quorum queue counts the returned deliveries in x-delivery-count.
        raw = (self._message.headers or {}).get(DELIVERY_COUNT_HEADER, 0)
        try:
            returned = int(str(raw or 0))
        except ValueError:
            returned = 0
        return 1 + max(0, returned)

    def _channel(self) -> object:
        return self._message.channel

    async def ack(self) -> None:
        await self._message.ack()

    async def requeue(self) -> None:
        await self._message.nack(requeue=True)

    async def reject(self) -> None:
        await self._message.nack(requeue=False)


class RabbitSubscription:
    def __init__(
        self, queue: AbstractQueue, tag: str, lock: asyncio.Lock, channel: AbstractChannel
    ) -> None:
        self._queue = queue
        self._tag = tag
        self._lock = lock
        self._channel = channel

    async def cancel(self) -> None:
        await self._queue.cancel(self._tag)
        async with self._lock:  # let the message being handled finish
            pass
        await self._channel.close()


class RabbitMQBroker:
    """Broker port on RabbitMQ 3.10+."""

    name = "rabbitmq"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        publish_timeout_s: float = 10.0,
        queues: tuple[QueueSpec, ...] = QUEUES,
        connection_name: str = "stockkeeper",
        reconnect_interval_s: float = 1.0,
        delivery_limit: int = DELIVERY_LIMIT,
    ):
        self.delivery_limit = delivery_limit
        self.reconnect_interval = reconnect_interval_s
        self.url = url
        self.prefix = prefix
        self.publish_timeout = publish_timeout_s
        self.queues = queues
        self.connection_name = connection_name
        self._conn: AbstractRobustConnection | None = None
        self._pub: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._retry_queues: set[str] = set()
        self._publish_lock = asyncio.Lock()
        self._down_since: float | None = None  # when the connection was lost
        self._on_reconnect: list[Callable[[], None]] = []
        # Every name this broker has declared on RabbitMQ, kept across reconnects: what
        # a test checks is gone after deleting its prefix's topology (D-410).
        self.declared_queues: set[str] = set()
        self.declared_exchanges: set[str] = set()

    def _n(self, name: str) -> str:
        return self.prefix + name

    async def connect(self) -> None:
        if self._conn is not None:
            return
        # What aio_pika.connect_robust does, with the connection in our hands when the
        # first connect fails: closed then, instead of left to aio-pika's __del__, which
        # cannot schedule its close when the garbage collector runs it outside the event
        # loop ("coroutine 'RobustConnection.close' was never awaited").
        props: dict[str, Any] = {"connection_name": self.connection_name}
        url = make_url(self.url, reconnect_interval=self.reconnect_interval)
        conn = aio_pika.RobustConnection(
            url, client_properties=props, reconnect_interval=self.reconnect_interval
        )
        try:
            await conn.connect()
        except (OSError, aio_pika.exceptions.AMQPError) as exc:
            await conn.close()
            raise BrokerUnavailable(f"cannot connect to RabbitMQ: {exc}") from exc
        self._conn = conn
        logs.broker_up()
        # One line when the connection drops and one when it is back, ours (aio-pika's
        # own say it once a second meanwhile, and are throttled: D-436).
        # Through a weak reference: the connection holding a bound method of this broker
        # would make a cycle, and a broker dropped unclosed would then be collected at
        # some later GC pass, where aio-pika's __del__ cannot schedule its close.
        ref = weakref.ref(self)

        def lost(conn: object, exc: BaseException | None = None) -> None:
            if (broker := ref()) is not None:
                broker._on_lost(conn, exc)

        def back(conn: object) -> None:
            if (broker := ref()) is not None:
                broker._on_back(conn)

        self._conn.close_callbacks.add(lost)
        self._conn.reconnect_callbacks.add(back)
        self._pub = await self._conn.channel(publisher_confirms=True)
        try:
            await self.declare()
        except BaseException:
            await self.close()  # a topology we cannot declare: no half-open connection
            raise

    def _on_lost(self, _conn: object, exc: BaseException | None = None) -> None:
        if self._conn is None or self._down_since is not None:
            return  # we closed it, or it is already down
        self._down_since = time.monotonic()
        log.warning("rabbitmq.connection_lost", connection=self.connection_name, error=repr(exc))

    def _on_back(self, _conn: object) -> None:
        down_s = None if self._down_since is None else time.monotonic() - self._down_since
        self._down_since = None
        log.info(
            "rabbitmq.reconnected",
            connection=self.connection_name,
            down_s=None if down_s is None else round(down_s, 1),
        )
        for callback in self._on_reconnect:
            callback()

    def on_reconnect(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the connection is restored after a loss."""
        self._on_reconnect.append(callback)

    async def declare(self) -> None:
        """Declare exchanges, queues and bindings; safe to repeat. Raises
        :class:`TopologyMismatch` for a queue that exists with other arguments."""
        assert self._pub is not None
        for name in EXCHANGES:
            self._exchanges[name] = await self._pub.declare_exchange(
                self._n(name), aio_pika.ExchangeType.TOPIC, durable=True
            )
            self.declared_exchanges.add(self._n(name))
        # First the dead-letter queue: at-least-once dead-lettering needs its target.
        await self._declare_queue(self._pub, DEAD_LETTER_QUEUE)
        for spec in self.queues:
            queue = await self._declare_queue(self._pub, spec.name)
            for b in spec.bindings:
                await queue.bind(self._exchanges[b.exchange], routing_key=b.pattern)

    async def _declare_queue(self, channel: AbstractChannel, name: str) -> AbstractQueue:
        """Declare our queue ``name`` (unprefixed) with its arguments."""
        args = queue_arguments(name, self.prefix, self.delivery_limit)
        return await self._declare(channel, self._n(name), args)

    async def _declare(
        self, channel: AbstractChannel, full_name: str, args: dict[str, Any]
    ) -> AbstractQueue:
        try:
            queue = await channel.declare_queue(full_name, durable=True, arguments=args)
        except aio_pika.exceptions.ChannelPreconditionFailed as exc:
            error = TopologyMismatch(_MISMATCH_HELP.format(queue=full_name, reply=exc))
            log.error("rabbitmq.topology_mismatch", queue=full_name, error=str(error))
            raise error from exc
        self.declared_queues.add(full_name)
        return queue

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None  # first: closing is no outage
            await conn.close()
            self._pub = None
            self._exchanges.clear()

    @staticmethod
    def _message(m: OutgoingMessage) -> aio_pika.Message:
        return aio_pika.Message(
            m.body,
            message_id=m.message_id,
            headers=m.headers,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )

    @staticmethod
    def _properties(m: OutgoingMessage) -> aiormq.spec.Basic.Properties:
        """What :meth:`_message` would send (``aio_pika.Message.properties``), built
        without the message object: the publish path's per-message cost (D-375)."""
        return aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=m.headers,
            message_id=m.message_id,
            priority=0,
        )

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish ``messages`` in order and wait for every confirm. The lock covers
        only the writing, not the wait: a second call's messages follow this call's on
        the channel (so on the queues), and it may write while these are confirmed,
        which is how the dispatcher keeps a batch in flight (D-375)."""
        pub = self._connected_channel()
        try:
            async with self._publish_lock:  # one writer at a time keeps the order
                # A robust channel waits, unbounded, for the connection to come back: the
                # dispatcher would hold its claimed rows' transaction open for the whole
                # outage. Bounded, it rolls back and waits the outage out (D-434).
                channel = await asyncio.wait_for(pub.get_underlay_channel(), self.publish_timeout)
                assert isinstance(channel, aiormq.Channel)  # basic_publish with wait=
                # Straight to aiormq (what aio-pika's Exchange.publish calls), without
                # an aio_pika.Message per message and without a socket drain each
                # (wait=False): the confirm is what we wait for. The tasks start in
                # this order and take the channel's FIFO lock in it, so the frames go
                # out in this order.
                confirms = [
                    asyncio.ensure_future(
                        channel.basic_publish(
                            m.body,
                            exchange=self._exchanges[m.exchange].name,
                            routing_key=m.routing_key,
                            properties=self._properties(m),
                            mandatory=True,
                            timeout=self.publish_timeout,
                            wait=False,
                        )
                    )
                    for m in messages
                ]
            results = await asyncio.gather(*confirms, return_exceptions=True)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
            raise BrokerUnavailable(f"publish not confirmed: {exc!r}") from exc
        refused = aio_pika.exceptions.DeliveryError
        failed = [r for r in results if isinstance(r, BaseException) and not isinstance(r, refused)]
        if failed:
            raise BrokerUnavailable(f"publish not confirmed: {failed[0]!r}") from failed[0]
        rejected = [
            m.message_id for m, r in zip(messages, results, strict=True) if isinstance(r, refused)
        ]
        if rejected:
            raise PublishRejected(rejected, "the broker refused (nack) these messages")

    def _connected_channel(self) -> AbstractRobustChannel:
        """The publishing channel, or :class:`BrokerUnavailable` at once while the
        connection is down (aio-pika reconnects it in the background)."""
        if self._pub is None or self._conn is None:
            raise BrokerUnavailable("not connected")
        if not self._conn.connected.is_set():
            raise BrokerUnavailable("the connection to RabbitMQ is down; reconnecting")
        return self._pub

    async def _retry_queue(self, queue: str, delay_ms: int) -> str:
        name = f"{self._n(queue)}.retry.{delay_ms}"
        if name not in self._retry_queues:
            assert self._pub is not None
            await self._declare(self._pub, name, retry_queue_arguments(self._n(queue), delay_ms))
            self._retry_queues.add(name)
        return name

    async def send_to_queue(self, queue: str, message: OutgoingMessage, delay_ms: int = 0) -> None:
        """Put ``message`` straight on ``queue`` (after ``delay_ms``, through its retry
        queue). Raises :class:`BrokerUnavailable` at once while the connection is down,
        or after the publish timeout, rather than waiting for it to come back: the
        caller (a consumer's retry, an admin's replay) holds a transaction (D-434)."""
        pub = self._connected_channel()
        headers = {**message.headers, ROUTING_KEY_HEADER: message.routing_key}
        direct = OutgoingMessage(
            message.exchange, message.routing_key, message.body, message.message_id, headers
        )

        async def send() -> None:
            target = self._n(queue) if delay_ms <= 0 else await self._retry_queue(queue, delay_ms)
            await pub.default_exchange.publish(
                self._message(direct), routing_key=target, timeout=self.publish_timeout
            )

        try:
            await asyncio.wait_for(send(), self.publish_timeout)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError, RuntimeError) as exc:
            raise BrokerUnavailable(f"publish not confirmed: {exc!r}") from exc

    async def consume(self, queue: str, handler: Handler, prefetch: int) -> RabbitSubscription:
        assert self._conn is not None, "connect() first"
        channel = await self._conn.channel()
        await channel.set_qos(prefetch_count=prefetch)
        q = await self._declare_queue(channel, queue)
        lock = asyncio.Lock()  # FIFO: messages are handled one at a time, in order

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with lock:
                await handler(RabbitDelivery(queue, message))

        tag = await q.consume(on_message, no_ack=False)
        return RabbitSubscription(q, tag, lock, channel)

    async def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        """One ``basic.ack`` with ``multiple`` for the newest of ``deliveries`` per
        channel: it settles every delivery of that channel up to it, which the port's
        precondition makes exactly these (the others before it were settled)."""
        newest: dict[int, RabbitDelivery] = {}
        for d in deliveries:
            assert isinstance(d, RabbitDelivery)
            tag = d._message.delivery_tag or 0
            key = id(d._channel())
            seen = newest.get(key)
            if seen is None or tag > (seen._message.delivery_tag or 0):
                newest[key] = d
        for d in newest.values():
            await d._message.ack(multiple=True)

    async def queue_depths(self) -> dict[str, int]:
        assert self._conn is not None, "connect() first"
        depths: dict[str, int] = {}
        channel = await self._conn.channel()
        try:
            for spec in self.queues:
                q = await channel.declare_queue(self._n(spec.name), passive=True)
                result = q.declaration_result
                depths[self._n(spec.name)] = int(result.message_count or 0)
        finally:
            await channel.close()
        return depths


async def delete_topology(url: str, prefix: str, retry_delays_ms: Sequence[int] = ()) -> None:
    """Delete one installation's queues (with the retry queues of ``retry_delays_ms``)
    and exchanges: for tests and benchmarks that each ran under their own prefix.
    Queues that were never declared are fine to delete."""
    conn = await aio_pika.connect(url, timeout=5)
    try:
        channel = await conn.channel()
        names = [prefix + spec.name for spec in QUEUES]
        names += [f"{n}.retry.{d}" for n in names for d in sorted(set(retry_delays_ms))]
        names.append(prefix + DEAD_LETTER_QUEUE)
        for name in names:
            await channel.queue_delete(name)
        for exchange in EXCHANGES:
            await channel.exchange_delete(prefix + exchange)
    finally:
        await conn.close()
