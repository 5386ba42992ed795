"""The store's own errors: what a caller of a repository may catch.

Repositories translate driver errors at this edge (``translated`` on each function, or
``translating()`` around a block), so no service imports asyncpg: a service asks "was
this a deadlock?" or "would a figure go negative?", not "which SQLSTATE came back?".
The driver's exception stays attached as ``__cause__`` for the logs.

Everything raised here is a :class:`StoreError`; anything the driver raises that has no
better name becomes a plain ``StoreError``. Errors that are not the driver's (a
``DomainError`` from a callback, a cancellation) pass through untouched.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

import asyncpg


class StoreError(Exception):
    """A statement failed in PostgreSQL or on the way to it."""

    def __init__(self, message: str, *, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class StoreUnavailable(StoreError):
    """The database cannot be reached: the connection was lost, refused or is shutting
    down. Retrying later, on a fresh connection, may succeed."""


class TransactionLost(StoreError):
    """PostgreSQL rolled this transaction (or savepoint) back to break a conflict with
    a concurrent one; running it again may succeed."""


class Deadlock(TransactionLost):
    """Two transactions waited on each other; this one was picked to give way."""


class SerializationFailed(TransactionLost):
    """A repeatable-read or serializable transaction saw a concurrent change."""


class UniqueViolated(StoreError):
    """A row with the same key is already there (``constraint`` names the key)."""


class CheckViolated(StoreError):
    """A row broke a CHECK constraint (``constraint`` names it)."""


class WouldGoNegative(CheckViolated):
    """A stock figure (on hand, unavailable, reserved, committed, oversold) would drop below 0."""


# The non-negative checks on the figures: sku_batch_on_hand_check and the like.
_FIGURE_CHECK = re.compile(r"_(on_hand|unavailable|reserved|committed|oversold)_check$")

_UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,  # includes ConnectionDoesNotExistError
    ConnectionError,  # refused, reset, broken pipe: the socket under the driver
)

_DRIVER: tuple[type[Exception], ...] = (asyncpg.PostgresError, *_UNAVAILABLE)


def _lost_mid_operation(exc: BaseException) -> bool:
    """asyncpg's answer when a connection whose server went away mid-statement (a
    FATAL, then the socket closing) is used again before the close is read: "cannot
    switch to state 12; another operation (2) is in progress", state 2 being the
    consumption of that error (asyncpg issue 1069). The connection is lost, not misused:
    the pool replaces it once the close arrives (D-474)."""
    return isinstance(exc, asyncpg.InternalClientError) and "another operation" in str(exc)


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, _UNAVAILABLE) or _lost_mid_operation(exc)


def translate(exc: BaseException) -> StoreError | None:
    """The store's error for a driver error, or None for one that is not the driver's."""
    if isinstance(exc, StoreError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, asyncpg.DeadlockDetectedError):
        return Deadlock(message)
    if isinstance(exc, asyncpg.SerializationError):
        return SerializationFailed(message)
    if isinstance(exc, asyncpg.UniqueViolationError):
        return UniqueViolated(message, constraint=exc.constraint_name)
    if isinstance(exc, asyncpg.CheckViolationError):
        name = exc.constraint_name or ""
        kind = WouldGoNegative if _FIGURE_CHECK.search(name) else CheckViolated
        return kind(message, constraint=exc.constraint_name)
    if _unavailable(exc):
        return StoreUnavailable(message)
    if isinstance(exc, asyncpg.PostgresError):
        return StoreError(message, constraint=getattr(exc, "constraint_name", None))
    return None


def cannot_connect(exc: BaseException) -> bool:
    """Whether ``exc`` says the database did not answer a connection: refused, reset,
    timed out, a name that does not resolve, a server starting or shutting down. Unlike
    :func:`is_unavailable`, any other ``OSError`` (a file's permission, say) is not."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, (StoreUnavailable, TimeoutError, socket.gaierror)):
            return True
        if _unavailable(seen):
            return True
        seen = seen.__cause__
    return False


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database could not be reached (a refused or lost
    connection, a server shutting down, a closed pool) rather than that a statement
    failed: what a loop waits out instead of counting as a failure. Looks through
    ``__cause__``, where a translated or wrapped driver error keeps the original."""
    seen: BaseException | None = exc
    for _ in range(5):  # a chain of causes is short; never loop on a cycle
        if seen is None:
            return False
        if isinstance(seen, (StoreUnavailable, OSError)) or _unavailable(seen):
            return True
        seen = seen.__cause__
    return False


@contextmanager
def translating() -> Iterator[None]:
    """Run a block of statements; a driver error leaves it as the store's own."""
    try:
        yield
    except _DRIVER as exc:
        mine = translate(exc)
        assert mine is not None
        raise mine from exc
    except asyncpg.InternalClientError as exc:
        if not _lost_mid_operation(exc):
            raise  # the driver's own bug or ours: not to be waited out
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


P = ParamSpec("P")
R = TypeVar("R")


def translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A repository function whose driver errors come out as the store's own."""

    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with translating():
            return await fn(*args, **kwargs)

    return run
