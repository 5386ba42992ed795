"""The reservation state machine and the stock movements each step makes.

    PENDING --confirm--> CONFIRMED --fulfil--> FULFILLED
       |                    |
       +--release--> CANCELLED <--release--+
       +--expire---> EXPIRED

Steps are idempotent where a client may safely retry them: releasing a released or
expired reservation, confirming a confirmed one, fulfilling a fulfilled one all answer
"no change". Everything else that is not an arrow above is a conflict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from stockkeeper.domain.errors import Conflict, ReservationExpired
from stockkeeper.domain.quantities import Delta


class Status(StrEnum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    FULFILLED = "FULFILLED"


class Action(StrEnum):
    RELEASE = "release"
    CONFIRM = "confirm"
    FULFIL = "fulfil"
    EXPIRE = "expire"


class EntryType(StrEnum):
    """Ledger entry types."""

    RECEIPT = "RECEIPT"
    ORDER_ALLOCATE = "ORDER_ALLOCATE"
    ORDER_RELEASE = "ORDER_RELEASE"
    ORDER_CONFIRM = "ORDER_CONFIRM"
    ORDER_EXPIRE = "ORDER_EXPIRE"
    FULFIL = "FULFIL"
    ADJUSTMENT = "ADJUSTMENT"
    SALE = "SALE"


@dataclass(frozen=True, slots=True)
class Step:
    """What to do: move to ``target``, or nothing when ``target`` is None."""

    target: Status | None
    entry_type: EntryType | None = None
    expired_first: bool = False


NO_CHANGE = Step(None)


def is_overdue(status: Status, expires_at: datetime, now: datetime) -> bool:
    return status is Status.PENDING and expires_at <= now


def plan(action: Action, status: Status, expires_at: datetime, now: datetime) -> Step:
    """Decide the step for ``action`` on a reservation in ``status``.

    A PENDING reservation past its expiry is treated as expired even if the expiry
    worker has not swept it yet: confirming it raises ReservationExpired (the caller
    expires it first, see ``Step.expired_first``), releasing it expires it.
    """
    overdue = is_overdue(status, expires_at, now)
    if action is Action.EXPIRE:
        if overdue:
            return Step(Status.EXPIRED, EntryType.ORDER_EXPIRE)
        return NO_CHANGE
    if action is Action.RELEASE:
        if overdue:
            return Step(Status.EXPIRED, EntryType.ORDER_EXPIRE)
        if status in (Status.PENDING, Status.CONFIRMED):
            return Step(Status.CANCELLED, EntryType.ORDER_RELEASE)
        if status in (Status.CANCELLED, Status.EXPIRED):
            return NO_CHANGE
        raise Conflict(f"a {status} reservation cannot be released")
    if action is Action.CONFIRM:
        if overdue:
            return Step(Status.EXPIRED, EntryType.ORDER_EXPIRE, expired_first=True)
        if status is Status.PENDING:
            return Step(Status.CONFIRMED, EntryType.ORDER_CONFIRM)
        if status is Status.CONFIRMED:
            return NO_CHANGE
        if status is Status.EXPIRED:
            raise ReservationExpired("the reservation expired before it was confirmed")
        raise Conflict(f"a {status} reservation cannot be confirmed")
    # FULFIL
    if status is Status.CONFIRMED:
        return Step(Status.FULFILLED, EntryType.FULFIL)
    if status is Status.FULFILLED:
        return NO_CHANGE
    if overdue or status is Status.EXPIRED:
        raise ReservationExpired("the reservation expired before it was confirmed")
    raise Conflict(f"a {status} reservation cannot be fulfilled; confirm it first")


def movement(entry_type: EntryType, from_status: Status, quantity: int) -> Delta:
    """The delta one allocation of ``quantity`` makes on its batch for this step."""
    if entry_type is EntryType.ORDER_ALLOCATE:
        return Delta(reserved=quantity)
    if entry_type is EntryType.ORDER_CONFIRM:
        return Delta(reserved=-quantity, committed=quantity)
    if entry_type is EntryType.FULFIL:
        return Delta(on_hand=-quantity, committed=-quantity)
    if entry_type in (EntryType.ORDER_RELEASE, EntryType.ORDER_EXPIRE):
        if from_status is Status.CONFIRMED:
            return Delta(committed=-quantity)
        return Delta(reserved=-quantity)
    raise ValueError(f"{entry_type} is not a reservation movement")


def holds_stock(status: Status) -> Delta:
    """Which figure an allocation of one unit occupies while in ``status``."""
    if status is Status.PENDING:
        return Delta(reserved=1)
    if status is Status.CONFIRMED:
        return Delta(committed=1)
    return Delta()
