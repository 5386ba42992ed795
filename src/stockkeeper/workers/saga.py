"""The saga worker: consumes ``orders.saga`` and moves each order one step.

Runs under the consumer runner, so each step's effect commits with the message's
``processed_message`` mark: a redelivered message (after a crash) has no second effect,
and a step whose transaction did not commit is simply done again. Each step also checks
the order's state under its lock, so a step that arrives late changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stockkeeper.domain import events
from stockkeeper.domain.errors import NotFound
from stockkeeper.domain.orders import PAID, PLACED, Trigger
from stockkeeper.failpoints import Failpoints
from stockkeeper.messaging.consumer import (
    BatchEffectHandler,
    EffectHandler,
    Incoming,
    PermanentError,
)
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.orders import Orders
from stockkeeper.store.pool import Conn

QUEUE = "orders.saga"

# What the reservation's own events mean for its order.
RESERVATION_TRIGGERS = {
    events.EXPIRED: Trigger.RESERVATION_EXPIRED,
    events.RELEASED: Trigger.RESERVATION_RELEASED,
    events.FULFILLED: Trigger.RESERVATION_FULFILLED,
}

STEPS = {PLACED, PAID, *RESERVATION_TRIGGERS}


class _OrderMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    order_id: str = Field(min_length=1, max_length=128)
    reason: str | None = None


def _message(env: Envelope) -> _OrderMessage:
    try:
        return _OrderMessage.model_validate(env.payload)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise PermanentError(f"bad {env.type} payload: {where}: {err['msg']}") from None


def saga_handler(orders: Orders, failpoints: Failpoints) -> EffectHandler:
    async def handle(conn: Conn, env: Envelope) -> None:
        if env.type not in STEPS:
            return  # news (order.no_carrier), or a binding added later: nothing to do
        msg = _message(env)
        try:
            if env.type == PLACED:
                await orders.reserve(conn, msg.order_id)
                failpoints.hit("saga.reserve")
            elif env.type == PAID:
                await orders.route(conn, msg.order_id)
                failpoints.hit("saga.route")
            else:
                trigger = RESERVATION_TRIGGERS[env.type]
                await orders.reservation_changed(conn, msg.order_id, trigger, msg.reason)
                failpoints.hit(f"saga.{trigger.value}")
        except NotFound as exc:
            raise PermanentError(exc.detail) from None

    return handle


def saga_batch_handler(orders: Orders, failpoints: Failpoints) -> BatchEffectHandler:
    """A batch of the saga's messages in delivery order (D-371): each run of
    ``order.placed`` commands is reserved set-based (``Orders.reserve_many``), any other
    message is the one-message step between them, so each order's steps keep their
    order. Whatever raises (a bad payload, no such order, a race lost too often) makes
    the runner apply the batch one message at a time, so the culprit alone is retried or
    dead-lettered."""
    handle = saga_handler(orders, failpoints)

    async def reserve(conn: Conn, run: list[str]) -> None:
        await orders.reserve_many(conn, run)
        for _ in run:
            failpoints.hit("saga.reserve")

    async def handle_many(conn: Conn, items: Sequence[Incoming]) -> None:
        run: list[str] = []
        for it in items:
            if it.env.type == PLACED:
                run.append(_message(it.env).order_id)
                continue
            if run:
                await reserve(conn, run)
                run = []
            await handle(conn, it.env)
        if run:
            await reserve(conn, run)

    return handle_many
