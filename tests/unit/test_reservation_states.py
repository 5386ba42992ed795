"""The reservation state machine, its stock movements, and the quantities they move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stockkeeper.domain.errors import Conflict, ReservationExpired
from stockkeeper.domain.quantities import Delta, Figures, StockLevel
from stockkeeper.domain.reservation import (
    NO_CHANGE,
    Action,
    EntryType,
    Status,
    Step,
    holds_stock,
    is_overdue,
    movement,
    plan,
)

NOW = datetime(2030, 1, 1, 12, tzinfo=UTC)
LATER = NOW + timedelta(minutes=15)  # not yet due
EARLIER = NOW - timedelta(seconds=1)  # overdue if still PENDING

P, C, X, E, F = (
    Status.PENDING,
    Status.CONFIRMED,
    Status.CANCELLED,
    Status.EXPIRED,
    Status.FULFILLED,
)

# (action, status) -> the step, or the error, when the reservation is not yet due.
EXPECTED: dict[tuple[Action, Status], Step | type[Exception]] = {
    (Action.RELEASE, P): Step(X, EntryType.ORDER_RELEASE),
    (Action.RELEASE, C): Step(X, EntryType.ORDER_RELEASE),
    (Action.RELEASE, X): NO_CHANGE,
    (Action.RELEASE, E): NO_CHANGE,
    (Action.RELEASE, F): Conflict,
    (Action.CONFIRM, P): Step(C, EntryType.ORDER_CONFIRM),
    (Action.CONFIRM, C): NO_CHANGE,
    (Action.CONFIRM, X): Conflict,
    (Action.CONFIRM, E): ReservationExpired,
    (Action.CONFIRM, F): Conflict,
    (Action.FULFIL, P): Conflict,
    (Action.FULFIL, C): Step(F, EntryType.FULFIL),
    (Action.FULFIL, X): Conflict,
    (Action.FULFIL, E): ReservationExpired,
    (Action.FULFIL, F): NO_CHANGE,
    (Action.EXPIRE, P): NO_CHANGE,
    (Action.EXPIRE, C): NO_CHANGE,
    (Action.EXPIRE, X): NO_CHANGE,
    (Action.EXPIRE, E): NO_CHANGE,
    (Action.EXPIRE, F): NO_CHANGE,
}

# A PENDING reservation past its expiry, not yet swept by the worker.
EXPECTED_OVERDUE_PENDING: dict[Action, Step | type[Exception]] = {
    Action.RELEASE: Step(E, EntryType.ORDER_EXPIRE),
    Action.CONFIRM: Step(E, EntryType.ORDER_EXPIRE, expired_first=True),
    Action.FULFIL: ReservationExpired,
    Action.EXPIRE: Step(E, EntryType.ORDER_EXPIRE),
}


def test_the_table_covers_every_pair() -> None:
    assert set(EXPECTED) == {(a, s) for a in Action for s in Status}
    assert set(EXPECTED_OVERDUE_PENDING) == set(Action)


def check(action: Action, status: Status, expires_at: datetime, want: object) -> None:
    if isinstance(want, Step):
        assert plan(action, status, expires_at, NOW) == want
    else:
        assert isinstance(want, type)
        with pytest.raises(want) as info:
            plan(action, status, expires_at, NOW)
        # A conflict is a Conflict, an expiry is ReservationExpired: never the other.
        assert type(info.value) is want
        assert str(status) in info.value.detail or want is ReservationExpired


@pytest.mark.parametrize(("action", "status"), sorted(EXPECTED), ids=str)
def test_plan_before_expiry(action: Action, status: Status) -> None:
    check(action, status, LATER, EXPECTED[(action, status)])


@pytest.mark.parametrize("action", list(Action), ids=str)
def test_plan_overdue_pending(action: Action) -> None:
    check(action, P, EARLIER, EXPECTED_OVERDUE_PENDING[action])


@pytest.mark.parametrize("action", list(Action), ids=str)
def test_pending_due_exactly_now_is_overdue(action: Action) -> None:
    check(action, P, NOW, EXPECTED_OVERDUE_PENDING[action])


@pytest.mark.parametrize(("action", "status"), sorted(EXPECTED), ids=str)
def test_only_pending_can_be_overdue(action: Action, status: Status) -> None:
    # A reservation that left PENDING is not affected by its old expiry time.
    if status is P:
        return
    check(action, status, EARLIER, EXPECTED[(action, status)])


def test_expired_first_only_for_confirm_of_overdue() -> None:
    for action in Action:
        for status in Status:
            for expires_at in (EARLIER, LATER):
                try:
                    step = plan(action, status, expires_at, NOW)
                except (Conflict, ReservationExpired):
                    continue
                overdue_confirm = action is Action.CONFIRM and status is P and expires_at <= NOW
                assert step.expired_first is overdue_confirm


def test_idempotent_repeats_are_no_change() -> None:
    # A client retrying the step it already made gets "no change", not an error.
    assert plan(Action.RELEASE, X, LATER, NOW) is NO_CHANGE
    assert plan(Action.RELEASE, E, EARLIER, NOW) is NO_CHANGE
    assert plan(Action.CONFIRM, C, EARLIER, NOW) is NO_CHANGE
    assert plan(Action.FULFIL, F, EARLIER, NOW) is NO_CHANGE
    assert NO_CHANGE.target is None
    assert NO_CHANGE.entry_type is None


def test_is_overdue() -> None:
    assert is_overdue(P, NOW, NOW)
    assert is_overdue(P, EARLIER, NOW)
    assert not is_overdue(P, LATER, NOW)
    for s in (C, X, E, F):
        assert not is_overdue(s, EARLIER, NOW)


def test_every_step_target_follows_an_arrow() -> None:
    arrows = {(P, C), (C, F), (P, X), (C, X), (P, E)}
    for action in Action:
        for status in Status:
            for expires_at in (EARLIER, LATER):
                try:
                    step = plan(action, status, expires_at, NOW)
                except (Conflict, ReservationExpired):
                    continue
                if step.target is not None:
                    assert (status, step.target) in arrows
                    assert step.entry_type is not None


# -- movements -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry_type", "from_status", "want"),
    [
        (EntryType.ORDER_ALLOCATE, P, Delta(reserved=7)),
        (EntryType.ORDER_CONFIRM, P, Delta(reserved=-7, committed=7)),
        (EntryType.FULFIL, C, Delta(on_hand=-7, committed=-7)),
        (EntryType.ORDER_RELEASE, P, Delta(reserved=-7)),
        (EntryType.ORDER_RELEASE, C, Delta(committed=-7)),
        (EntryType.ORDER_EXPIRE, P, Delta(reserved=-7)),
        (EntryType.ORDER_EXPIRE, C, Delta(committed=-7)),
    ],
    ids=str,
)
def test_movement(entry_type: EntryType, from_status: Status, want: Delta) -> None:
    assert movement(entry_type, from_status, 7) == want


@pytest.mark.parametrize(
    "entry_type", [EntryType.RECEIPT, EntryType.ADJUSTMENT, EntryType.SALE], ids=str
)
def test_movement_refuses_non_reservation_entries(entry_type: EntryType) -> None:
    with pytest.raises(ValueError, match=entry_type.value):
        movement(entry_type, P, 1)


def test_each_step_moves_exactly_what_the_status_held() -> None:
    """For every step plan allows, holding(before) + movement = holding(after)."""
    for action in Action:
        for status in Status:
            for expires_at in (EARLIER, LATER):
                try:
                    step = plan(action, status, expires_at, NOW)
                except (Conflict, ReservationExpired):
                    continue
                if step.target is None:
                    continue
                assert step.entry_type is not None
                before = holds_stock(status)
                after = holds_stock(step.target)
                delta = movement(step.entry_type, status, 1)
                released = before + delta + -after
                # What leaves the holding figures is either released or shipped.
                assert released.reserved == 0
                assert released.committed == 0
                assert released.unavailable == 0
                assert released.on_hand == (-1 if step.target is F else 0)


def test_allocate_then_release_nets_to_zero() -> None:
    for from_status, first in ((P, Delta(reserved=3)), (C, Delta(committed=3))):
        assert (first + movement(EntryType.ORDER_RELEASE, from_status, 3)).is_zero


def test_holds_stock() -> None:
    assert holds_stock(P) == Delta(reserved=1)
    assert holds_stock(C) == Delta(committed=1)
    for s in (X, E, F):
        assert holds_stock(s).is_zero


# -- quantities ----------------------------------------------------------------------


def test_delta_arithmetic() -> None:
    d = Delta(1, 2, 3, 4)
    assert -d == Delta(-1, -2, -3, -4)
    assert d + Delta(1, 1, 1, 1) == Delta(2, 3, 4, 5)
    assert (d + -d).is_zero
    assert Delta().is_zero
    for field in ("on_hand", "unavailable", "reserved", "committed"):
        assert not Delta(**{field: 1}).is_zero


def test_figures_available_and_shortfall() -> None:
    f = Figures(on_hand=10, unavailable=1, reserved=2, committed=3)
    assert (f.net, f.available, f.shortfall) == (4, 4, 0)
    exact = Figures(on_hand=6, unavailable=1, reserved=2, committed=3)
    assert (exact.net, exact.available, exact.shortfall) == (0, 0, 0)
    short = Figures(on_hand=2, unavailable=1, reserved=2, committed=3)
    assert (short.net, short.available, short.shortfall) == (-4, 0, 4)


def test_figures_apply_and_validity() -> None:
    f = Figures(5, 0, 0, 0).apply(Delta(reserved=3))
    assert f == Figures(5, 0, 3, 0)
    assert f.apply(Delta(reserved=-3, committed=3)) == Figures(5, 0, 0, 3)
    assert f.is_valid
    assert not f.apply(Delta(on_hand=-6)).is_valid
    assert not Figures(0, -1, 0, 0).is_valid
    assert Figures(1, 2, 3, 4) + Figures(10, 20, 30, 40) == Figures(11, 22, 33, 44)


def test_stock_level_sums_available_and_shortfall_per_batch() -> None:
    # Batch 1: net +6. Batch 2: net -4 (short). The SKU's net sum would be +2, but the
    # short batch must not eat into batch 1's sellable stock.
    level = StockLevel.of([Figures(10, 1, 2, 1), Figures(1, 0, 3, 2)])
    assert level.figures == Figures(11, 1, 5, 3)
    assert level.available == 6
    assert level.shortfall == 4
    assert level.figures.net == 2


def test_stock_level_of_nothing() -> None:
    level = StockLevel.of([])
    assert level == StockLevel(Figures(), 0, 0)


figures = st.builds(
    Figures,
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
)


@given(st.lists(figures, max_size=6))
def test_stock_level_properties(batches: list[Figures]) -> None:
    level = StockLevel.of(batches)
    assert level.figures.on_hand == sum(f.on_hand for f in batches)
    assert level.figures.unavailable == sum(f.unavailable for f in batches)
    assert level.figures.reserved == sum(f.reserved for f in batches)
    assert level.figures.committed == sum(f.committed for f in batches)
    assert level.available == sum(max(0, f.net) for f in batches)
    promised = [f.reserved + f.committed + f.oversold for f in batches]
    sellable = [max(0, f.on_hand - f.unavailable) for f in batches]
    assert level.shortfall == sum(max(0, p - s) for p, s in zip(promised, sellable, strict=True))
    # available - shortfall is the plain net, unless a batch holds back more than it has
    # on hand: those units promise nothing, so they are no shortfall (D-475).
    if all(f.on_hand >= f.unavailable for f in batches):
        assert level.available - level.shortfall == level.figures.net
    assert level.available - level.shortfall >= level.figures.net
    assert level.available >= 0
    assert level.shortfall >= 0
    assert level.available >= level.figures.available


@given(figures)
def test_figures_available_shortfall_exclusive(f: Figures) -> None:
    assert f.available == max(0, f.on_hand - f.unavailable - f.reserved - f.committed)
    assert f.available * f.shortfall == 0
    assert f.shortfall == max(0, f.reserved + f.committed - max(0, f.on_hand - f.unavailable))
    if f.on_hand >= f.unavailable:
        assert f.available - f.shortfall == f.net
