"""The dispatcher: outbox rows written by the services reach the broker and are marked
SENT; an unavailable broker costs no attempts; order per ordering key (a SKU, an order)
holds while another dispatcher holds the key's earliest event, and behind a refused row;
an event with no exchange ends FAILED; the embedded queue's hand-off is exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import orjson
import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.config import DatabaseConfig
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.events import ALLOCATED, RELEASED
from stockkeeper.failpoints import FailpointError, Failpoints
from stockkeeper.messaging.broker import (
    Broker,
    BrokerUnavailable,
    Handler,
    OutgoingMessage,
    PublishRejected,
    Subscription,
)
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, ORDERING_KEY_HEADER, Envelope
from stockkeeper.messaging.pgqueue import PgQueueBroker
from stockkeeper.messaging.rabbitmq import RabbitMQBroker
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.store.pool import create_pool
from stockkeeper.workers.dispatcher import Dispatcher
from tests.integration.test_broker_contract import Adapters, Collector, eventually
from tests.support import free_port


@pytest.fixture(params=["pgqueue", "rabbitmq"])
def kind_and_url(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    """The adapter to run on, and RabbitMQ's URL for its runs (they skip without it)."""
    if request.param == "rabbitmq":
        return "rabbitmq", str(request.getfixturevalue("rabbit_url"))
    return "pgqueue", None


@pytest.fixture
async def any_broker(
    kind_and_url: tuple[str, str | None], container: Container, broker_prefix: str
) -> AsyncIterator[Broker]:
    kind, url = kind_and_url
    adapters = Adapters(kind, container, broker_prefix, url)
    try:
        yield await adapters.new()
    finally:
        await adapters.close()


@pytest.fixture
async def pgqueue(container: Container, broker_prefix: str) -> AsyncIterator[PgQueueBroker]:
    broker = PgQueueBroker(container.pool, prefix=broker_prefix, poll_ms=50)
    await broker.connect()
    yield broker
    await broker.close()


class Recording:
    """The real broker, with a note of every batch handed to ``publish``."""

    def __init__(self, inner: Broker) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[list[OutgoingMessage]] = []

    async def connect(self) -> None:
        await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.batches.append(list(messages))
        await self.inner.publish(messages)

    async def send_to_queue(self, queue: str, message: OutgoingMessage, delay_ms: int = 0) -> None:
        await self.inner.send_to_queue(queue, message, delay_ms)

    async def consume(self, queue: str, handler: Handler, prefetch: int) -> Subscription:
        return await self.inner.consume(queue, handler, prefetch)

    async def queue_depths(self) -> dict[str, int]:
        return await self.inner.queue_depths()


class NacksOnce(Recording):
    """The real broker, except that the first publish of each message in ``refuse`` is
    refused (a nack) while the rest of its batch is confirmed, as RabbitMQ may."""

    def __init__(self, inner: Broker, refuse: set[str]) -> None:
        super().__init__(inner)
        self.refuse = set(refuse)

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        refused = [m.message_id for m in messages if m.message_id in self.refuse]
        self.refuse -= set(refused)
        await super().publish([m for m in messages if m.message_id not in refused])
        if refused:
            raise PublishRejected(refused, "nacked")


class Refusing:
    """A broker at the port whose every publish fails with ``error``."""

    name = "refusing"

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.calls = 0

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self.calls += 1
        raise self.error

    async def send_to_queue(self, queue: str, message: OutgoingMessage, delay_ms: int = 0) -> None:
        raise self.error

    async def consume(self, queue: str, handler: Handler, prefetch: int) -> Subscription:
        raise self.error

    async def queue_depths(self) -> dict[str, int]:
        raise self.error


class RejectedByBroker(Exception):
    """Not BrokerUnavailable: the broker took the message and said no."""


async def events(c: Container) -> list[asyncpg.Record]:
    async with c.pool.acquire() as conn:
        return list(
            await conn.fetch(
                """SELECT id, event_id, event_type, sku, sequence, payload, status, attempts,
                          last_error, sent_at
                   FROM domain_event ORDER BY id"""
            )
        )


async def add_bogus_event(c: Container) -> int:
    """An outbox row whose type maps to no exchange (only a bug could write one)."""
    async with c.pool.acquire() as conn:
        row_id: int = await conn.fetchval(
            """INSERT INTO domain_event (event_id, event_type, payload, ordering_key)
               VALUES ($1, 'bogus.thing', '{}'::jsonb, 'bogus.thing') RETURNING id""",
            uuid.uuid4(),
        )
    return row_id


def dispatcher(c: Container, broker: Any, **kw: Any) -> Dispatcher:
    return Dispatcher(c.pool, broker, c.metrics, **kw)


def metric(c: Container, name: str, labels: dict[str, str] | None = None) -> float:
    return c.metrics.registry.get_sample_value(name, labels or {}) or 0.0


async def test_service_events_are_published_and_marked_sent(
    container: Container, any_broker: Broker
) -> None:
    c = container
    await c.stock.receive(Receipt("MILK", 5, "r-1"))
    await c.reservations.reserve(ReserveRequest("order-1", (OrderLine("MILK", 2),)))
    pending = await events(c)
    assert {r["status"] for r in pending} == {"PENDING"}
    assert {"inventory.received", "inventory.level_changed", "inventory.allocated"} <= {
        r["event_type"] for r in pending
    }

    d = dispatcher(c, any_broker)
    assert await d.dispatch_once() == len(pending)
    after = await events(c)
    assert all((r["status"], r["attempts"], r["last_error"]) == ("SENT", 1, None) for r in after), (
        after
    )
    assert all(r["sent_at"] is not None for r in after)
    assert await d.dispatch_once() == 0
    assert metric(c, "stockkeeper_outbox_published_total") == len(pending)

    # What reached the queues is the rows, as envelopes, routed by type, in sequence order.
    for queue, types in (
        ("channel.propagation", {"inventory.level_changed"}),
        ("wms.outbound", {"inventory.allocated"}),
    ):
        rows = [r for r in pending if r["event_type"] in types]
        n = len(rows)
        got = Collector()
        sub = await any_broker.consume(queue, got, prefetch=16)
        await eventually(lambda got=got, n=n: len(got.got) == n, what=queue)
        await sub.cancel()
        envs = [Envelope.parse(m.body) for m in got.got]
        assert [e.id for e in envs] == [r["event_id"] for r in rows]
        assert [(e.type, e.sku, e.sequence) for e in envs] == [
            (r["event_type"], r["sku"], r["sequence"]) for r in rows
        ]
        assert [e.payload for e in envs] == [r["payload"] for r in rows]
        assert [m.message_id for m in got.got] == [str(r["event_id"]) for r in rows]
        assert all(m.headers.get(ATTEMPT_HEADER) == 1 for m in got.got)


async def test_an_unreachable_broker_leaves_events_pending_without_spending_attempts(
    container: Container,
) -> None:
    c = container
    await c.stock.receive(Receipt("MILK", 5, "r-1"))
    bogus = await add_bogus_event(c)
    before = await events(c)
    down = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/", prefix="down.")
    with pytest.raises(BrokerUnavailable):
        await down.connect()

    d = dispatcher(c, down, max_attempts=1)
    with pytest.raises(BrokerUnavailable):
        await d.dispatch_once()
    assert await events(c) == before  # all PENDING, attempts 0 (the bogus one's too)

    # The worker loop rides the outage out instead of dying, and still spends nothing.
    stop = asyncio.Event()
    worker = asyncio.ensure_future(d.run(stop))
    labels = {"reason": "unavailable"}
    await eventually(
        lambda: metric(c, "stockkeeper_outbox_publish_failures_total", labels) >= 1,
        what="an unavailable publish counted",
    )
    stop.set()
    await asyncio.wait_for(worker, 10)
    after = await events(c)
    assert after == before
    assert {r["status"] for r in after} == {"PENDING"}
    assert {r["attempts"] for r in after} == {0}
    assert bogus in {r["id"] for r in after}


async def test_a_rejected_publish_propagates_and_leaves_events_untouched(
    container: Container,
) -> None:
    """Current behaviour: only BrokerUnavailable is expected from the port; any other error
    leaves dispatch_once (the transaction rolls back, rows stay PENDING, no attempt is
    counted), so Dispatcher.run ends with it."""
    c = container
    await c.stock.receive(Receipt("MILK", 5, "r-1"))
    before = await events(c)
    refusing = Refusing(RejectedByBroker("message refused"))
    d = dispatcher(c, refusing, max_attempts=1)
    for _ in range(2):
        with pytest.raises(RejectedByBroker):
            await d.dispatch_once()
    assert refusing.calls == 2
    after = await events(c)
    assert after == before
    assert {(r["status"], r["attempts"], r["last_error"]) for r in after} == {("PENDING", 0, None)}


async def test_a_sku_held_by_another_dispatcher_waits_and_then_goes_out_in_order(
    container: Container, pgqueue: PgQueueBroker
) -> None:
    c = container
    await c.stock.receive(Receipt("A", 5, "a-1"))
    await c.stock.receive(Receipt("B", 5, "b-1"))
    await c.stock.receive(Receipt("A", 5, "a-2"))
    await c.stock.receive(Receipt("B", 5, "b-2"))
    rows = await events(c)
    a_rows = [r for r in rows if r["sku"] == "A"]
    b_rows = [r for r in rows if r["sku"] == "B"]
    assert [r["sequence"] for r in a_rows] == [1, 2, 3, 4]

    broker = Recording(pgqueue)
    d = dispatcher(c, broker)
    async with c.pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        try:
            # Another dispatcher holds A's earliest event, as its claim would.
            held = await other.fetchval(
                """SELECT id FROM domain_event WHERE status = 'PENDING' AND sku = 'A'
                   ORDER BY id LIMIT 1 FOR UPDATE"""
            )
            assert held == a_rows[0]["id"]
            assert await d.dispatch_once() == len(b_rows)
            status = {r["id"]: r["status"] for r in await events(c)}
            assert {status[r["id"]] for r in b_rows} == {"SENT"}
            assert {status[r["id"]] for r in a_rows} == {"PENDING"}
            assert await d.dispatch_once() == 0  # A's later events still wait
        finally:
            await tx.rollback()

    assert await d.dispatch_once() == len(a_rows)
    assert {r["status"] for r in await events(c)} == {"SENT"}
    published = [Envelope.parse(m.body) for batch in broker.batches for m in batch]
    assert [(e.sku, e.sequence) for e in published] == [("B", r["sequence"]) for r in b_rows] + [
        ("A", r["sequence"]) for r in a_rows
    ]

    # And on the queue, A's level changes follow B's, each SKU in its own order.
    got = Collector()
    sub = await pgqueue.consume("channel.propagation", got, prefetch=16)
    await eventually(lambda: len(got.got) == 4, what="four level changes")
    await sub.cancel()
    seen = [orjson.loads(m.body) for m in got.got]
    assert [(e["sku"], e["sequence"]) for e in seen] == [("B", 2), ("B", 4), ("A", 2), ("A", 4)]


async def test_an_event_type_with_no_exchange_fails_after_max_attempts(
    container: Container, pgqueue: PgQueueBroker
) -> None:
    c = container
    bogus = await add_bogus_event(c)
    await c.stock.receive(Receipt("MILK", 5, "r-1"))
    d = dispatcher(c, pgqueue, max_attempts=3)

    assert await d.dispatch_once() == 2  # the good events go out beside the bad one
    for attempt in (1, 2, 3):
        if attempt > 1:
            assert await d.dispatch_once() == 0
        (row,) = [r for r in await events(c) if r["id"] == bogus]
        assert row["attempts"] == attempt
        assert row["status"] == ("FAILED" if attempt == 3 else "PENDING")
        assert "no exchange for event type 'bogus.thing'" in row["last_error"]
    assert metric(c, "stockkeeper_outbox_failed_total") == 1

    assert await d.dispatch_once() == 0  # FAILED rows are not claimed again
    (row,) = [r for r in await events(c) if r["id"] == bogus]
    assert (row["status"], row["attempts"]) == ("FAILED", 3)
    assert {r["status"] for r in await events(c) if r["id"] != bogus} == {"SENT"}


async def test_the_backlog_metrics_show_the_oldest_pending_events_age(
    container: Container, any_broker: Broker
) -> None:
    c = container
    await c.stock.receive(Receipt("AGE", 5, "r-age"))
    async with c.pool.acquire() as conn:
        await conn.execute(
            "UPDATE domain_event SET occurred_at = now() - interval '90 seconds'"
            " WHERE status = 'PENDING'"
        )
    d = dispatcher(c, any_broker)
    await d.refresh_backlog()
    assert metric(c, "stockkeeper_outbox_backlog") >= 1
    assert 89 <= metric(c, "stockkeeper_outbox_oldest_age_seconds") < 200
    await d.dispatch_once()
    await d.refresh_backlog()
    assert metric(c, "stockkeeper_outbox_oldest_age_seconds") == 0


async def test_a_refused_row_holds_back_the_rows_behind_it_with_the_same_key(
    container: Container, pgqueue: PgQueueBroker
) -> None:
    c = container
    await c.stock.receive(Receipt("MILK", 5, "m-1"))
    await c.stock.receive(Receipt("EGGS", 5, "e-1"))
    await c.stock.receive(Receipt("MILK", 5, "m-2"))
    rows = await events(c)
    milk = [r for r in rows if r["sku"] == "MILK"]
    assert [r["sequence"] for r in milk] == [1, 2, 3, 4]
    broker = NacksOnce(pgqueue, {str(milk[0]["event_id"])})
    d = dispatcher(c, broker)

    assert await d.dispatch_once() == 2  # EGGS goes out; MILK waits behind its first
    after = {r["id"]: r for r in await events(c)}
    assert [(after[r["id"]]["status"], after[r["id"]]["attempts"]) for r in milk] == [
        ("PENDING", 1),
        ("PENDING", 0),
        ("PENDING", 0),
        ("PENDING", 0),
    ]
    assert after[milk[0]["id"]]["last_error"] == "nacked"
    assert {r["status"] for r in after.values() if r["sku"] == "EGGS"} == {"SENT"}

    assert await d.dispatch_once() == 4
    assert {r["status"] for r in await events(c)} == {"SENT"}
    last = [Envelope.parse(m.body) for m in broker.batches[-1]]
    assert [(e.sku, e.sequence) for e in last] == [("MILK", n) for n in (1, 2, 3, 4)]


async def test_a_release_waits_while_another_dispatcher_holds_its_allocation(
    container: Container, pgqueue: PgQueueBroker
) -> None:
    """Reservation events carry no SKU; their order's key keeps them in order."""
    c = container
    await c.stock.receive(Receipt("MILK", 5, "m-1"))
    await c.reservations.reserve(ReserveRequest("o-1", (OrderLine("MILK", 2),)))
    await c.reservations.release("o-1", "changed mind")
    rows = await events(c)
    allocated, released = (
        next(r for r in rows if r["event_type"] == t) for t in (ALLOCATED, RELEASED)
    )
    assert allocated["sku"] is released["sku"] is None

    broker = Recording(pgqueue)
    d = dispatcher(c, broker)
    async with c.pool.acquire() as other:
        tx = other.transaction()
        await tx.start()
        try:
            # Another dispatcher holds the order's allocation, as its claim would.
            await other.execute(
                "SELECT 1 FROM domain_event WHERE id = $1 FOR UPDATE", allocated["id"]
            )
            assert await d.dispatch_once() == len(rows) - 2
            status = {r["id"]: r["status"] for r in await events(c)}
            assert (status[allocated["id"]], status[released["id"]]) == ("PENDING", "PENDING")
            assert await d.dispatch_once() == 0  # the release still waits
        finally:
            await tx.rollback()

    assert await d.dispatch_once() == 2
    last = [
        (Envelope.parse(m.body).type, m.headers[ORDERING_KEY_HEADER]) for m in broker.batches[-1]
    ]
    assert last == [(ALLOCATED, "order:o-1"), (RELEASED, "order:o-1")]


async def test_the_embedded_queue_takes_the_messages_in_the_claiming_transaction(
    container: Container, pgqueue: PgQueueBroker, broker_prefix: str
) -> None:
    """A dispatcher that dies after publishing, before SENT, leaves no message behind on
    the embedded queue: the hand-off is exactly once (D-132)."""
    c = container
    await c.stock.receive(Receipt("MILK", 5, "m-1"))

    async def queued() -> int:
        async with c.pool.acquire() as conn:
            n: int = await conn.fetchval(
                "SELECT count(*) FROM queue_message WHERE queue LIKE $1", broker_prefix + "%"
            )
        return n

    dying = dispatcher(c, pgqueue, failpoints=Failpoints({"dispatcher.after_publish": "raise"}))
    with pytest.raises(FailpointError):
        await dying.dispatch_once()
    assert await queued() == 0
    assert {(r["status"], r["attempts"]) for r in await events(c)} == {("PENDING", 0)}

    assert await dispatcher(c, pgqueue).dispatch_once() == 2
    assert await queued() > 0
    assert {r["status"] for r in await events(c)} == {"SENT"}


class ConfirmsLate(Recording):
    """The real broker, whose confirms of a batch arrive only once the next batch has
    begun to go out (or after a second): shows whether the dispatcher claims and sends
    its next batch while it waits for the confirms of the one before (D-375)."""

    def __init__(self, inner: Broker) -> None:
        super().__init__(inner)
        self._begun = asyncio.Event()
        self.overlapped = 0

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        self._begun.set()  # the batch before may have its confirms now
        self._begun = begun = asyncio.Event()
        await super().publish(messages)
        try:
            await asyncio.wait_for(begun.wait(), 1.0)
            self.overlapped += 1
        except TimeoutError:
            pass


class FailsFirst(Recording):
    """The real broker, except that the first publish is not confirmed (the connection
    went away once its messages were written)."""

    async def publish(self, messages: Sequence[OutgoingMessage]) -> None:
        first = not self.batches
        await super().publish(messages)
        if first:
            raise BrokerUnavailable("publish not confirmed: connection lost")


async def test_the_dispatcher_sends_its_next_batch_while_the_last_is_confirmed(
    container: Container, rabbit_url: str, broker_prefix: str
) -> None:
    c = container
    for n in range(2):
        for sku in ("A", "B", "C"):
            await c.stock.receive(Receipt(sku, 5, f"{sku}-{n}"))
    rows = await events(c)
    assert len(rows) == 12  # a receipt and a level change per receipt
    rabbit = RabbitMQBroker(rabbit_url, prefix=broker_prefix)
    await rabbit.connect()
    try:
        broker = ConfirmsLate(rabbit)
        d = dispatcher(c, broker, batch_size=2)
        stop = asyncio.Event()
        worker = asyncio.ensure_future(d.run(stop))
        await eventually(
            lambda: metric(c, "stockkeeper_outbox_published_total") == 12, what="all sent"
        )
        stop.set()
        await asyncio.wait_for(worker, 10)
        assert len(broker.batches) == 6
        assert broker.overlapped == 5  # every batch but the last, as the next went out
        after = await events(c)
        assert {(r["status"], r["attempts"]) for r in after} == {("SENT", 1)}

        # Each message once, each SKU's in its order.
        levels = [r for r in rows if r["event_type"] == "inventory.level_changed"]
        got = Collector()
        sub = await rabbit.consume("channel.propagation", got, prefetch=16)
        await eventually(lambda: len(got.got) == len(levels), what="the level changes")
        await sub.cancel()
        seen = [Envelope.parse(m.body) for m in got.got]
        assert sorted(e.id for e in seen) == sorted(r["event_id"] for r in levels)
        for sku in ("A", "B", "C"):
            sequences = [e.sequence for e in seen if e.sku == sku]
            assert sequences == sorted(sequences)
    finally:
        await rabbit.close()


async def test_a_row_refused_in_the_batch_in_flight_holds_back_its_key_in_the_next(
    container: Container, pgqueue: PgQueueBroker
) -> None:
    c = container
    await c.stock.receive(Receipt("MILK", 5, "m-1"))
    await c.stock.receive(Receipt("MILK", 5, "m-2"))
    await c.stock.receive(Receipt("EGGS", 5, "e-1"))
    rows = await events(c)
    broker = NacksOnce(pgqueue, {str(rows[0]["event_id"])})
    d = dispatcher(c, broker, batch_size=2)
    assert d.pipelined
    try:
        await refused_then_sent_in_order(c, d, broker, rows)
    finally:
        with contextlib.suppress(Exception):
            await d.land()  # a failure here leaves no transaction open


async def refused_then_sent_in_order(
    c: Container, d: Dispatcher, broker: Recording, rows: list[asyncpg.Record]
) -> None:
    r1, r2, r3, r4, e1, e2 = (r["id"] for r in rows)

    async def state() -> dict[int, tuple[str, int]]:
        return {r["id"]: (r["status"], r["attempts"]) for r in await events(c)}

    assert await d.dispatch_ahead()  # [r1, r2] sent, in flight
    assert await d.dispatch_ahead()  # [r3, r4] sent ahead of r1's nack; r1, r2 settled
    s = await state()
    assert [s[i] for i in (r1, r2, r3, r4)] == [
        ("PENDING", 1),
        ("PENDING", 0),
        ("PENDING", 0),
        ("PENDING", 0),
    ]
    assert await d.dispatch_ahead()  # [r1, r2] again; [r3, r4] confirmed, yet not SENT
    s = await state()
    assert [s[i] for i in (r3, r4)] == [("PENDING", 0), ("PENDING", 0)]
    assert await d.dispatch_ahead()  # [r3, r4] again; [r1, r2] SENT
    s = await state()
    assert [s[i][0] for i in (r1, r2, r3, r4)] == ["SENT", "SENT", "PENDING", "PENDING"]
    assert await d.dispatch_ahead()  # [e1, e2]; [r3, r4] SENT
    assert not await d.dispatch_ahead()  # nothing more; [e1, e2] SENT
    s = await state()
    assert {s[i] for i in (r2, r3, r4, e1, e2)} == {("SENT", 1)}
    assert s[r1] == ("SENT", 2)
    published = [[m.message_id for m in b] for b in broker.batches]
    ids = {r["id"]: str(r["event_id"]) for r in rows}
    assert published == [
        [ids[r2]],  # r1 was refused
        [ids[r3], ids[r4]],
        [ids[r1], ids[r2]],
        [ids[r3], ids[r4]],
        [ids[e1], ids[e2]],
    ]


async def test_a_batch_in_flight_that_fails_takes_the_next_one_down_with_it(
    container: Container, pgqueue: PgQueueBroker
) -> None:
    c = container
    await c.stock.receive(Receipt("MILK", 5, "m-1"))
    await c.stock.receive(Receipt("MILK", 5, "m-2"))
    broker = FailsFirst(pgqueue)
    d = dispatcher(c, broker, batch_size=2)
    try:
        assert await d.dispatch_ahead()  # in flight; its confirms will not come
        with pytest.raises(BrokerUnavailable):
            await d.dispatch_ahead()  # the next batch (if it went out) is rolled back too
        assert {(r["status"], r["attempts"]) for r in await events(c)} == {("PENDING", 0)}
        while await d.dispatch_ahead():
            pass
        assert {(r["status"], r["attempts"]) for r in await events(c)} == {("SENT", 1)}
    finally:
        with contextlib.suppress(Exception):
            await d.land()


async def test_a_dispatcher_on_a_pool_of_one_connection_does_not_keep_a_batch_in_flight(
    container: Container, db_url: str, pgqueue: PgQueueBroker
) -> None:
    """The next claim would wait for the connection the batch in flight holds."""
    await container.stock.receive(Receipt("MILK", 5, "m-1"))
    broker = Recording(pgqueue)  # publishes outside the claim: would be pipelined
    assert dispatcher(container, broker).pipelined
    one = await create_pool(db_url, DatabaseConfig(), size=1)
    stop = asyncio.Event()
    try:
        d = Dispatcher(one, broker, container.metrics, batch_size=1, listen_pool=container.pool)
        assert not d.pipelined
        worker = asyncio.ensure_future(d.run(stop))
        try:
            await eventually(
                lambda: metric(container, "stockkeeper_outbox_published_total") == 2,
                what="sent",
            )
        finally:
            stop.set()
            await asyncio.wait_for(worker, 10)
    finally:
        await one.close()
    assert {r["status"] for r in await events(container)} == {"SENT"}
