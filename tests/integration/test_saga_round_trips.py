"""Round trips of the order saga, counted on the connection that runs them (D-310,
D-311, D-370): one saga step as the consumer runner applies it (BEGIN, the message's
``processed_message`` mark, the step alone in the transaction, COMMIT), and POST
/orders's use case. Each count is taken on a
connection that has run the same path once, as in steady state (asyncpg asks the
server about a statement's types once per connection)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain import events
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.orders import PAID, PLACED, OrderStatus
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.consumer import Consumer, Incoming, PermanentError
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.audit import audit
from stockkeeper.services.orders import PlaceOrder
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.store import consumer_log
from stockkeeper.store.pool import Conn
from stockkeeper.store.roundtrips import Statements, count
from stockkeeper.store.transactions import owned
from stockkeeper.workers.saga import QUEUE, saga_batch_handler, saga_handler
from tests.integration.orders_helpers import CARRIERS, SHIP_TO
from tests.support import until_lock_waits

# Before D-310 a reserve step was 17 round trips (18 with the pool's reset), a refused
# one 10, routing 6, a reservation's news 5, and placing an order 5 (6). Before D-370 a
# reserve step was 11 (its reservation's guarded write in a savepoint) and a refused one
# 7 (the unknown SKUs asked for after the shortage, D-372).
RESERVE_STEP_MAX = 9
REFUSED_STEP_MAX = 6
MOVED_ON_STEP_MAX = 4
PLACE_MAX = 1
ROUTE_STEP_MAX = 5
NEWS_STEP_MAX = 4
# A batch of order.placed steps, whatever its size (D-371).
BATCH_STEP_MAX = 13


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config["orders"] = {"carriers": CARRIERS}
    return config


@pytest.fixture
async def conn(container: Container) -> AsyncIterator[Conn]:
    async with container.pool.acquire() as conn:
        yield conn


def first_line(sql: str) -> str:
    """The statement's first line that is not a comment (what the failures show)."""
    lines = [ln.strip() for ln in sql.strip().splitlines() if not ln.lstrip().startswith("--")]
    return lines[0][:70] if lines else "?"


class Counted:
    """The statements run on ``conn`` while counting."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.seen: list[str] = []

    async def __aenter__(self) -> list[str]:
        self.conn.add_query_logger(self._log)
        return self.seen

    async def __aexit__(self, *exc: object) -> None:
        # asyncpg calls query loggers with loop.call_soon: let the last call run.
        await asyncio.sleep(0)
        self.conn.remove_query_logger(self._log)

    def _log(self, record: Any) -> None:
        self.seen.append(first_line(record.query))


async def step(c: Container, conn: Conn, kind: str, order_id: str) -> list[str]:
    """One saga message applied as the consumer runner applies it; its statements."""
    handler = saga_handler(c.orders, Failpoints())
    env = Envelope.new(kind, {"order_id": order_id}, occurred_at=c.orders.clock())
    async with Counted(conn) as seen, conn.transaction(), owned(conn):
        assert await consumer_log.mark_processed(conn, "saga", env.id)
        await handler(conn, env)
    return seen


def order(order_id: str, sku: str, qty: int) -> PlaceOrder:
    return PlaceOrder(order_id, (OrderLine(sku, qty),), SHIP_TO)


async def status(c: Container, order_id: str) -> OrderStatus:
    return (await c.orders.get(order_id)).row.status


async def assert_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
        stray = await conn.fetchval(
            "SELECT count(*) FROM reservation r WHERE NOT EXISTS "
            "(SELECT 1 FROM reservation_line l WHERE l.reservation_id = r.id)"
        )
    assert report.clean, report.render()
    assert stray == 0


async def test_a_reserve_step_takes_few_round_trips(container: Container, conn: Conn) -> None:
    await container.stock.receive(Receipt("TEA", 10, f"r-{uuid.uuid4().hex}"))
    for oid in ("warm", "o-1"):
        await container.orders.place(order(oid, "TEA", 2))
        seen = await step(container, conn, PLACED, oid)
        assert await status(container, oid) is OrderStatus.AWAITING_PAYMENT
    assert len(seen) <= RESERVE_STEP_MAX, "\n".join(seen)
    # The consumer's transaction is the reservation's: no savepoint at all (D-370).
    assert not [line for line in seen if line.startswith("SAVEPOINT")], "\n".join(seen)
    await assert_clean(container)


async def test_a_refused_step_takes_few_round_trips(container: Container, conn: Conn) -> None:
    await container.stock.receive(Receipt("TEA", 1, f"r-{uuid.uuid4().hex}"))
    for oid in ("warm", "o-1"):
        await container.orders.place(order(oid, "TEA", 2))
        seen = await step(container, conn, PLACED, oid)
        assert await status(container, oid) is OrderStatus.FAILED
    assert len(seen) <= REFUSED_STEP_MAX, "\n".join(seen)
    await assert_clean(container)  # the refused reserve left no reservation row behind


async def test_a_step_for_an_order_that_moved_on_is_one_statement(
    container: Container, conn: Conn
) -> None:
    await container.stock.receive(Receipt("TEA", 10, f"r-{uuid.uuid4().hex}"))
    await container.orders.place(order("o-1", "TEA", 2))
    await step(container, conn, PLACED, "o-1")
    seen = await step(container, conn, PLACED, "o-1")  # a new message id: a no-op
    assert await status(container, "o-1") is OrderStatus.AWAITING_PAYMENT
    assert len(seen) <= MOVED_ON_STEP_MAX, "\n".join(seen)


async def test_placing_an_order_is_one_statement(container: Container, conn: Conn) -> None:
    await container.stock.receive(Receipt("TEA", 10, f"r-{uuid.uuid4().hex}"))
    for oid in ("warm", "o-1"):
        async with Counted(conn) as seen:
            view = await container.orders.place(order(oid, "TEA", 2), conn)
        assert view.created
    assert len(seen) <= PLACE_MAX, "\n".join(seen)


async def test_routing_and_the_reservations_news_are_one_statement_each(
    container: Container, conn: Conn
) -> None:
    await container.stock.receive(Receipt("TEA", 10, f"r-{uuid.uuid4().hex}"))
    for oid in ("warm", "o-1"):
        await container.orders.place(order(oid, "TEA", 2))
        await step(container, conn, PLACED, oid)
        await container.orders.pay(oid, succeeded=True, reference=f"pay-{oid}")
        routed = await step(container, conn, PAID, oid)
        assert await status(container, oid) is OrderStatus.READY_TO_SHIP
        await container.reservations.fulfil(oid)
        shipped = await step(container, conn, events.FULFILLED, oid)
        assert await status(container, oid) is OrderStatus.SHIPPED
    # BEGIN, the mark, the read before the quotes, the guarded move, COMMIT (was 6).
    assert len(routed) <= ROUTE_STEP_MAX, "\n".join(routed)
    # BEGIN, the mark, the guarded move, COMMIT (was 5).
    assert len(shipped) <= NEWS_STEP_MAX, "\n".join(shipped)
    await assert_clean(container)


async def test_a_lost_race_in_a_reserve_step_reruns_the_consumers_transaction(
    config: dict[str, Any], clock: Any
) -> None:
    """optimistic: the batch changed between the step's read and its compare-and-swap.
    The reservation wrote without a savepoint (D-370), so the consumer runner rolls its
    whole transaction back, mark included, and runs the message again once: the order
    is reserved once, its message marked once, the ledger and the audit agree."""
    cfg = {
        **config,
        "orders": {"carriers": CARRIERS},
        "concurrency": {**config.get("concurrency", {}), "strategy": "optimistic"},
    }
    c = await build(Settings.model_validate(cfg), clock=clock)
    try:
        await c.stock.receive(Receipt("RACE-1", 10, "seed"))
        await c.orders.place(order("race-1", "RACE-1", 3))
        retries = c.metrics.reservation_retries.labels(strategy="optimistic")
        before = retries._value.get()
        env = Envelope.new(PLACED, {"order_id": "race-1"}, occurred_at=c.orders.clock())

        async def apply(conn: Conn, lent: Any) -> str:
            consumer = Consumer(
                "saga",
                QUEUE,
                saga_handler(c.orders, Failpoints()),
                pool=lent,
                broker=c.broker,
                metrics=c.metrics,
            )
            return await consumer._apply(env)

        async with c.pool.acquire() as rival:
            tx = rival.transaction()
            await tx.start()
            # The rival changes the batch (its version) and holds the row until commit.
            await rival.execute("UPDATE sku_batch SET version = version + 1 WHERE sku = 'RACE-1'")
            counting = asyncio.create_task(count(c.pool, apply))
            # The step read the batch and its compare-and-swap waits for the rival's row
            # lock: a condition, polled.
            await until_lock_waits(c.pool, "the step")
            await tx.commit()
            seen = await counting

        assert retries._value.get() == before + 1
        # Rolled back whole after the lost race (its mark too), then run again.
        assert (seen.by_word["BEGIN"], seen.by_word["COMMIT"]) == (2, 1), seen.queries
        assert await status(c, "race-1") is OrderStatus.AWAITING_PAYMENT
        view = await c.reservations.get("race-1")
        assert [a.quantity for li in view.lines for a in li.allocations] == [3]
        async with c.pool.acquire() as k:
            reserved = await k.fetchval("SELECT reserved FROM sku_batch WHERE sku = 'RACE-1'")
            marks = await k.fetchval(
                "SELECT count(*) FROM processed_message WHERE message_id = $1", env.id
            )
        assert (reserved, marks) == (3, 1)
        await assert_clean(c)
    finally:
        await c.close()


def batch_consumer(c: Container, pool: Any) -> Consumer:
    """The saga's consumer as ``stockkeeper run saga`` builds it (D-371)."""
    return Consumer(
        "saga",
        QUEUE,
        saga_handler(c.orders, Failpoints()),
        pool=pool,
        broker=c.broker,
        metrics=c.metrics,
        batch_size=64,
        handle_many=saga_batch_handler(c.orders, Failpoints()),
        one_as_single=True,
    )


def placed(c: Container, order_id: str) -> Incoming:
    return Incoming(Envelope.new(PLACED, {"order_id": order_id}, occurred_at=c.orders.clock()))


async def test_a_batch_of_reserve_steps_costs_the_same_statements_whatever_its_size(
    container: Container,
) -> None:
    """The saga's batch (D-371): every order.placed of it reserved set-based in one
    transaction, each order all or none; the statements do not grow with the batch."""
    c = container
    await c.stock.receive(Receipt("TEA", 100, f"r-{uuid.uuid4().hex}"))
    await c.stock.receive(Receipt("SCARCE", 3, f"r-{uuid.uuid4().hex}"))
    counts: list[int] = []
    for n, size in enumerate((2, 2, 6)):  # the first batch warms the connection up
        ids = [f"b{n}-{i}" for i in range(size)]
        for oid in ids:
            await c.orders.place(order(oid, "TEA", 2))
        items = [placed(c, oid) for oid in ids]
        seen = await count(
            c.pool, lambda _conn, lent, items=items: batch_consumer(c, lent)._apply_batch(items)
        )
        assert seen.by_word["ROLLBACK"] == 0, seen.queries  # no fallback to one by one
        counts.append(seen.total)
        for oid in ids:
            assert await status(c, oid) is OrderStatus.AWAITING_PAYMENT
    assert counts[2] == counts[1], counts
    # BEGIN, marks, SAVEPOINT, the orders, the reservations (insert, batches, lines, the
    # write, ledger, levels, events), RELEASE, COMMIT.
    assert counts[2] <= BATCH_STEP_MAX, counts
    await assert_clean(c)


async def test_a_batch_decides_each_order_alone(container: Container) -> None:
    """Short, reserved, moved on, a copy of the same order and a redelivered message in
    one batch: each order gets what it would get alone (FAILED with its shortages), and
    the batch commits once."""
    c = container
    await c.stock.receive(Receipt("TEA", 100, f"r-{uuid.uuid4().hex}"))
    await c.stock.receive(Receipt("SCARCE", 3, f"r-{uuid.uuid4().hex}"))
    for oid, sku, qty in [
        ("ok-1", "TEA", 2),
        ("short", "SCARCE", 5),
        ("ok-2", "SCARCE", 3),
        ("done", "TEA", 1),
    ]:
        await c.orders.place(order(oid, sku, qty))
    async with c.pool.acquire() as conn:
        await step(c, conn, PLACED, "done")  # decided before the batch
    again = placed(c, "ok-1")
    items = [placed(c, "ok-1"), placed(c, "short"), placed(c, "done"), placed(c, "ok-2"), again]
    results = await batch_consumer(c, c.pool)._apply_batch(items)
    assert results == ["applied"] * 5
    assert [await status(c, o) for o in ("ok-1", "short", "ok-2", "done")] == [
        OrderStatus.AWAITING_PAYMENT,
        OrderStatus.FAILED,
        OrderStatus.AWAITING_PAYMENT,
        OrderStatus.AWAITING_PAYMENT,
    ]
    short = (await c.orders.get("short")).row
    assert short.reason == "insufficient stock"
    assert short.shortages == [{"sku": "SCARCE", "requested": 5, "available": 3}]
    # The same message again (a redelivery) is a duplicate; nothing moves.
    assert await batch_consumer(c, c.pool)._apply_batch([again]) == ["duplicate"]
    view = await c.reservations.get("ok-2")
    assert [a.quantity for li in view.lines for a in li.allocations] == [3]
    await assert_clean(c)


async def test_a_batch_with_a_message_for_no_order_applies_the_others(
    container: Container,
) -> None:
    """An order.placed for no order fails the set-based effect; the runner applies the
    batch one message at a time (D-320): the culprit alone fails, the rest commit."""
    c = container
    await c.stock.receive(Receipt("TEA", 100, f"r-{uuid.uuid4().hex}"))
    await c.orders.place(order("real", "TEA", 2))
    results = await batch_consumer(c, c.pool)._apply_batch([placed(c, "ghost"), placed(c, "real")])
    assert results[1] == "applied"
    assert isinstance(results[0], PermanentError)
    assert await status(c, "real") is OrderStatus.AWAITING_PAYMENT
    await assert_clean(c)


@dataclass
class Handed:
    """A delivery as the broker hands it over (the ``Delivery`` port), settled here."""

    body: bytes
    queue: str = QUEUE
    routing_key: str = PLACED
    message_id: str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    redelivered: bool = False
    deliveries: int = 1
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def requeue(self) -> None:
        self.settled.append("requeue")

    async def reject(self) -> None:
        self.settled.append("reject")


async def test_a_lone_message_of_a_batch_goes_the_one_message_way(
    container: Container,
) -> None:
    """A batch of one order.placed is applied as without batches (D-371): the reserve
    step's 9 statements, no savepoint (the batch way would add a savepoint pair)."""
    c = container
    await c.stock.receive(Receipt("TEA", 100, f"r-{uuid.uuid4().hex}"))
    seen: dict[int, Statements] = {}
    for size in (1, 1):  # the first warms the connection up
        ids = [f"lone-{len(seen)}-{i}" for i in range(size)]
        for oid in ids:
            await c.orders.place(order(oid, "TEA", 1))
        handed = [Handed(placed(c, oid).env.to_bytes()) for oid in ids]

        async def run(_conn: Conn, lent: Any, handed: list[Handed] = handed) -> None:
            await batch_consumer(c, lent).process_batch(list(handed))

        seen[len(seen)] = await count(c.pool, run)
        assert [h.settled for h in handed] == [["ack"]] * size
        for oid in ids:
            assert await status(c, oid) is OrderStatus.AWAITING_PAYMENT
    assert seen[1].total <= RESERVE_STEP_MAX, seen[1].queries
    assert seen[1].by_word["SAVEPOINT"] == 0, seen[1].queries
    await assert_clean(c)


@pytest.mark.parametrize("batched", [False, True])
async def test_a_reservation_made_between_placing_and_the_step_is_judged_alike(
    container: Container, batched: bool
) -> None:
    """A direct reserve of the order's id that raced in after the order was placed: for
    other lines the order FAILs with the reason, for the same lines it takes that
    reservation (its expiry is the payment's due time); one message or a batch alike."""
    c = container
    await c.stock.receive(Receipt("TEA", 100, f"r-{uuid.uuid4().hex}"))
    await c.orders.place(order("clash", "TEA", 2))
    await c.orders.place(order("same", "TEA", 2))
    await c.reservations.reserve(ReserveRequest("clash", (OrderLine("TEA", 1),)))
    held = await c.reservations.reserve(ReserveRequest("same", (OrderLine("TEA", 2),)))
    if batched:
        results = await batch_consumer(c, c.pool)._apply_batch(
            [placed(c, "clash"), placed(c, "same")]
        )
        assert results == ["applied", "applied"]
    else:
        async with c.pool.acquire() as conn:
            await step(c, conn, PLACED, "clash")
            await step(c, conn, PLACED, "same")
    clash = (await c.orders.get("clash")).row
    assert clash.status is OrderStatus.FAILED
    assert clash.reason == "order clash already holds a reservation for other lines"
    same = (await c.orders.get("same")).row
    assert same.status is OrderStatus.AWAITING_PAYMENT
    assert same.payment_due_at == held.expires_at
    await assert_clean(c)
