"""The order saga's states and what each trigger does to them.

    PENDING --reserved--> AWAITING_PAYMENT --payment succeeded--> PAID --routed--> READY_TO_SHIP
       |                       |                                   |                  |
       +--refused--> FAILED    +--payment failed / cancel----------+------------------+--> CANCELLED
                               +--reservation expired--> EXPIRED
    AWAITING_PAYMENT, PAID, READY_TO_SHIP --reservation fulfilled--> SHIPPED

The saga (through the broker) reserves, routes, and hears what happened to the order's
reservation; the HTTP calls pay and cancel. Every trigger is safe to repeat: a trigger
that arrives when the order has moved on changes nothing. Triggers a client sends in a
state where they make no sense (paying a FAILED order) are conflicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from functools import cache

from stockkeeper.domain.errors import Conflict, ReservationExpired, TryAgain

# The saga's messages on the orders.saga exchange: commands it gives itself, and news.
PLACED = "order.placed"  # reserve the order's lines
PAID = "order.paid"  # choose a carrier
NO_CARRIER = "order.no_carrier"  # news: no carrier can take the order


class OrderStatus(StrEnum):
    PENDING = "PENDING"
    AWAITING_PAYMENT = "AWAITING_PAYMENT"
    FAILED = "FAILED"
    PAID = "PAID"
    READY_TO_SHIP = "READY_TO_SHIP"
    SHIPPED = "SHIPPED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"


FINAL = frozenset(
    {OrderStatus.FAILED, OrderStatus.SHIPPED, OrderStatus.CANCELLED, OrderStatus.EXPIRED}
)
# The states in which the order's reservation holds stock.
HOLDING = frozenset({OrderStatus.AWAITING_PAYMENT, OrderStatus.PAID, OrderStatus.READY_TO_SHIP})
# Why an order ends EXPIRED: its reservation ran out before the payment came.
NOT_PAID_IN_TIME = "payment not received before the reservation expired"
PAID_STATES = frozenset({OrderStatus.PAID, OrderStatus.READY_TO_SHIP, OrderStatus.SHIPPED})


class Trigger(StrEnum):
    RESERVED = "reserved"  # saga: the reservation holds every line
    REFUSED = "refused"  # saga: the reservation was refused (stock, unknown SKU)
    ROUTED = "routed"  # saga: a carrier was chosen
    PAYMENT_SUCCEEDED = "payment_succeeded"
    PAYMENT_FAILED = "payment_failed"
    CANCEL = "cancel"
    RESERVATION_EXPIRED = "reservation_expired"
    RESERVATION_RELEASED = "reservation_released"
    RESERVATION_FULFILLED = "reservation_fulfilled"


class StockAction(StrEnum):
    """What must happen to the order's reservation in the same transaction."""

    CONFIRM = "confirm"
    RELEASE = "release"


@dataclass(frozen=True, slots=True)
class Step:
    """Move to ``target`` (None: nothing changes), doing ``stock`` to the reservation."""

    target: OrderStatus | None
    stock: StockAction | None = None


NO_CHANGE = Step(None)

_S = OrderStatus


def plan(trigger: Trigger, status: OrderStatus) -> Step:
    """Decide the step ``trigger`` makes on an order in ``status``."""
    if trigger in (Trigger.RESERVED, Trigger.REFUSED):
        if status is not _S.PENDING:
            return NO_CHANGE  # cancelled meanwhile, or a repeat
        return Step(_S.AWAITING_PAYMENT if trigger is Trigger.RESERVED else _S.FAILED)
    if trigger is Trigger.ROUTED:
        return Step(_S.READY_TO_SHIP) if status is _S.PAID else NO_CHANGE
    if trigger is Trigger.PAYMENT_SUCCEEDED:
        return _payment_succeeded(status)
    if trigger is Trigger.PAYMENT_FAILED:
        return _payment_failed(status)
    if trigger is Trigger.CANCEL:
        return _cancel(status)
    if trigger is Trigger.RESERVATION_EXPIRED:
        return Step(_S.EXPIRED) if status is _S.AWAITING_PAYMENT else NO_CHANGE
    if trigger is Trigger.RESERVATION_RELEASED:
        return Step(_S.CANCELLED) if status in HOLDING else NO_CHANGE
    # RESERVATION_FULFILLED: the warehouse shipped it; that is a fact, whatever we thought.
    return Step(_S.SHIPPED) if status in HOLDING else NO_CHANGE


@cache
def moves(trigger: Trigger) -> tuple[frozenset[OrderStatus], OrderStatus]:
    """For a trigger of the saga's own (reserved, refused, routed, the reservation's
    news): the states it moves an order from, and the one state it moves them to, as
    ``plan`` says; so a step can make its move with its guard in one statement."""
    steps = {s: plan(trigger, s).target for s in OrderStatus}
    targets = {t for t in steps.values() if t is not None}
    if len(targets) != 1:
        raise ValueError(f"{trigger} does not move every order it moves to one state")
    return frozenset(s for s, t in steps.items() if t is not None), targets.pop()


def _payment_succeeded(status: OrderStatus) -> Step:
    if status is _S.AWAITING_PAYMENT:
        return Step(_S.PAID, StockAction.CONFIRM)
    if status in PAID_STATES:
        return NO_CHANGE  # a repeat; check_payment_repeat compares the reference
    if status is _S.PENDING:
        raise TryAgain("the order's stock is not reserved yet; send the payment again shortly")
    if status is _S.EXPIRED:
        raise ReservationExpired("the order expired before it was paid")
    raise Conflict(f"a {status} order cannot be paid")


def _payment_failed(status: OrderStatus) -> Step:
    if status is _S.AWAITING_PAYMENT:
        return Step(_S.CANCELLED, StockAction.RELEASE)
    if status is _S.PENDING:
        return Step(_S.CANCELLED)  # nothing reserved yet; the saga will not reserve it
    if status in PAID_STATES:
        raise Conflict(f"the order is already paid ({status})")
    return NO_CHANGE  # FAILED, CANCELLED, EXPIRED: over, and no stock held


def _cancel(status: OrderStatus) -> Step:
    if status is _S.PENDING:
        return Step(_S.CANCELLED)
    if status in HOLDING:
        return Step(_S.CANCELLED, StockAction.RELEASE)
    if status is _S.SHIPPED:
        raise Conflict("the order has shipped; take it back as a return (a receipt)")
    return NO_CHANGE  # FAILED, CANCELLED, EXPIRED: over, and no stock held


def paid_then_cancelled(status: OrderStatus, paid_reference: str | None, reference: str) -> bool:
    """The payment that paid an order since cancelled, sent again (a provider's retry):
    a harmless repeat like any other (D-087, D-480), not a payment of a cancelled order."""
    return status is OrderStatus.CANCELLED and paid_reference == reference


def check_payment_repeat(paid_reference: str | None, reference: str) -> None:
    """A paid order paid again: the same payment is a harmless repeat, another is not."""
    if paid_reference is not None and paid_reference != reference:
        raise Conflict(f"the order is already paid by payment {paid_reference!r}")
