"""The Broker port's contract, run against both adapters (embedded PostgreSQL queue and
RabbitMQ), and the consumer runner on top of each: idempotency, retries without
head-of-line blocking, dead letters, replay and discard, stale-event dropping.

Every test gets its own database and its own queue/exchange names (``broker_prefix``).
Asynchronous delivery is awaited by polling a condition with a deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.domain.errors import Conflict, NotFound
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.broker import Broker, Delivery, OutgoingMessage, Subscription
from stockkeeper.messaging.consumer import Consumer, PermanentError, RetryPolicy
from stockkeeper.messaging.dead_letter_queue import DeadLetterDrain
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, TRACEPARENT_HEADER, Envelope
from stockkeeper.messaging.pgqueue import PgQueueBroker
from stockkeeper.messaging.rabbitmq import RabbitMQBroker, delete_topology
from stockkeeper.messaging.topology import (
    DELIVERY_LIMIT,
    INVENTORY_EVENTS,
    QUEUES,
    WMS_COMMANDS,
)
from stockkeeper.services.admin import Operations
from stockkeeper.store.pool import Conn
from tests.support import rabbit_leftovers

LEASE_MS = 1500
POLL_MS = 50
POLICY = RetryPolicy(base_ms=50, max_ms=200, max_attempts=3)
SEND_DELAY_MS = 700
# Every delay a test here can ask for, so teardown can delete RabbitMQ's retry queues.
RETRY_DELAYS = {POLICY.delay_ms(a) for a in range(1, POLICY.max_attempts + 1)} | {SEND_DELAY_MS}

Predicate = Callable[[], bool | Awaitable[bool]]


async def eventually(predicate: Predicate, timeout: float = 10.0, what: str = "") -> None:
    """Wait until ``predicate`` holds, checking every 20 ms, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.02)


# -- the adapters ------------------------------------------------------------------------


@pytest.fixture(params=["pgqueue", "rabbitmq"])
def broker_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def amqp_url(broker_kind: str, request: pytest.FixtureRequest) -> str | None:
    """RabbitMQ's URL for the rabbitmq runs only (they skip locally without RabbitMQ)."""
    if broker_kind != "rabbitmq":
        return None
    return str(request.getfixturevalue("rabbit_url"))


class Adapters:
    """Builds brokers of one kind for one test, and closes and cleans up after it."""

    def __init__(self, kind: str, container: Container, prefix: str, amqp_url: str | None) -> None:
        self.kind = kind
        self.container = container
        self.prefix = prefix
        self.amqp_url = amqp_url
        self.opened: list[Broker] = []

    async def new(self, delivery_limit: int = DELIVERY_LIMIT) -> Broker:
        broker: Broker
        if self.kind == "pgqueue":
            broker = PgQueueBroker(
                self.container.pool,
                prefix=self.prefix,
                lease_ms=LEASE_MS,
                poll_ms=POLL_MS,
                metrics=self.container.metrics,
                delivery_limit=delivery_limit,
            )
        else:
            assert self.amqp_url is not None
            broker = RabbitMQBroker(
                self.amqp_url, prefix=self.prefix, delivery_limit=delivery_limit
            )
        await broker.connect()
        self.opened.append(broker)
        return broker

    async def die(self, broker: Broker, sub: Subscription) -> None:
        """The consumer holding unacked messages goes away without acking."""
        if self.kind == "rabbitmq":
            await broker.close()  # the connection drops: RabbitMQ requeues what it held
        else:
            await sub.cancel()  # the lease is all that is left; it has to lapse

    @contextlib.asynccontextmanager
    async def dead_letter_drain(self, broker: Broker) -> AsyncIterator[None]:
        """What takes a message past its delivery limit into ``dead_letter``: on RabbitMQ
        the drain of its dead-letter queue, running meanwhile (as beside each
        dispatcher); the embedded queue's claim does it itself (D-458)."""
        if not isinstance(broker, RabbitMQBroker):
            yield
            return
        drain = DeadLetterDrain(broker, self.container.pool, self.container.metrics, self.prefix)
        stop = asyncio.Event()
        running = asyncio.ensure_future(drain.run(stop))
        try:
            yield
        finally:
            stop.set()
            await running

    async def close(self) -> None:
        """Close the brokers, delete the prefix's topology from RabbitMQ, and check that
        every queue and exchange the brokers declared is gone (a test that left its
        dead-letter queue behind once did, run after run: D-410)."""
        for broker in reversed(self.opened):
            await broker.close()
        if self.kind == "rabbitmq":
            assert self.amqp_url is not None
            await delete_topology(self.amqp_url, self.prefix, sorted(RETRY_DELAYS))
            rabbits = [b for b in self.opened if isinstance(b, RabbitMQBroker)]
            left = await rabbit_leftovers(
                self.amqp_url,
                [q for b in rabbits for q in b.declared_queues],
                [x for b in rabbits for x in b.declared_exchanges],
            )
            assert not left, f"the test left these on RabbitMQ: {left}"


@pytest.fixture
async def adapters(
    broker_kind: str, container: Container, broker_prefix: str, amqp_url: str | None
) -> AsyncIterator[Adapters]:
    a = Adapters(broker_kind, container, broker_prefix, amqp_url)
    try:
        yield a
    finally:
        await a.close()


@pytest.fixture
async def broker(adapters: Adapters) -> Broker:
    return await adapters.new()


class Collector:
    """A consumer's handler that keeps what it got (and acks it, unless told not to)."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.got: list[Delivery] = []
        self.at: list[float] = []

    async def __call__(self, d: Delivery) -> None:
        self.got.append(d)
        self.at.append(time.monotonic())
        if self.ack:
            await d.ack()

    @property
    def ids(self) -> list[str | None]:
        return [d.message_id for d in self.got]


def message(
    routing_key: str = "inventory.allocated",
    exchange: str = INVENTORY_EVENTS,
    body: bytes | None = None,
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> OutgoingMessage:
    mid = message_id or str(uuid.uuid4())
    return OutgoingMessage(
        exchange,
        routing_key,
        body if body is not None else orjson.dumps({"n": mid}),
        mid,
        headers if headers is not None else {ATTEMPT_HEADER: 1},
    )


def depths_of(prefix: str, **wanted: int) -> dict[str, int]:
    """All topology queues (prefixed) at 0, except those given (dots as ``__``)."""
    out = {prefix + q.name: 0 for q in QUEUES}
    out.update({prefix + k.replace("__", "."): v for k, v in wanted.items()})
    return out


# -- the port ----------------------------------------------------------------------------


async def test_publish_and_consume_round_trip(broker: Broker) -> None:
    got = Collector()
    sub = await broker.consume("wms.outbound", got, prefetch=8)
    mid = str(uuid.uuid4())
    body = orjson.dumps({"hello": "wörld", "n": [1, 2, 3]})
    headers = {
        ATTEMPT_HEADER: 1,
        TRACEPARENT_HEADER: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }
    await broker.publish(
        [message("inventory.allocated", body=body, message_id=mid, headers=headers)]
    )
    await eventually(lambda: len(got.got) == 1, what="one delivery")
    await sub.cancel()

    d = got.got[0]
    assert d.queue == "wms.outbound"
    assert d.message_id == mid
    assert d.body == body
    assert d.headers == headers
    assert d.routing_key == "inventory.allocated"
    assert d.redelivered is False
    assert await broker.queue_depths() == depths_of(broker.prefix)  # type: ignore[attr-defined]


async def test_routing_follows_the_topology(broker: Broker) -> None:
    prefix: str = broker.prefix  # type: ignore[attr-defined]
    unbound = message("inventory.shortfall")
    level = message("inventory.level_changed")
    allocated = message("inventory.allocated")
    # The unbound one goes first in the same confirmed batch: by the time the two others
    # are counted, the broker has routed it too.
    await broker.publish([unbound, level, allocated])

    expected = depths_of(prefix, channel__propagation=1, wms__outbound=1)
    await eventually(
        lambda: _equals(broker.queue_depths(), expected), what="one message per bound queue"
    )

    for queue, sent in (("channel.propagation", level), ("wms.outbound", allocated)):
        got = Collector()
        sub = await broker.consume(queue, got, prefetch=8)
        await eventually(lambda got=got: len(got.got) == 1, what=f"delivery on {queue}")
        await sub.cancel()
        assert got.ids == [sent.message_id]
        assert got.got[0].routing_key == sent.routing_key
    await eventually(lambda: _equals(broker.queue_depths(), depths_of(prefix)), what="drained")


async def _equals(depths: Awaitable[dict[str, int]], expected: dict[str, int]) -> bool:
    return await depths == expected


async def test_one_consumer_gets_messages_in_publish_order(broker: Broker) -> None:
    sent = [message("wms.sync.scheduled", exchange=WMS_COMMANDS) for _ in range(200)]
    for i in range(0, 200, 50):  # several confirmed batches, one after the other
        await broker.publish(sent[i : i + 50])
    got = Collector()
    sub = await broker.consume("wms.sync", got, prefetch=32)
    await eventually(lambda: len(got.got) >= 200, what="200 deliveries")
    await sub.cancel()
    assert got.ids == [m.message_id for m in sent]


async def test_unacked_message_is_redelivered_after_its_consumer_dies(
    adapters: Adapters, broker: Broker
) -> None:
    dying_broker = await adapters.new()
    dying = Collector(ack=False)
    dying_sub = await dying_broker.consume("wms.outbound", dying, prefetch=1)
    sent = message("inventory.confirmed")
    await broker.publish([sent])
    await eventually(lambda: len(dying.got) == 1, what="first delivery")
    assert dying.got[0].redelivered is False
    await adapters.die(dying_broker, dying_sub)

    survivor = Collector()
    sub = await broker.consume("wms.outbound", survivor, prefetch=1)
    await eventually(lambda: len(survivor.got) == 1, timeout=15, what="redelivery")
    await sub.cancel()
    d = survivor.got[0]
    assert (d.message_id, d.body, d.redelivered) == (sent.message_id, sent.body, True)
    if adapters.kind == "pgqueue":  # not before the dead consumer's lease has lapsed
        assert survivor.at[0] - dying.at[0] >= LEASE_MS / 1000 * 0.8
    await eventually(
        lambda: _equals(broker.queue_depths(), depths_of(adapters.prefix)), what="acked"
    )


async def test_send_to_queue_with_a_delay_does_not_block_the_queue(broker: Broker) -> None:
    got = Collector()
    sub = await broker.consume("wms.sync", got, prefetch=8)
    delayed = message("wms.sync.force", exchange="", headers={ATTEMPT_HEADER: 2, "x-k": "v"})
    at_once = message("wms.sync.force", exchange="")
    start = time.monotonic()
    await broker.send_to_queue("wms.sync", delayed, delay_ms=SEND_DELAY_MS)
    await broker.send_to_queue("wms.sync", at_once)
    await eventually(lambda: len(got.got) == 2, what="both deliveries")
    await sub.cancel()

    assert got.ids == [at_once.message_id, delayed.message_id]
    waited = got.at[1] - start
    assert waited >= SEND_DELAY_MS / 1000, f"delivered after {waited:.3f}s"
    assert waited < SEND_DELAY_MS / 1000 + 5
    d = got.got[1]
    assert (d.queue, d.body) == ("wms.sync", delayed.body)
    # The headers sent come back (RabbitMQ adds its own x-death record on the way).
    assert {k: d.headers.get(k) for k in delayed.headers} == delayed.headers


async def test_send_to_queue_keeps_the_routing_key(
    broker: Broker, request: pytest.FixtureRequest
) -> None:
    got = Collector()
    sub = await broker.consume("wms.sync", got, prefetch=8)
    sent = [message("wms.sync.force", exchange="") for _ in range(2)]
    await broker.send_to_queue("wms.sync", sent[0])
    await broker.send_to_queue("wms.sync", sent[1], delay_ms=POLICY.delay_ms(1))
    await eventually(lambda: len(got.got) == 2, what="both deliveries")
    await sub.cancel()
    assert [d.routing_key for d in got.got] == ["wms.sync.force", "wms.sync.force"]


async def test_queue_depths_count_waiting_messages_per_queue(broker: Broker) -> None:
    prefix: str = broker.prefix  # type: ignore[attr-defined]
    assert await broker.queue_depths() == depths_of(prefix)
    await broker.publish(
        [message("inventory.allocated") for _ in range(3)]
        + [message("inventory.level_changed"), message("order.placed", exchange="orders.saga")]
    )
    await broker.send_to_queue("wms.sync", message("wms.sync.force", exchange=""))
    expected = depths_of(
        prefix, wms__outbound=3, channel__propagation=1, orders__saga=1, wms__sync=1
    )
    await eventually(lambda: _equals(broker.queue_depths(), expected), what=str(expected))

    got = Collector()
    sub = await broker.consume("wms.outbound", got, prefetch=8)
    await eventually(lambda: len(got.got) == 3, what="three deliveries")
    await sub.cancel()
    expected[prefix + "wms.outbound"] = 0
    await eventually(lambda: _equals(broker.queue_depths(), expected), what="outbound drained")


async def test_queue_depths_show_only_this_prefix(
    adapters: Adapters, broker: Broker, request: pytest.FixtureRequest
) -> None:
    neighbour = Adapters(
        adapters.kind, adapters.container, "n" + adapters.prefix, adapters.amqp_url
    )
    try:
        other = await neighbour.new()
        await other.publish([message("inventory.allocated")])
        await eventually(
            lambda: _equals(other.queue_depths(), depths_of(neighbour.prefix, wms__outbound=1)),
            what="the neighbour's message counted",
        )
        assert await broker.queue_depths() == depths_of(adapters.prefix)
    finally:
        await neighbour.close()


async def test_cancel_lets_the_next_consumer_take_the_rest_in_order(broker: Broker) -> None:
    sent = [message("inventory.released") for _ in range(12)]
    await broker.publish(sent)
    release = asyncio.Event()
    first = Collector()

    async def slow(d: Delivery) -> None:
        await first(d)
        await release.wait()

    sub = await broker.consume("wms.outbound", slow, prefetch=4)
    await eventually(lambda: len(first.got) == 1, what="first delivery")
    cancelling = asyncio.ensure_future(sub.cancel())  # scheduled before the handler wakes
    release.set()
    await asyncio.wait_for(cancelling, 10)

    second = Collector()
    sub2 = await broker.consume("wms.outbound", second, prefetch=4)
    await eventually(
        lambda: len(first.got) + len(second.got) >= len(sent), what="all delivered once"
    )
    await sub2.cancel()
    assert 1 <= len(first.got) < len(sent)
    assert first.ids + second.ids == [m.message_id for m in sent]


# -- the consumer runner -----------------------------------------------------------------


@pytest.fixture
async def effects(container: Container) -> Container:
    async with container.pool.acquire() as conn:
        await conn.execute(
            """CREATE TABLE test_effect (
                   id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                   message_id uuid NOT NULL,
                   note       text,
                   applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"""
        )
    return container


async def record(conn: Conn, env: Envelope) -> None:
    await conn.execute(
        "INSERT INTO test_effect (message_id, note) VALUES ($1, $2)",
        env.id,
        str(env.payload.get("note", "")),
    )


async def effect_rows(c: Container) -> list[tuple[uuid.UUID, str]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch("SELECT message_id, note FROM test_effect ORDER BY id")
    return [(r["message_id"], r["note"]) for r in rows]


async def dead_letters(c: Container) -> list[dict[str, Any]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM dead_letter ORDER BY id")
    return [dict(r) for r in rows]


def envelope(
    note: str = "", *, sku: str | None = None, sequence: int | None = None, **payload: Any
) -> Envelope:
    return Envelope.new(
        "inventory.allocated",
        {"note": note, **payload},
        occurred_at=datetime.now(UTC),
        sku=sku,
        sequence=sequence,
        source="test",
    )


def envelope_message(env: Envelope, routing_key: str = "inventory.allocated") -> OutgoingMessage:
    return OutgoingMessage(
        INVENTORY_EVENTS, routing_key, env.to_bytes(), str(env.id), {ATTEMPT_HEADER: 1}
    )


def outcomes(c: Container, consumer: str) -> dict[str, float]:
    reg = c.metrics.registry
    names = ("applied", "duplicate", "stale")
    return {
        o: reg.get_sample_value(
            "stockkeeper_consumer_messages_total", {"consumer": consumer, "outcome": o}
        )
        or 0.0
        for o in names
    }


def consumer(
    c: Container, broker: Broker, handle: Any, queue: str = "wms.outbound", **kw: Any
) -> Consumer:
    return Consumer(
        "test-consumer", queue, handle, pool=c.pool, broker=broker, metrics=c.metrics,
        policy=POLICY, **kw,
    )  # fmt: skip


async def test_a_message_delivered_twice_takes_effect_once(
    effects: Container, broker: Broker
) -> None:
    c = effects
    env = envelope("once")
    await broker.publish([envelope_message(env), envelope_message(env)])
    sub = await consumer(c, broker, record).start(prefetch=8)
    await eventually(lambda: sum(outcomes(c, "test-consumer").values()) == 2, what="2 handled")
    await sub.cancel()

    assert await effect_rows(c) == [(env.id, "once")]
    assert outcomes(c, "test-consumer") == {"applied": 1, "duplicate": 1, "stale": 0}
    async with c.pool.acquire() as conn:
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM processed_message WHERE consumer = 'test-consumer'"
            )
            == 1
        )
    assert await dead_letters(c) == []


async def test_failing_message_is_retried_then_dead_lettered_without_blocking(
    effects: Container, broker: Broker
) -> None:
    c = effects
    calls: list[str] = []

    async def handle(conn: Conn, env: Envelope) -> None:
        calls.append(env.payload["note"])
        if env.payload["note"] == "bad":
            raise RuntimeError("the WMS said no")
        await record(conn, env)

    bad, good = envelope("bad"), envelope("good")
    await broker.publish([envelope_message(bad), envelope_message(good)])
    sub = await consumer(c, broker, handle).start(prefetch=8)
    await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
    await sub.cancel()

    # The good message went through while the bad one waited for its retries.
    assert calls == ["bad", "good", "bad", "bad"]
    assert await effect_rows(c) == [(good.id, "good")]
    (dead,) = await dead_letters(c)
    assert dead["queue"] == "wms.outbound"
    assert dead["message_id"] == bad.id
    assert dead["attempts"] == POLICY.max_attempts
    assert dead["error"] == "RuntimeError: the WMS said no"
    assert dead["status"] == "DEAD"
    assert dead["raw_body"] == bad.to_bytes()
    async with c.pool.acquire() as conn:
        applied_at = await conn.fetchval("SELECT applied_at FROM test_effect")
        processed = await conn.fetch("SELECT message_id FROM processed_message")
    assert applied_at < dead["created_at"]
    assert [r["message_id"] for r in processed] == [good.id]
    retries = c.metrics.registry.get_sample_value(
        "stockkeeper_consumer_retries_total", {"consumer": "test-consumer"}
    )
    assert retries == POLICY.max_attempts - 1


async def _has_dead_letters(c: Container, n: int) -> bool:
    return len(await dead_letters(c)) >= n


async def test_permanent_error_is_dead_lettered_at_once(effects: Container, broker: Broker) -> None:
    c = effects
    calls: list[uuid.UUID] = []

    async def handle(conn: Conn, env: Envelope) -> None:
        calls.append(env.id)
        await record(conn, env)  # rolled back with the failure
        raise PermanentError("unknown SKU")

    env = envelope("permanent")
    await broker.publish([envelope_message(env)])
    sub = await consumer(c, broker, handle).start(prefetch=8)
    await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
    await sub.cancel()

    assert calls == [env.id]
    assert await effect_rows(c) == []
    (dead,) = await dead_letters(c)
    assert (dead["error"], dead["attempts"]) == ("PermanentError: unknown SKU", 1)
    async with c.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM processed_message") == 0


async def test_dead_letter_keeps_body_and_headers_as_json_objects(
    effects: Container, broker: Broker
) -> None:
    c = effects

    async def handle(conn: Conn, env: Envelope) -> None:
        raise PermanentError("no")

    env = envelope("json")
    await broker.publish([envelope_message(env)])
    sub = await consumer(c, broker, handle).start(prefetch=8)
    await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
    await sub.cancel()
    async with c.pool.acquire() as conn:
        kinds = await conn.fetchrow(
            "SELECT jsonb_typeof(body) AS body, jsonb_typeof(headers) AS headers FROM dead_letter"
        )
    (dead,) = await dead_letters(c)
    assert dict(kinds) == {"body": "object", "headers": "object"}
    assert dead["body"] == orjson.loads(env.to_bytes())
    assert dead["headers"][ATTEMPT_HEADER] == 1


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            orjson.dumps(
                {"id": str(uuid.uuid4()), "type": "x", "occurred_at": "2030-01-01T00:00Z"}
            ),
            "invalid envelope: payload: Field required",
        ),
        (
            orjson.dumps(
                {
                    "id": str(uuid.uuid4()),
                    "type": "x",
                    "occurred_at": "2030-01-01T00:00Z",
                    "sequence": 0,
                    "payload": {},
                }
            ),
            "invalid envelope: sequence: ",
        ),
        (b"\xffnot json at all", "invalid envelope: body: "),
    ],
    ids=["missing-payload", "bad-sequence", "not-json"],
)
async def test_invalid_envelope_goes_straight_to_the_dead_letters(
    effects: Container, broker: Broker, body: bytes, reason: str
) -> None:
    c = effects
    called: list[Envelope] = []

    async def handle(conn: Conn, env: Envelope) -> None:
        called.append(env)

    mid = str(uuid.uuid4())
    await broker.publish([message("inventory.allocated", body=body, message_id=mid)])
    sub = await consumer(c, broker, handle).start(prefetch=8)
    await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
    await sub.cancel()

    assert called == []
    (dead,) = await dead_letters(c)
    assert dead["error"].startswith(reason), dead["error"]
    assert (dead["attempts"], dead["status"], str(dead["message_id"])) == (1, "DEAD", mid)
    assert dead["raw_body"] == body
    retries = c.metrics.registry.get_sample_value(
        "stockkeeper_consumer_retries_total", {"consumer": "test-consumer"}
    )
    assert not retries


BINARY = b"\x00\xff binary"


def rejected(c: Container, consumer: str) -> float:
    got = c.metrics.registry.get_sample_value(
        "stockkeeper_consumer_messages_total", {"consumer": consumer, "outcome": "rejected"}
    )
    return got or 0.0


async def test_a_message_that_is_not_text_is_dead_lettered_as_its_bytes(
    effects: Container, broker: Broker, broker_prefix: str
) -> None:
    c = effects
    called: list[Envelope] = []

    async def handle(conn: Conn, env: Envelope) -> None:
        called.append(env)

    mid = str(uuid.uuid4())
    await broker.send_to_queue(
        "inventory.ingest", message("ingest.shop", body=BINARY, message_id=mid)
    )
    sub = await consumer(c, broker, handle, queue="inventory.ingest").start(prefetch=8)
    await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
    await eventually(
        lambda: _equals(broker.queue_depths(), depths_of(broker_prefix)), what="queue empty"
    )
    await sub.cancel()

    assert called == []
    (dead,) = await dead_letters(c)
    assert (dead["queue"], str(dead["message_id"]), dead["body"]) == ("inventory.ingest", mid, None)
    assert dead["raw_body"] == BINARY
    assert rejected(c, "test-consumer") == 0


async def test_an_unrecordable_failure_is_rejected_to_the_broker_after_max_attempts(
    effects: Container, broker: Broker, broker_prefix: str, capfd: pytest.CaptureFixture[str]
) -> None:
    c = effects
    calls: list[uuid.UUID] = []

    async def handle(conn: Conn, env: Envelope) -> None:
        calls.append(env.id)
        raise PermanentError("poison")

    env = envelope("poison")
    # Recording the dead letter fails every time (as with the database away).
    cannot_record = Failpoints({"consumer.before_dead_letter": "raise"})
    await broker.publish([envelope_message(env)])
    sub = await consumer(c, broker, handle, failpoints=cannot_record).start(prefetch=8)
    await eventually(lambda: rejected(c, "test-consumer") == 1, what="rejected")
    await eventually(
        lambda: _equals(broker.queue_depths(), depths_of(broker_prefix)), what="queue empty"
    )
    await sub.cancel()

    # Delivered max_attempts times, then given to the broker's dead-letter handling: it
    # never comes back to us.
    assert calls == [env.id] * POLICY.max_attempts
    out, err = capfd.readouterr()
    logged = [line for line in (out + err).splitlines() if "consumer.rejected_unrecorded" in line]
    assert len(logged) == 1, out + err
    assert str(env.id) in logged[0]
    if isinstance(broker, PgQueueBroker):
        # The embedded queue's dead-lettering is its own table (D-476): the message is a
        # dead letter the admin API shows, as RabbitMQ's drain makes one, not a hidden row.
        (dead,) = await dead_letters(c)
        assert (dead["queue"], dead["message_id"], dead["attempts"]) == (
            "wms.outbound",
            env.id,
            POLICY.max_attempts,
        )
        assert "(rejected): a consumer gave it up" in dead["error"], dead["error"]
        assert dead["raw_body"] == envelope_message(env).body
        async with c.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM queue_message") == 0
    else:  # RabbitMQ holds it in its dead-letters queue for the drain (not run here)
        assert await dead_letters(c) == []


async def test_replay_goes_through_the_consumer_and_takes_effect_once(
    effects: Container, broker: Broker
) -> None:
    c = effects
    broken = True

    async def handle(conn: Conn, env: Envelope) -> None:
        if broken:
            raise RuntimeError("not yet")
        await record(conn, env)

    env = envelope("replayed")
    await broker.publish([envelope_message(env)])
    sub = await consumer(c, broker, handle).start(prefetch=8)
    try:
        await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
        (dead,) = await dead_letters(c)
        assert await effect_rows(c) == []

        broken = False
        ops = Operations(c.pool, broker, c.metrics)
        done = await ops.replay(dead["id"], "tester")
        assert (done.status, done.resolved_by) == ("REPLAYED", "tester")
        assert done.resolved_at is not None
        await eventually(lambda: _effects(c, 1), what="the replay applied")
        await eventually(lambda: outcomes(c, "test-consumer")["applied"] == 1, what="counted")

        with pytest.raises(Conflict):
            await ops.replay(dead["id"], "tester")
        with pytest.raises(Conflict):
            await ops.discard(dead["id"], "tester")
        with pytest.raises(NotFound):
            await ops.replay(dead["id"] + 1000, "tester")

        # The same message arriving once more (a late redelivery) has no second effect.
        await broker.publish([envelope_message(env)])
        await eventually(lambda: outcomes(c, "test-consumer")["duplicate"] == 1, what="dup")
    finally:
        await sub.cancel()
    assert await effect_rows(c) == [(env.id, "replayed")]
    (dead,) = await dead_letters(c)
    assert dead["status"] == "REPLAYED"


async def _effects(c: Container, n: int) -> bool:
    return len(await effect_rows(c)) >= n


async def test_discard_marks_the_dead_letter_and_replay_is_then_refused(
    effects: Container, broker: Broker
) -> None:
    c = effects
    await broker.publish([message("inventory.allocated", body=b"{}")])
    sub = await consumer(c, broker, record).start(prefetch=8)
    await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
    await sub.cancel()
    (dead,) = await dead_letters(c)

    ops = Operations(c.pool, broker, c.metrics)
    done = await ops.discard(dead["id"], "tester")
    assert (done.status, done.resolved_by) == ("DISCARDED", "tester")
    again = await ops.discard(dead["id"], "someone-else")  # a repeat changes nothing
    assert (again.status, again.resolved_by) == ("DISCARDED", "tester")
    with pytest.raises(Conflict):
        await ops.replay(dead["id"], "tester")
    with pytest.raises(NotFound):
        await ops.discard(dead["id"] + 1000, "tester")
    assert (await ops.dead_letters(None, "DEAD", 0, 10)).items == []
    assert await broker.queue_depths() == depths_of(broker.prefix)  # type: ignore[attr-defined]


async def test_drop_stale_skips_an_older_sequence_of_the_same_sku(
    effects: Container, broker: Broker
) -> None:
    c = effects
    sent = [envelope(f"A{n}", sku="SKU-A", sequence=n) for n in (1, 3, 2)] + [
        envelope("B1", sku="SKU-B", sequence=1)
    ]
    await broker.publish([envelope_message(e, "inventory.level_changed") for e in sent])
    sub = await consumer(c, broker, record, queue="channel.propagation", drop_stale=True).start(
        prefetch=8
    )
    await eventually(lambda: sum(outcomes(c, "test-consumer").values()) == 4, what="4 handled")
    await sub.cancel()

    assert [note for _, note in await effect_rows(c)] == ["A1", "A3", "B1"]
    assert outcomes(c, "test-consumer") == {"applied": 3, "duplicate": 0, "stale": 1}
    async with c.pool.acquire() as conn:
        positions = await conn.fetch("SELECT sku, sequence FROM consumer_position ORDER BY sku")
    assert [tuple(r) for r in positions] == [("SKU-A", 3), ("SKU-B", 1)]


# -- batches: one transaction for what the prefetch handed out -----------------------------


async def test_a_batch_with_a_poison_message_commits_the_others_once(
    effects: Container, broker: Broker
) -> None:
    c = effects
    calls: list[str] = []

    async def handle(conn: Conn, env: Envelope) -> None:
        calls.append(env.payload["note"])
        await record(conn, env)  # rolled back with its savepoint when the message fails
        if env.payload["note"] == "poison":
            raise RuntimeError("the WMS said no")

    envs = [envelope(f"good-{i}") for i in range(3)]
    poison = envelope("poison")
    envs.insert(1, poison)
    envs += [envelope(f"good-{i}") for i in range(3, 6)]
    await broker.publish([envelope_message(e) for e in envs])
    sub = await consumer(c, broker, handle, batch_size=16).start(prefetch=16)
    await eventually(lambda: _has_dead_letters(c, 1), what="a dead letter")
    await sub.cancel()

    good = [e for e in envs if e is not poison]
    assert await effect_rows(c) == [(e.id, e.payload["note"]) for e in good]
    assert calls.count("poison") == POLICY.max_attempts
    assert [n for n in calls if n != "poison"] == [e.payload["note"] for e in good]
    (dead,) = await dead_letters(c)
    assert dead["message_id"] == poison.id
    assert dead["attempts"] == POLICY.max_attempts
    assert dead["error"] == "RuntimeError: the WMS said no"
    async with c.pool.acquire() as conn:
        processed = await conn.fetch("SELECT message_id FROM processed_message")
    assert {r["message_id"] for r in processed} == {e.id for e in good}
    assert outcomes(c, "test-consumer") == {"applied": len(good), "duplicate": 0, "stale": 0}


async def test_a_redelivered_batch_is_a_no_op(effects: Container, broker: Broker) -> None:
    c = effects
    envs = [envelope(f"n-{i}") for i in range(5)]
    await broker.publish([envelope_message(e) for e in envs])
    await broker.publish([envelope_message(e) for e in envs])  # the same batch again
    sub = await consumer(c, broker, record, batch_size=16).start(prefetch=16)
    await eventually(lambda: sum(outcomes(c, "test-consumer").values()) == 10, what="10 handled")
    await sub.cancel()

    assert await effect_rows(c) == [(e.id, e.payload["note"]) for e in envs]
    assert outcomes(c, "test-consumer") == {"applied": 5, "duplicate": 5, "stale": 0}


async def test_a_batch_keeps_the_order_of_its_messages_and_drops_stale_ones(
    effects: Container, broker: Broker
) -> None:
    c = effects
    envs = [envelope(f"s-{seq}", sku="SKU-B", sequence=seq) for seq in (1, 3, 2, 4)]
    await broker.publish([envelope_message(e) for e in envs])
    sub = await consumer(c, broker, record, batch_size=16, drop_stale=True).start(prefetch=16)
    await eventually(lambda: sum(outcomes(c, "test-consumer").values()) == 4, what="4 handled")
    await sub.cancel()

    assert [note for _, note in await effect_rows(c)] == ["s-1", "s-3", "s-4"]
    assert outcomes(c, "test-consumer") == {"applied": 3, "duplicate": 0, "stale": 1}


# -- the delivery limit: a message that kills its consumer every time ---------------------

# Small, so a test hands a message out a few times only; given to both adapters as
# production gives them DELIVERY_LIMIT.
LIMIT = 2


def dead_letters_counted(c: Container, queue: str) -> float:
    got = c.metrics.registry.get_sample_value("stockkeeper_dead_letters_total", {"queue": queue})
    return got or 0.0


async def _assert_given_up_once(
    adapters: Adapters,
    broker: Broker,
    sent: OutgoingMessage,
    got: list[Delivery],
    log: str,
    parsed: Any,
) -> int:
    """``sent`` handed out LIMIT + 1 times (the first and LIMIT redeliveries, as
    RabbitMQ counts its x-delivery-limit), then exactly one dead letter with its bytes
    (and ``parsed``, its JSON where jsonb can hold it), in the same words on both
    brokers, counted and logged; its id."""
    c = adapters.container
    assert [d.message_id for d in got] == [sent.message_id] * (LIMIT + 1)
    assert [d.deliveries for d in got] == list(range(1, LIMIT + 2))
    (dead,) = await dead_letters(c)
    assert (dead["queue"], str(dead["message_id"])) == ("wms.outbound", sent.message_id)
    assert (dead["routing_key"], dead["status"]) == (sent.routing_key, "DEAD")
    assert dead["raw_body"] == sent.body
    assert dead["body"] == parsed
    assert {k: dead["headers"].get(k) for k in sent.headers} == sent.headers
    assert dead["attempts"] == LIMIT + 1
    said = f"dead-lettered it from wms.outbound (delivery_limit): delivered {LIMIT + 1} times"
    assert said in dead["error"], dead["error"]
    assert dead_letters_counted(c, "wms.outbound") == 1
    mid = str(sent.message_id)
    logged = [line for line in log.splitlines() if ".dead_letter" in line and mid in line]
    assert len(logged) == 1, log
    assert "delivery_limit" in logged[0]
    await eventually(
        lambda: _equals(broker.queue_depths(), depths_of(adapters.prefix)), what="queue empty"
    )
    return int(dead["id"])


async def _replayed_once(c: Container, broker: Broker, dead_id: int, sent: OutgoingMessage) -> None:
    """The admin API's replay sends it back to its queue, where it is delivered again."""
    done = await Operations(c.pool, broker, c.metrics).replay(dead_id, "tester")
    assert done.status == "REPLAYED"
    got = Collector()
    sub = await broker.consume("wms.outbound", got, prefetch=8)
    await eventually(lambda: len(got.got) == 1, what="the replay delivered")
    await sub.cancel()
    d = got.got[0]
    assert (d.message_id, d.body, d.deliveries) == (sent.message_id, sent.body, 1)
    assert d.headers["x-replayed-from"] == dead_id
    assert len(await dead_letters(c)) == 1


HANDED_BACK = envelope("handed back").to_bytes()


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        (HANDED_BACK, orjson.loads(HANDED_BACK)),
        (BINARY, None),
        (b'{"note": "a NUL, which jsonb refuses: \\u0000"}', None),
    ],
    ids=["envelope", "binary", "json-with-nul"],
)
async def test_a_message_handed_back_past_the_delivery_limit_is_one_dead_letter(
    adapters: Adapters, capfd: pytest.CaptureFixture[str], body: bytes, parsed: Any
) -> None:
    broker = await adapters.new(delivery_limit=LIMIT)
    sent = message("inventory.allocated", body=body)
    handed: list[Delivery] = []

    async def hand_back(d: Delivery) -> None:
        handed.append(d)
        await d.requeue()

    async with adapters.dead_letter_drain(broker):
        sub = await broker.consume("wms.outbound", hand_back, prefetch=1)
        await broker.publish([sent])
        await eventually(lambda: _has_dead_letters(adapters.container, 1), what="a dead letter")
        await sub.cancel()
    out, err = capfd.readouterr()
    dead_id = await _assert_given_up_once(adapters, broker, sent, handed, out + err, parsed)
    await _replayed_once(adapters.container, broker, dead_id, sent)


async def test_a_message_whose_consumer_dies_each_time_is_one_dead_letter(
    adapters: Adapters, capfd: pytest.CaptureFixture[str]
) -> None:
    broker = await adapters.new(delivery_limit=LIMIT)
    sent = envelope_message(envelope("kills its consumer"))
    got: list[Delivery] = []
    async with adapters.dead_letter_drain(broker):
        await broker.publish([sent])
        # A consumer that dies holding it, LIMIT + 1 times: the connection drops
        # (RabbitMQ), the lease lapses (embedded queue).
        for n in range(1, LIMIT + 2):
            dying_broker = await adapters.new(delivery_limit=LIMIT)
            dying = Collector(ack=False)
            dying_sub = await dying_broker.consume("wms.outbound", dying, prefetch=1)
            await eventually(
                lambda dying=dying: len(dying.got) == 1, timeout=15, what=f"delivery {n}"
            )
            got += dying.got
            await adapters.die(dying_broker, dying_sub)
        # Whoever consumes next never gets it: it is a dead letter instead.
        survivor = Collector()
        sub = await broker.consume("wms.outbound", survivor, prefetch=1)
        await eventually(
            lambda: _has_dead_letters(adapters.container, 1), timeout=15, what="a dead letter"
        )
        await sub.cancel()
    assert survivor.got == []
    out, err = capfd.readouterr()
    parsed = orjson.loads(sent.body)
    dead_id = await _assert_given_up_once(adapters, broker, sent, got, out + err, parsed)
    await _replayed_once(adapters.container, broker, dead_id, sent)
