"""The order saga's service on a real PostgreSQL: each use case and each saga step, with
the outbox standing in for the broker (``drive`` hands the saga every event its queue
is bound to, as the dispatcher and the consumer would)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from typing import Any

import asyncpg
import pytest

from stockkeeper.api.order_schemas import OrderOut
from stockkeeper.api.schemas import as_json
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import Conflict, InvalidRequest, NotFound, ReservationExpired
from stockkeeper.domain.orders import OrderStatus, Trigger
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.consumer import PermanentError
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.audit import audit
from stockkeeper.services.orders import PlaceOrder
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.saga import saga_handler
from tests.conftest import FakeClock
from tests.integration.orders_helpers import CARRIERS, SHIP_TO, drive

S = OrderStatus
TIMEOUT = 600  # orders.payment_timeout_seconds in these tests
MakeContainer = Callable[..., Awaitable[Container]]


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config["orders"] = {"payment_timeout_seconds": TIMEOUT, "carriers": CARRIERS}
    return config


@pytest.fixture
async def make_container(config: dict[str, Any], clock: FakeClock) -> AsyncIterator[MakeContainer]:
    built: list[Container] = []

    async def make(**sections: dict[str, Any]) -> Container:
        cfg = {**config, **{k: {**config.get(k, {}), **v} for k, v in sections.items()}}
        c = await build(Settings.model_validate(cfg), clock=clock, run_migrations=False)
        built.append(c)
        return c

    yield make
    for c in built:
        await c.close()


def placed(order_id: str, *lines: tuple[str, int], **kw: Any) -> PlaceOrder:
    return PlaceOrder(
        order_id, tuple(OrderLine(s, q) for s, q in lines), kw.pop("ship_to", SHIP_TO), **kw
    )


async def receive(c: Container, sku: str, qty: int) -> None:
    await c.stock.receive(Receipt(sku, qty, f"rcpt-{uuid.uuid4().hex}"))


async def order_of(c: Container, order_id: str) -> dict[str, Any]:
    return as_json(OrderOut.of(await c.orders.get(order_id)))


async def reservation_status(c: Container, order_id: str) -> str | None:
    async with c.pool.acquire() as conn:
        status: str | None = await conn.fetchval(
            "SELECT status FROM reservation WHERE order_id = $1", order_id
        )
        return status


async def available(c: Container, sku: str) -> int:
    (level,) = await c.stock.get_many([sku])
    return int(level.available)


async def events_of(c: Container, event_type: str) -> list[dict[str, Any]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload FROM domain_event WHERE event_type = $1 ORDER BY id", event_type
        )
    return [r["payload"] for r in rows]


async def assert_audit_clean(c: Container) -> None:
    async with c.pool.acquire() as conn:
        report = await audit(conn)
    assert report.clean, report.render()


# -- placing an order ------------------------------------------------------------------


async def test_placing_records_the_order_and_the_saga_command_and_reserves_nothing(
    container: Container,
) -> None:
    await receive(container, "TEA", 5)
    view = await container.orders.place(placed("o-1", ("TEA", 2)))
    assert view.created
    assert view.row.status is OrderStatus.PENDING
    assert await events_of(container, "order.placed") == [{"order_id": "o-1"}]
    assert await reservation_status(container, "o-1") is None
    assert await available(container, "TEA") == 5

    again = await container.orders.place(placed("o-1", ("TEA", 2)))
    assert not again.created
    assert len(await events_of(container, "order.placed")) == 1
    with pytest.raises(Conflict, match="other contents"):
        await container.orders.place(placed("o-1", ("TEA", 3)))


@pytest.mark.parametrize(
    ("request_", "error", "match"),
    [
        (placed("o-x", ("NOPE", 1), ("TEA", 1)), InvalidRequest, "unknown sku: NOPE"),
        (placed("o-x", ("TEA", 1), ("TEA", 2)), InvalidRequest, "more than one line"),
        (
            placed("o-x", ("TEA", 1), required_delivery_date=date(2029, 12, 31)),
            InvalidRequest,
            "in the past",
        ),
    ],
    ids=["unknown-sku", "sku-twice", "date-in-the-past"],
)
async def test_an_order_the_rules_refuse_leaves_nothing_behind(
    container: Container, request_: PlaceOrder, error: type[Exception], match: str
) -> None:
    await receive(container, "TEA", 5)
    with pytest.raises(error, match=match):
        await container.orders.place(request_)
    with pytest.raises(NotFound):
        await container.orders.get("o-x")
    assert await events_of(container, "order.placed") == []


async def test_an_order_id_already_used_by_a_reservation_is_a_conflict(
    container: Container,
) -> None:
    await receive(container, "TEA", 5)
    await container.reservations.reserve(ReserveRequest("web-1", (OrderLine("TEA", 1),)))
    with pytest.raises(Conflict, match="already used by a reservation"):
        await container.orders.place(placed("web-1", ("TEA", 1)))


# -- the saga, start to finish ---------------------------------------------------------


async def test_reserved_paid_routed_shipped(container: Container, clock: FakeClock) -> None:
    await receive(container, "TEA", 5)
    await receive(container, "CUP", 5)
    await container.orders.place(placed("o-1", ("TEA", 2), ("CUP", 1)))
    assert await drive(container) == ["order.placed"]
    doc = await order_of(container, "o-1")
    assert doc["status"] == "AWAITING_PAYMENT"
    assert doc["payment_due_at"] == "2030-01-01T00:10:00+00:00"
    assert doc["decided_at"] == "2030-01-01T00:00:00+00:00"
    assert await reservation_status(container, "o-1") == "PENDING"
    assert (await available(container, "TEA"), await available(container, "CUP")) == (3, 4)

    clock.advance(60)
    paid = await container.orders.pay("o-1", succeeded=True, reference="pay-1")
    assert as_json(OrderOut.of(paid))["status"] == "PAID"
    assert as_json(OrderOut.of(paid))["payment_reference"] == "pay-1"
    assert await reservation_status(container, "o-1") == "CONFIRMED"
    # The same payment again changes nothing; another one is refused.
    assert (await container.orders.pay("o-1", succeeded=True, reference="pay-1")).row.status == (
        S.PAID
    )
    with pytest.raises(Conflict, match="pay-1"):
        await container.orders.pay("o-1", succeeded=True, reference="pay-2")

    assert await drive(container) == ["order.paid"]
    doc = await order_of(container, "o-1")
    assert doc["status"] == "READY_TO_SHIP"
    # express: 9.00 / 0.99 = 9.09 per delivered parcel; post: 4.00 / 0.90 = 4.44. Post.
    assert doc["carrier"] == {
        "id": "post",
        "cost": "4.00",
        "reliability": "0.90",
        "transit_days": 4,
        "estimated_delivery": "2030-01-05",
    }

    await container.reservations.fulfil("o-1")
    assert await drive(container) == ["inventory.fulfilled"]
    assert (await order_of(container, "o-1"))["status"] == "SHIPPED"
    registry = container.metrics.registry
    decided = {"status": "AWAITING_PAYMENT"}
    assert registry.get_sample_value("stockkeeper_order_decision_seconds_count", decided) == 1
    # The fake clock did not move between placing and reserving.
    assert registry.get_sample_value("stockkeeper_order_decision_seconds_sum", decided) == 0
    final = registry.get_sample_value("stockkeeper_orders_final_total", {"status": "SHIPPED"})
    assert final == 1
    with pytest.raises(Conflict, match="shipped"):
        await container.orders.cancel("o-1")
    await assert_audit_clean(container)


async def test_an_order_short_of_stock_fails_with_every_shortage_and_holds_nothing(
    container: Container,
) -> None:
    await receive(container, "TEA", 1)
    await receive(container, "CUP", 5)
    await receive(container, "MUG", 1)
    await container.orders.place(placed("o-1", ("TEA", 3), ("CUP", 1), ("MUG", 2)))
    await drive(container)
    doc = await order_of(container, "o-1")
    assert doc["status"] == "FAILED"
    assert doc["reason"] == "insufficient stock"
    assert doc["shortages"] == [
        {"sku": "TEA", "requested": 3, "available": 1},
        {"sku": "MUG", "requested": 2, "available": 1},
    ]
    assert "payment_due_at" not in doc
    assert await reservation_status(container, "o-1") is None
    assert await available(container, "CUP") == 5
    with pytest.raises(Conflict, match="FAILED order cannot be paid"):
        await container.orders.pay("o-1", succeeded=True, reference="pay-1")
    # Cancelling an order that is already over changes nothing.
    assert (await container.orders.cancel("o-1")).row.status is S.FAILED


async def test_each_step_done_twice_has_one_effect(container: Container) -> None:
    """A redelivered command (the processed mark lost with a crash) finds the order moved
    on and changes nothing: one reservation, one carrier choice."""
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    async with container.pool.acquire() as conn, conn.transaction():
        assert await container.orders.reserve(conn, "o-1") is S.AWAITING_PAYMENT
        assert await container.orders.reserve(conn, "o-1") is None
    await container.orders.pay("o-1", succeeded=True, reference="p")
    async with container.pool.acquire() as conn, conn.transaction():
        assert await container.orders.route(conn, "o-1") is S.READY_TO_SHIP
        assert await container.orders.route(conn, "o-1") is None
    async with container.pool.acquire() as conn:
        allocations = await conn.fetchval(
            "SELECT count(*) FROM inventory_ledger "
            "WHERE entry_type = 'ORDER_ALLOCATE' AND reference_id = 'o-1'"
        )
    assert allocations == 1
    assert await available(container, "TEA") == 3
    await assert_audit_clean(container)


async def test_a_failed_payment_cancels_the_order_and_gives_the_stock_back(
    container: Container,
) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    view = await container.orders.pay("o-1", succeeded=False, reference="pay-9")
    assert as_json(OrderOut.of(view))["status"] == "CANCELLED"
    assert as_json(OrderOut.of(view))["reason"] == "payment pay-9 failed"
    assert await reservation_status(container, "o-1") == "CANCELLED"
    assert await available(container, "TEA") == 5
    # The release's own event reaches the saga too, and changes nothing more.
    assert await drive(container) == ["inventory.released"]
    assert (await order_of(container, "o-1"))["status"] == "CANCELLED"
    await assert_audit_clean(container)


async def test_cancelling_a_paid_order_gives_the_committed_stock_back(
    container: Container,
) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    await container.orders.pay("o-1", succeeded=True, reference="p")
    await drive(container)
    view = await container.orders.cancel("o-1", "customer changed their mind")
    assert (view.row.status, view.row.reason) == (S.CANCELLED, "customer changed their mind")
    (level,) = await container.stock.get_many(["TEA"])
    assert (level.committed, level.available) == (0, 5)
    assert (await container.orders.cancel("o-1")).row.status is S.CANCELLED  # a repeat
    await assert_audit_clean(container)


async def test_cancelling_a_pending_order_stops_the_saga_from_reserving(
    container: Container,
) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await container.orders.cancel("o-1")
    await drive(container)
    assert (await order_of(container, "o-1"))["status"] == "CANCELLED"
    assert await reservation_status(container, "o-1") is None
    assert await available(container, "TEA") == 5


async def test_payment_before_the_saga_reserved_is_refused_for_now(container: Container) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    with pytest.raises(Conflict, match="not reserved yet"):
        await container.orders.pay("o-1", succeeded=True, reference="p")
    await drive(container)
    assert (await container.orders.pay("o-1", succeeded=True, reference="p")).row.status is S.PAID


# -- the reservation's fate, heard through its events ----------------------------------


async def test_no_payment_before_the_reservation_expires_expires_the_order(
    container: Container, clock: FakeClock
) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    clock.advance(TIMEOUT - 1)
    assert await container.reservations.expire_due(100) == 0
    clock.advance(1)
    assert await container.reservations.expire_due(100) == 1  # the expiry worker's path
    assert await available(container, "TEA") == 5
    assert await drive(container) == ["inventory.expired"]
    doc = await order_of(container, "o-1")
    assert doc["status"] == "EXPIRED"
    assert doc["reason"] == "payment not received before the reservation expired"
    with pytest.raises(ReservationExpired):
        await container.orders.pay("o-1", succeeded=True, reference="late")
    await assert_audit_clean(container)


async def test_a_payment_after_the_due_time_but_before_the_sweep_expires_the_order(
    container: Container, clock: FakeClock
) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    clock.advance(TIMEOUT)
    with pytest.raises(ReservationExpired):
        await container.orders.pay("o-1", succeeded=True, reference="late")
    # The expiry and the order's new state were committed, not rolled back with the 409.
    doc = await order_of(container, "o-1")
    assert (doc["status"], doc["reason"]) == (
        "EXPIRED",
        "payment came after the reservation expired",
    )
    assert await reservation_status(container, "o-1") == "EXPIRED"
    assert await available(container, "TEA") == 5
    await drive(container)
    assert (await order_of(container, "o-1"))["status"] == "EXPIRED"
    await assert_audit_clean(container)


async def stored_order_status(c: Container, order_id: str) -> str:
    async with c.pool.acquire() as conn:
        status: str = await conn.fetchval("SELECT status FROM orders WHERE order_id = $1", order_id)
        return status


@pytest.mark.parametrize("ending", ["cancel", "failed payment"])
async def test_a_cancel_or_failed_payment_after_the_due_time_expires_the_order(
    container: Container, clock: FakeClock, ending: str
) -> None:
    """D-480: past its due time an unpaid order is EXPIRED, as its reservation is, before
    any sweep: a read says so, and a cancel or a failed payment then ends it EXPIRED,
    not CANCELLED beside an EXPIRED reservation."""
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    clock.advance(TIMEOUT)
    doc = await order_of(container, "o-1")
    assert (doc["status"], doc["reason"]) == (
        "EXPIRED",
        "payment not received before the reservation expired",
    )
    assert await stored_order_status(container, "o-1") == "AWAITING_PAYMENT"  # a read only
    if ending == "cancel":
        view = await container.orders.cancel("o-1", "customer")
    else:
        view = await container.orders.pay("o-1", succeeded=False, reference="declined")
    assert (view.row.status, view.row.reason) == (
        S.EXPIRED,
        "payment not received before the reservation expired",
    )
    assert await stored_order_status(container, "o-1") == "EXPIRED"
    assert await reservation_status(container, "o-1") == "EXPIRED"
    assert await available(container, "TEA") == 5
    await drive(container)
    assert (await order_of(container, "o-1"))["status"] == "EXPIRED"
    final = container.metrics.registry.get_sample_value
    assert final("stockkeeper_orders_final_total", {"status": "EXPIRED"}) == 1
    assert final("stockkeeper_orders_final_total", {"status": "CANCELLED"}) is None
    await assert_audit_clean(container)


async def test_the_payment_of_an_order_paid_then_cancelled_sent_again_is_a_repeat(
    container: Container,
) -> None:
    """D-480: a provider's retry of the payment we took is not a new payment of a
    cancelled order; another payment of it still is a conflict."""
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    await container.orders.pay("o-1", succeeded=True, reference="pay-1")
    await container.orders.cancel("o-1", "customer")
    again = await container.orders.pay("o-1", succeeded=True, reference="pay-1")
    assert (again.row.status, again.row.payment_reference) == (S.CANCELLED, "pay-1")
    with pytest.raises(Conflict, match="CANCELLED order cannot be paid"):
        await container.orders.pay("o-1", succeeded=True, reference="pay-2")
    assert await available(container, "TEA") == 5
    await assert_audit_clean(container)


async def test_a_reservation_released_elsewhere_cancels_its_order(container: Container) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    await container.reservations.release("o-1", "fraud check")
    await drive(container)
    doc = await order_of(container, "o-1")
    assert (doc["status"], doc["reason"]) == (
        "CANCELLED",
        "the reservation was released: fraud check",
    )


async def test_an_orders_reservation_is_confirmed_by_its_payment_only(
    container: Container, clock: FakeClock
) -> None:
    # Confirmed through /inventory/confirm, the order would stay AWAITING_PAYMENT past its
    # due time with its stock committed, and never expire (D-425).
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 2)))
    await drive(container)
    with pytest.raises(Conflict, match="the order's payment confirms it"):
        await container.reservations.confirm("o-1")
    assert await reservation_status(container, "o-1") == "PENDING"
    clock.advance(TIMEOUT)
    assert await container.reservations.expire_due(100) == 1
    await drive(container)
    assert (await order_of(container, "o-1"))["status"] == "EXPIRED"
    assert await available(container, "TEA") == 5

    # Paid, it is CONFIRMED: confirming it again is the harmless repeat it always was.
    await container.orders.place(placed("o-2", ("TEA", 2)))
    await drive(container)
    await container.orders.pay("o-2", succeeded=True, reference="pay-2")
    assert (await container.reservations.confirm("o-2")).status.value == "CONFIRMED"
    # A reservation of no order is confirmed as before, and so is one that took the id
    # of an order that is over (here FAILED, holding nothing).
    await container.reservations.reserve(ReserveRequest("web-1", (OrderLine("TEA", 1),)))
    assert (await container.reservations.confirm("web-1")).status.value == "CONFIRMED"
    await container.orders.place(placed("o-3", ("TEA", 9)))
    await drive(container)
    assert (await order_of(container, "o-3"))["status"] == "FAILED"
    await container.reservations.reserve(ReserveRequest("o-3", (OrderLine("TEA", 1),)))
    assert (await container.reservations.confirm("o-3")).status.value == "CONFIRMED"
    await assert_audit_clean(container)


async def test_reservations_that_belong_to_no_order_are_ignored(container: Container) -> None:
    await receive(container, "TEA", 5)
    await container.reservations.reserve(ReserveRequest("web-1", (OrderLine("TEA", 1),)))
    await container.reservations.release("web-1")
    assert await drive(container) == ["inventory.released"]
    async with container.pool.acquire() as conn:
        assert (
            await container.orders.reservation_changed(conn, "web-1", Trigger.RESERVATION_RELEASED)
            is None
        )


# -- carriers --------------------------------------------------------------------------


async def test_a_required_delivery_date_picks_the_carrier_that_makes_it(
    container: Container,
) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 1), required_delivery_date=date(2030, 1, 3)))
    await drive(container)
    await container.orders.pay("o-1", succeeded=True, reference="p")
    await drive(container)
    doc = await order_of(container, "o-1")
    assert doc["status"] == "READY_TO_SHIP"
    assert doc["carrier"]["id"] == "express"  # post arrives on the 5th
    assert doc["carrier"]["estimated_delivery"] == "2030-01-02"


async def test_no_viable_carrier_keeps_the_order_paid_with_the_reason_and_says_so(
    container: Container,
) -> None:
    await receive(container, "TEA", 5)
    await container.orders.place(placed("o-1", ("TEA", 1), required_delivery_date=date(2030, 1, 1)))
    await drive(container)
    await container.orders.pay("o-1", succeeded=True, reference="p")
    assert await drive(container) == ["order.paid", "order.no_carrier"]
    doc = await order_of(container, "o-1")
    assert doc["status"] == "PAID"
    assert "carrier" not in doc
    assert doc["reason"] == (
        "no carrier delivers by 2030-01-01: the earliest is express on 2030-01-02"
    )
    assert await events_of(container, "order.no_carrier") == [
        {"order_id": "o-1", "reason": doc["reason"]}
    ]
    # Only the carrier that ships to France delivers the same day.
    await container.orders.place(
        placed(
            "o-2",
            ("TEA", 1),
            ship_to={**SHIP_TO, "country": "FR"},
            required_delivery_date=date(2030, 1, 1),
        )
    )
    await drive(container)
    await container.orders.pay("o-2", succeeded=True, reference="p2")
    await drive(container)
    assert (await order_of(container, "o-2"))["carrier"]["id"] == "courier"


async def test_with_no_carriers_configured_no_order_can_be_routed(
    make_container: MakeContainer,
) -> None:
    c = await make_container(orders={"carriers": []})
    await receive(c, "TEA", 5)
    await c.orders.place(placed("o-1", ("TEA", 1)))
    await drive(c)
    await c.orders.pay("o-1", succeeded=True, reference="p")
    await drive(c)
    doc = await order_of(c, "o-1")
    assert (doc["status"], doc["reason"]) == ("PAID", "no carrier ships to this destination")


# -- contention ------------------------------------------------------------------------


async def test_a_lost_optimistic_race_is_retried_not_failed(
    make_container: MakeContainer, db_url: str
) -> None:
    """optimistic with no retries of its own: the reserve step loses its compare-and-swap
    to a concurrent writer and raises (the consumer runner retries the message later);
    the order stays PENDING, nothing is held, and the retry reserves it."""
    c = await make_container(concurrency={"strategy": "optimistic", "max_retries": 0})
    await receive(c, "HOT", 5)
    await c.orders.place(placed("o-1", ("HOT", 1)))
    writer = await asyncpg.connect(db_url)
    try:
        tx = writer.transaction()
        await tx.start()
        await writer.execute("UPDATE sku_batch SET version = version + 1 WHERE sku = 'HOT'")

        async def step() -> OrderStatus | None:
            async with c.pool.acquire() as conn, conn.transaction():
                return await c.orders.reserve(conn, "o-1")

        task = asyncio.create_task(step())
        await until_waiting(writer, task)  # the compare-and-swap waits on the writer
        await tx.commit()  # ... and then finds another version
        with pytest.raises(Conflict, match="changed too often"):
            await task
    finally:
        await writer.close()
    assert (await order_of(c, "o-1"))["status"] == "PENDING"
    assert await reservation_status(c, "o-1") is None
    async with c.pool.acquire() as conn, conn.transaction():
        assert await c.orders.reserve(conn, "o-1") is S.AWAITING_PAYMENT


async def until_waiting(conn: asyncpg.Connection, task: asyncio.Task[Any]) -> None:
    deadline = time.monotonic() + 15
    while not task.done():
        n = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if n:
            return
        assert time.monotonic() < deadline, "the reserve step never waited on the writer"


async def test_a_saga_message_for_an_unknown_order_is_a_dead_letter(container: Container) -> None:
    handler = saga_handler(container.orders, Failpoints())
    env = Envelope.new("order.placed", {"order_id": "ghost"}, occurred_at=container.clock())
    async with container.pool.acquire() as conn, conn.transaction():
        with pytest.raises(PermanentError, match="no order ghost"):
            await handler(conn, env)
        bad = Envelope.new("order.paid", {"order": "x"}, occurred_at=container.clock())
        with pytest.raises(PermanentError, match="order_id"):
            await handler(conn, bad)
