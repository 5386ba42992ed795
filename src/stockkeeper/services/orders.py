"""Orders: place, pay, cancel, read; and the saga's steps.

``POST /orders`` records the order (PENDING) and the saga's first command
(``order.placed``) in one transaction and answers at once. The saga worker takes the
command from the broker and reserves the lines through the reservation service, in the
consumer's transaction, so the reservation, the order's new state and the message's
``processed_message`` mark commit together. Paying and cancelling happen in the HTTP
call's own transaction (the client learns at once whether its payment came in time);
a paid order's ``order.paid`` command sends it back to the saga to choose a carrier.
What happens to the order's reservation elsewhere (expiry, a release, fulfilment)
reaches the saga as the reservation's own events.

Every step locks the order row first, then does whatever it does to the reservation,
so the saga and the HTTP calls take turns on one order and never wait on another's.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from stockkeeper.domain.allocation import OrderLine, check_lines, lines_of, same_lines
from stockkeeper.domain.carriers import NoCarrier, Quote, Shipment, choose
from stockkeeper.domain.errors import (
    Conflict,
    DomainError,
    InsufficientStock,
    InvalidRequest,
    NotFound,
    ReservationExpired,
)
from stockkeeper.domain.events import Event, order_key
from stockkeeper.domain.orders import (
    FINAL,
    NO_CARRIER,
    NOT_PAID_IN_TIME,
    PAID,
    PLACED,
    OrderStatus,
    StockAction,
    Trigger,
    check_payment_repeat,
    moves,
    paid_then_cancelled,
    plan,
)
from stockkeeper.domain.reservation import Status
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.reservations import Reservations, ReservationView, ReserveRequest
from stockkeeper.services.reserve_batch import BatchReserver
from stockkeeper.services.unit import (
    Clock,
    add_events,
    key_for,
    key_written,
    solo,
    transaction,
    utcnow,
)
from stockkeeper.store import orders as repo
from stockkeeper.store.orders import OrderRow
from stockkeeper.store.pool import Conn, Pool

SOURCE = "orders"  # the source of the ledger entries and events the saga causes


class CarrierQuotes(Protocol):
    """Where quotes come from: the configuration, or a carrier's (or broker's) API."""

    async def quotes(self, shipment: Shipment) -> list[Quote]: ...


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    order_id: str
    lines: tuple[OrderLine, ...]
    ship_to: dict[str, Any]
    required_delivery_date: date | None = None

    def lines_doc(self) -> list[dict[str, Any]]:
        return [{"sku": li.sku, "quantity": li.quantity} for li in self.lines]


@dataclass(frozen=True, slots=True)
class OrderView:
    row: OrderRow
    created: bool = False


def order_as_of(row: OrderRow, now: datetime) -> OrderRow:
    """The order as the rules see it at ``now``: one still awaiting a payment that is
    past its due time is EXPIRED, whether or not the expiry worker and the saga have got
    there yet (D-480). An answer, not a write: the saga books the move when the
    reservation's expiry reaches it, however long it has been away."""
    due = row.payment_due_at
    if row.status is OrderStatus.AWAITING_PAYMENT and due is not None and due <= now:
        return replace(row, status=OrderStatus.EXPIRED, reason=NOT_PAID_IN_TIME)
    return row


def _placed_row(id_: int, req: PlaceOrder, now: datetime) -> OrderRow:
    """The order as ``place`` writes it."""
    return OrderRow(
        id=id_,
        order_id=req.order_id,
        status=OrderStatus.PENDING,
        lines=req.lines_doc(),
        ship_to=req.ship_to,
        required_delivery_date=req.required_delivery_date,
        reason=None,
        shortages=None,
        carrier=None,
        payment_reference=None,
        payment_due_at=None,
        created_at=now,
        decided_at=None,
        updated_at=now,
    )


class Orders:
    """The order use cases, and the saga's steps."""

    def __init__(
        self,
        pool: Pool,
        metrics: Metrics,
        reservations: Reservations,
        carriers: CarrierQuotes,
        *,
        payment_timeout_seconds: int = 900,
        clock: Clock = utcnow,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.reservations = reservations
        self.batch = BatchReserver(reservations)
        self.carriers = carriers
        self.payment_timeout = payment_timeout_seconds
        self.clock = clock

    # -- HTTP ------------------------------------------------------------------------

    async def place(self, req: PlaceOrder, conn: Conn | None = None) -> OrderView:
        """Record the order and the command to reserve it; nothing is reserved yet.

        One statement (D-311): the checks, the order and its command go in together or
        not at all, so no transaction of its own; under an Idempotency-Key that statement
        writes the key too, with the answer to the order as it will be placed (its id
        aside, which it does not know yet), D-366."""
        check_lines(req.lines)
        now = self.clock()
        date_ok = req.required_delivery_date is None or req.required_delivery_date >= now.date()
        lines = req.lines_doc()
        event = Event(PLACED, {"order_id": req.order_id}, key=order_key(req.order_id))
        async with self._conn(conn) as c:
            placed = await repo.place(
                c,
                req.order_id,
                lines,
                req.ship_to,
                req.required_delivery_date,
                now,
                date_ok=date_ok,
                event=event,
                key=key_for(c, lambda: OrderView(_placed_row(0, req, now), created=True)),
            )
            if placed.keyed:
                key_written(c)
            if placed.id is None:
                # Placed before (or concurrently, and committed meanwhile), or refused.
                row = await repo.get(c, req.order_id)
                if row is not None:
                    return self._repeat(row, req)
        if placed.id is None:
            if not date_ok:
                raise InvalidRequest(
                    "required_delivery_date is in the past", "body.required_delivery_date"
                )
            if placed.unknown:
                raise InvalidRequest(
                    f"unknown sku: {', '.join(sorted(placed.unknown))}", "body.lines"
                )
            if placed.reserved:
                raise Conflict(
                    f"order id {req.order_id} is already used by a reservation; "
                    "an order needs an id of its own"
                )
            raise AssertionError("the order went in neither now nor before")
        self.metrics.orders_placed.inc()
        return OrderView(_placed_row(placed.id, req, now), created=True)

    def _conn(self, conn: Conn | None) -> AbstractAsyncContextManager[Conn]:
        """The caller's connection, or one of the pool's (no transaction: one statement)."""
        return nullcontext(conn) if conn is not None else self.pool.acquire()

    @staticmethod
    def _repeat(row: OrderRow, req: PlaceOrder) -> OrderView:
        same = same_lines(lines_of(row.lines), req.lines) and (
            row.ship_to,
            row.required_delivery_date,
        ) == (req.ship_to, req.required_delivery_date)
        if not same:
            raise Conflict(f"order {req.order_id} was already placed with other contents")
        return OrderView(row)

    async def get(self, order_id: str) -> OrderView:
        async with self.pool.acquire() as c:
            row = await repo.get(c, order_id)
        if row is None:
            raise NotFound(f"no order {order_id}")
        return OrderView(order_as_of(row, self.clock()))

    async def pay(
        self, order_id: str, *, succeeded: bool, reference: str, conn: Conn | None = None
    ) -> OrderView:
        """The payment's outcome: confirm the reservation (PAID), or release it (CANCELLED).

        A payment that comes after the reservation ran out expires the order and raises
        ReservationExpired, so the payment side knows to give the money back.
        """
        trigger = Trigger.PAYMENT_SUCCEEDED if succeeded else Trigger.PAYMENT_FAILED
        expired = False
        async with transaction(self.pool, conn) as c:
            row = await self._lock(c, order_id)
            if succeeded and paid_then_cancelled(row.status, row.payment_reference, reference):
                return OrderView(row)  # the payment we took, sent again (D-480)
            step = plan(trigger, row.status)
            if succeeded and step.target is None:
                check_payment_repeat(row.payment_reference, reference)
            if step.stock is StockAction.CONFIRM:
                try:
                    await self.reservations.confirm(order_id, c, source=SOURCE, by_order=True)
                except ReservationExpired:
                    # The confirm committed the expiry (stock back) in our transaction.
                    expired = True
            elif step.stock is StockAction.RELEASE:
                held = await self.reservations.release(
                    order_id, f"payment {reference} failed", c, source=SOURCE
                )
                if held.status is Status.EXPIRED:  # past its due time: expired on touch
                    row = await self._move(c, row, OrderStatus.EXPIRED, reason=NOT_PAID_IN_TIME)
                    return OrderView(row)
            if expired:
                row = await self._move(
                    c, row, OrderStatus.EXPIRED, reason="payment came after the reservation expired"
                )
            elif step.target is OrderStatus.PAID:
                row = await self._move(c, row, step.target, payment_reference=reference)
                await add_events(c, [Event(PAID, {"order_id": order_id}, key=order_key(order_id))])
            elif step.target is not None:
                row = await self._move(c, row, step.target, reason=f"payment {reference} failed")
        if expired:
            raise ReservationExpired("the order's reservation expired before it was paid")
        return OrderView(row)

    async def cancel(
        self, order_id: str, reason: str | None = None, conn: Conn | None = None
    ) -> OrderView:
        """Cancel the order and give its stock back (also after payment, before shipping)."""
        reason = reason or "cancelled"
        async with transaction(self.pool, conn) as c:
            row = await self._lock(c, order_id)
            step = plan(Trigger.CANCEL, row.status)
            if step.stock is StockAction.RELEASE:
                held = await self.reservations.release(order_id, reason, c, source=SOURCE)
                if held.status is Status.EXPIRED:
                    # Its payment window had closed before the cancel came (the sweep had
                    # not run yet): the release booked the expiry, and the order is over
                    # as the saga would have ended it, EXPIRED (D-480).
                    return OrderView(
                        await self._move(c, row, OrderStatus.EXPIRED, reason=NOT_PAID_IN_TIME)
                    )
            if step.target is not None:
                row = await self._move(c, row, step.target, reason=reason)
        return OrderView(row)

    # -- the saga's steps, each in the consumer's transaction --------------------------

    async def reserve(self, conn: Conn, order_id: str) -> OrderStatus | None:
        """order.placed: reserve every line or none; AWAITING_PAYMENT or FAILED.

        Returns the new status, or None when the order had already moved on. A lost
        optimistic race raises Conflict: the message is retried, the order stays PENDING.

        Few round trips (D-310): one statement locks the order, checks it is PENDING and
        moves it to AWAITING_PAYMENT; the reservation runs in the consumer's transaction
        without a savepoint of its own; a refusal is one more statement (FAILED, and the
        refused reservation's row taken back). All of it commits with the message's mark.
        """
        now = self.clock()
        ttl = self.payment_timeout or self.reservations.default_ttl
        due = now + timedelta(seconds=ttl)
        start = await repo.start_reserve(conn, order_id, due, now)
        if start is None:
            raise NotFound(f"no order {order_id}")
        if not start.moved:
            return None
        req = ReserveRequest(
            order_id,
            tuple(OrderLine(sku, qty) for sku, qty in start.lines),
            ttl_seconds=self.payment_timeout,
        )
        answer: ReservationView | DomainError
        try:
            answer = await self.reservations.reserve(
                req, conn, source=SOURCE, now=now, savepoint=False
            )
        except (InsufficientStock, InvalidRequest, Conflict) as exc:
            answer = exc
        refusal = await self._judge(conn, start, answer, due)
        if refusal is not None:
            await repo.refuse(conn, order_id, start.id, refusal.reason, refusal.shortages, now)
        return self._decided(start, refusal, now)

    async def reserve_many(self, conn: Conn, order_ids: Sequence[str]) -> None:
        """order.placed for several orders at once (the saga's batches, D-371): each
        order reserved all or none, AWAITING_PAYMENT or FAILED, as ``reserve`` decides,
        in a constant number of statements: the orders locked and moved in one, the
        reservations made set-based (``BatchReserver``, in the consumer's transaction
        itself), the refused ones FAILED in one. Raises NotFound for an order_id that is
        no order, and what ``reserve`` raises to have the step tried again: the caller
        (the consumer runner) then applies the messages one by one."""
        ids = list(dict.fromkeys(order_ids))  # a copy in the batch finds its order moved on
        now = self.clock()
        ttl = self.payment_timeout or self.reservations.default_ttl
        due = now + timedelta(seconds=ttl)
        starts = await repo.start_reserve_many(conn, ids, due, now)
        if missing := [o for o in ids if o not in starts]:
            raise NotFound(f"no order {missing[0]}")
        todo = [(o, starts[o]) for o in ids if starts[o].moved]
        if not todo:
            return
        reqs = [
            ReserveRequest(
                o,
                tuple(OrderLine(sku, qty) for sku, qty in st.lines),
                ttl_seconds=self.payment_timeout,
            )
            for o, st in todo
        ]
        async with solo(conn):  # the consumer's transaction itself, no savepoint
            answers = await self.batch.reserve_batch(reqs, source=SOURCE, conn=conn, now=now)
        refusals: list[repo.Refusal] = []
        for (_, st), answer in zip(todo, answers, strict=True):
            refusal = await self._judge(conn, st, answer, due)
            if refusal is not None:
                refusals.append(refusal)
            self._decided(st, refusal, now)
        await repo.refuse_many(conn, refusals, now)

    async def _judge(
        self,
        conn: Conn,
        start: repo.ReserveStart,
        answer: ReservationView | DomainError,
        due: datetime,
    ) -> repo.Refusal | None:
        """Why the reserve's answer refuses the order (None: it holds its stock). Raises
        what must have the step tried again (a race lost too often)."""
        if isinstance(answer, InsufficientStock):
            return repo.Refusal(start.id, "insufficient stock", answer.extensions()["shortages"])
        if isinstance(answer, InvalidRequest):
            return repo.Refusal(start.id, answer.detail, None)
        if isinstance(answer, Conflict):
            if not start.reserved_before:
                raise answer  # lost the race too often: try the whole step again later
            # The id holds a reservation for other lines.
            return repo.Refusal(start.id, answer.detail, None)
        if isinstance(answer, DomainError):
            raise answer
        if answer.status is not Status.PENDING:
            return repo.Refusal(
                start.id, f"the order's reservation is already {answer.status}", None
            )
        if answer.expires_at != due:  # not with one clock reading; kept right anyway
            await repo.set_payment_due(conn, start.id, answer.expires_at)
        return None

    def _decided(
        self, start: repo.ReserveStart, refusal: repo.Refusal | None, now: datetime
    ) -> OrderStatus:
        """The decision's status, counted."""
        status = OrderStatus.AWAITING_PAYMENT if refusal is None else OrderStatus.FAILED
        if refusal is not None:
            self.metrics.orders_final.labels(status=status.value).inc()
        self.metrics.order_decision.labels(status=status.value).observe(
            max(0.0, (now - start.created_at).total_seconds())
        )
        return status

    async def route(self, conn: Conn, order_id: str) -> OrderStatus | None:
        """order.paid: choose the carrier (READY_TO_SHIP), or say why none can take it."""
        row = await self._get(conn, order_id)
        if plan(Trigger.ROUTED, row.status).target is None:
            return None
        # Quotes may come from a carrier's API: ask before taking the order's lock.
        ship_to = row.ship_to
        shipment = Shipment(
            order_id,
            ship_to["country"],
            ship_to.get("postal_code"),
            tuple((li["sku"], li["quantity"]) for li in row.lines),
            self.clock().date(),
        )
        choice = choose(await self.carriers.quotes(shipment), row.required_delivery_date)
        # The order's lock, its guard (still PAID) and the move in one statement (D-312).
        sources, target = moves(Trigger.ROUTED)
        now = self.clock()
        if isinstance(choice, NoCarrier):
            # It stays PAID, with the reason.
            stays = OrderStatus.PAID
            reason = choice.reason
            if not await repo.move_from(
                conn, order_id, sources, stays, now, reason=reason, set_reason=True
            ):
                return None
            await add_events(
                conn,
                [
                    Event(
                        NO_CARRIER,
                        {"order_id": order_id, "reason": choice.reason},
                        key=order_key(order_id),
                    )
                ],
            )
            self.metrics.orders_no_carrier.inc()
            return OrderStatus.PAID
        if not await repo.move_from(conn, order_id, sources, target, now, carrier=choice.to_json()):
            return None
        return target

    async def reservation_changed(
        self, conn: Conn, order_id: str, trigger: Trigger, reason: str | None = None
    ) -> OrderStatus | None:
        """The order's reservation expired, was released or fulfilled elsewhere.

        One statement (D-312): the order moves if it is in a state the trigger moves it
        from. A reservation that belongs to no order is none of the saga's business: None.
        """
        sources, target = moves(trigger)
        if trigger is Trigger.RESERVATION_EXPIRED:
            reason = NOT_PAID_IN_TIME
        elif trigger is Trigger.RESERVATION_RELEASED:
            reason = f"the reservation was released: {reason or 'no reason given'}"
        moved = await repo.move_from(
            conn, order_id, sources, target, self.clock(), reason=reason, set_reason=True
        )
        if not moved:
            return None
        if target in FINAL:
            self.metrics.orders_final.labels(status=target.value).inc()
        return target

    # -- helpers ---------------------------------------------------------------------

    async def _get(self, conn: Conn, order_id: str) -> OrderRow:
        row = await repo.get(conn, order_id)
        if row is None:
            raise NotFound(f"no order {order_id}")
        return row

    async def _lock(self, conn: Conn, order_id: str) -> OrderRow:
        row = await repo.get(conn, order_id, lock=True)
        if row is None:
            raise NotFound(f"no order {order_id}")
        return row

    async def _move(
        self, conn: Conn, row: OrderRow, target: OrderStatus, **changes: Any
    ) -> OrderRow:
        """Save ``row`` in ``target`` with ``changes``. Counted when final: in the
        transaction, so a step rolled back after this (a crash) may count twice."""
        row = replace(row, status=target, updated_at=self.clock(), **changes)
        await repo.save(conn, row)
        if target in FINAL:
            self.metrics.orders_final.labels(status=target.value).inc()
        return row
