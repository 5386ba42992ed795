"""The order saga's state machine: every trigger in every state."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockkeeper.domain.errors import Conflict, ReservationExpired, TryAgain
from stockkeeper.domain.orders import (
    FINAL,
    HOLDING,
    NO_CHANGE,
    OrderStatus,
    Step,
    StockAction,
    Trigger,
    check_payment_repeat,
    moves,
    plan,
)

S = OrderStatus
PENDING, AWAIT, FAILED, PAID, READY, SHIPPED, CANCELLED, EXPIRED = (
    S.PENDING,
    S.AWAITING_PAYMENT,
    S.FAILED,
    S.PAID,
    S.READY_TO_SHIP,
    S.SHIPPED,
    S.CANCELLED,
    S.EXPIRED,
)
ORDER = [PENDING, AWAIT, FAILED, PAID, READY, SHIPPED, CANCELLED, EXPIRED]
N = NO_CHANGE
CONFIRM, RELEASE = StockAction.CONFIRM, StockAction.RELEASE

# One row per trigger; one column per status, in ORDER.
TABLE: dict[Trigger, list[Step | type[Exception]]] = {
    Trigger.RESERVED: [Step(AWAIT), N, N, N, N, N, N, N],
    Trigger.REFUSED: [Step(FAILED), N, N, N, N, N, N, N],
    Trigger.ROUTED: [N, N, N, Step(READY), N, N, N, N],
    Trigger.PAYMENT_SUCCEEDED: [
        TryAgain,  # not reserved yet: a conflict an Idempotency-Key does not keep (D-479)
        Step(PAID, CONFIRM),
        Conflict,
        N,
        N,
        N,
        Conflict,
        ReservationExpired,
    ],
    Trigger.PAYMENT_FAILED: [
        Step(CANCELLED),
        Step(CANCELLED, RELEASE),
        N,
        Conflict,
        Conflict,
        Conflict,
        N,
        N,
    ],
    Trigger.CANCEL: [
        Step(CANCELLED),
        Step(CANCELLED, RELEASE),
        N,
        Step(CANCELLED, RELEASE),
        Step(CANCELLED, RELEASE),
        Conflict,
        N,
        N,
    ],
    Trigger.RESERVATION_EXPIRED: [N, Step(EXPIRED), N, N, N, N, N, N],
    Trigger.RESERVATION_RELEASED: [
        N,
        Step(CANCELLED),
        N,
        Step(CANCELLED),
        Step(CANCELLED),
        N,
        N,
        N,
    ],
    Trigger.RESERVATION_FULFILLED: [
        N,
        Step(SHIPPED),
        N,
        Step(SHIPPED),
        Step(SHIPPED),
        N,
        N,
        N,
    ],
}
CASES = [(t, s, TABLE[t][i]) for t in TABLE for i, s in enumerate(ORDER)]


def test_the_table_covers_every_pair() -> None:
    assert set(TABLE) == set(Trigger)
    assert set(ORDER) == set(OrderStatus)
    assert all(len(row) == len(ORDER) for row in TABLE.values())


@pytest.mark.parametrize(("trigger", "status", "want"), CASES, ids=str)
def test_plan(trigger: Trigger, status: OrderStatus, want: Step | type[Exception]) -> None:
    if isinstance(want, Step):
        assert plan(trigger, status) == want
    else:
        with pytest.raises(want) as info:
            plan(trigger, status)
        assert type(info.value) is want  # a conflict is never reported as an expiry


@given(st.sampled_from(list(Trigger)), st.sampled_from(list(OrderStatus)))
def test_a_final_order_never_moves(trigger: Trigger, status: OrderStatus) -> None:
    if status not in FINAL:
        return
    with contextlib.suppress(Conflict, ReservationExpired):
        assert plan(trigger, status).target is None


@given(st.sampled_from(list(Trigger)), st.sampled_from(list(OrderStatus)))
def test_stock_is_touched_only_where_it_is_held(trigger: Trigger, status: OrderStatus) -> None:
    """Confirm or release only when the order's reservation holds stock; leaving a
    holding state for a final one by the client's hand always gives the stock back."""
    try:
        step = plan(trigger, status)
    except (Conflict, ReservationExpired):
        return
    if step.stock is not None:
        assert status in HOLDING
    client = trigger in (Trigger.CANCEL, Trigger.PAYMENT_FAILED)
    if client and status in HOLDING and step.target in FINAL:
        assert step.stock is RELEASE


@given(st.sampled_from(list(Trigger)), st.sampled_from(list(OrderStatus)))
def test_every_trigger_is_safe_to_repeat(trigger: Trigger, status: OrderStatus) -> None:
    """Applying a trigger's step and then the same trigger again changes nothing more."""
    try:
        step = plan(trigger, status)
    except (Conflict, ReservationExpired):
        return
    if step.target is None:
        return
    try:
        again = plan(trigger, step.target)
    except (Conflict, ReservationExpired):
        pytest.fail(f"{trigger} repeated on {step.target} is refused")
    assert again.target is None


def test_the_same_payment_again_is_a_repeat_and_another_is_a_conflict() -> None:
    check_payment_repeat("pay-1", "pay-1")
    check_payment_repeat(None, "pay-1")  # shipped before it was paid: nothing to compare
    with pytest.raises(Conflict, match="pay-1"):
        check_payment_repeat("pay-1", "pay-2")


@pytest.mark.parametrize(
    "trigger",
    [
        Trigger.RESERVED,
        Trigger.REFUSED,
        Trigger.ROUTED,
        Trigger.RESERVATION_EXPIRED,
        Trigger.RESERVATION_RELEASED,
        Trigger.RESERVATION_FULFILLED,
    ],
)
def test_moves_is_what_plan_says_for_the_sagas_triggers(trigger: Trigger) -> None:
    sources, target = moves(trigger)
    for status in OrderStatus:
        assert plan(trigger, status).target == (target if status in sources else None)
