"""Who owns a transaction: whether a piece of work has its connection's transaction to
itself, and running a whole transaction once more when the work asks for it.

A use case alone in its transaction may write without a savepoint: when it loses a race
there, whoever opened the transaction rolls all of it back and runs it again, once,
under :func:`retried` (D-301). The services' ``transaction()`` marks its use cases alone
where they are; the consumer runner marks the effect of a message alone in the
transaction it opened for that message (:func:`owned`, D-370). Both sides live above
``store/``, so the marks live here, beside the connections they are about (D-411).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from typing import TypeVar

from stockkeeper.store.pool import Conn

T = TypeVar("T")


class RetryTransaction(Exception):
    """A use case alone in its transaction lost a race in a write it ran without a
    savepoint (``alone``): roll the whole transaction back and run it again, once, with
    ``retrying()`` true, when the use case takes its savepoints as before (D-301)."""


# The connection whose innermost transaction block is the whole transaction, the use
# case alone in it: a failure there may abandon all of it, so no savepoint is needed.
_alone: ContextVar[Conn | None] = ContextVar("stockkeeper_alone", default=None)
_retrying: ContextVar[bool] = ContextVar("stockkeeper_retrying", default=False)


def alone(conn: Conn) -> bool:
    """Whether the current use case has ``conn``'s transaction to itself and whoever owns
    it rolls all of it back when the use case fails or raises ``RetryTransaction``."""
    return _alone.get() is conn and not _retrying.get()


def retrying() -> bool:
    """Whether this is the second run of a transaction whose first asked to be retried."""
    return _retrying.get()


@contextmanager
def alone_in(conn: Conn | None) -> Iterator[None]:
    """Inside: ``conn``'s transaction is the current use case's alone (None: the use case
    shares its transaction, so no connection is)."""
    token = _alone.set(conn)
    try:
        yield
    finally:
        _alone.reset(token)


@asynccontextmanager
async def owned(conn: Conn) -> AsyncIterator[Conn]:
    """Inside: the work runs in ``conn``'s transaction as a use case alone in it (its
    ``alone(conn)`` is true): the caller, who opened that transaction, rolls all of it
    back when the work raises, and runs it again under ``retried`` when it raises
    ``RetryTransaction``. The consumer runner's transaction of one message (D-370)."""
    with alone_in(conn):
        yield conn


async def retried(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` (a whole transaction); once more, retrying, if it asks to."""
    try:
        return await attempt()
    except RetryTransaction:
        token = _retrying.set(True)
        try:
            return await attempt()
        finally:
            _retrying.reset(token)
