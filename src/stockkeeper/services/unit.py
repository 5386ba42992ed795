"""Transactions for use cases, and the pieces every stock change shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stockkeeper.domain.allocation import LineAllocation
from stockkeeper.domain.events import Event, LevelChange, level_events
from stockkeeper.domain.reservation import EntryType
from stockkeeper.store import outbox, stock
from stockkeeper.store.idempotency import KeyRecord
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.store.stock import Movement, SkuLevel
from stockkeeper.store.transactions import alone_in

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class _Solo:
    """A transaction that runs one use case only, owned by a caller (``solo``): the
    Idempotency-Key's. ``held``: the use case's events, not written yet (``add_events``);
    the owner writes them with the key, in one statement (D-365)."""

    conn: Conn
    entered: bool = False
    failed: bool = False
    held: list[Event] = field(default_factory=list)


_solo: ContextVar[_Solo | None] = ContextVar("stockkeeper_solo", default=None)


@asynccontextmanager
async def solo(conn: Conn) -> AsyncIterator[_Solo]:
    """Inside: the first use case that opens ``transaction(pool, conn)`` runs in
    ``conn``'s transaction itself, with no savepoint; ``failed`` tells the owner an
    error left that block, so it must roll the whole transaction back (D-302). The
    events the use case writes on ``conn`` wait in ``held`` for the owner (D-365)."""
    state = _Solo(conn)
    token = _solo.set(state)
    try:
        yield state
    finally:
        _solo.reset(token)


@dataclass(slots=True)
class _KeyInStatement:
    """An Idempotency-Key for a use case of one statement and no transaction (orders'
    ``place``): that statement writes the key, with the answer ``record`` renders from
    the use case's result as it will be, and its effect (D-366)."""

    conn: Conn
    record: Callable[[object], KeyRecord]
    written: bool = False


_key_in_statement: ContextVar[_KeyInStatement | None] = ContextVar(
    "stockkeeper_key_in_statement", default=None
)


@asynccontextmanager
async def key_in_statement(
    conn: Conn, record: Callable[[object], KeyRecord]
) -> AsyncIterator[_KeyInStatement]:
    """Inside: a use case of one statement on ``conn`` may write the key itself
    (``key_for``, ``key_written``); ``written`` tells the owner it did."""
    state = _KeyInStatement(conn, record)
    token = _key_in_statement.set(state)
    try:
        yield state
    finally:
        _key_in_statement.reset(token)


def key_for(conn: Conn, result: Callable[[], object]) -> KeyRecord | None:
    """The Idempotency-Key row to write in the use case's one statement, its answer
    rendered from ``result()`` (what the use case returns if the statement applies its
    effect), or None when no key is waiting for it (D-366). The statement writes it only
    with the effect, and fails, writing nothing, if another request holds the key."""
    state = _key_in_statement.get()
    if state is None or state.conn is not conn:
        return None
    return state.record(result())


def key_written(conn: Conn) -> None:
    """The use case's statement wrote the key ``key_for`` gave it."""
    state = _key_in_statement.get()
    assert state is not None, "no key_for before it"
    assert state.conn is conn, "key_for was on another connection"
    state.written = True


@asynccontextmanager
async def transaction(pool: Pool, conn: Conn | None = None) -> AsyncIterator[Conn]:
    """A transaction of our own, or a savepoint inside the caller's.

    Passing ``conn`` lets a caller put several use cases in one transaction (a batch
    of reservations, or an Idempotency-Key record with the effect it guards); each
    use case still fails alone, rolled back to its savepoint. Under ``solo(conn)`` the
    first use case gets the caller's transaction itself, no savepoint (D-302).
    """
    if conn is not None:
        state = _solo.get()
        if state is not None and state.conn is conn and not state.entered:
            state.entered = True
            with alone_in(conn):
                try:
                    yield conn
                except BaseException:
                    state.failed = True
                    raise
            return
        # Not in a transaction yet: the one we open is the use case's alone.
        with alone_in(None if conn.is_in_transaction() else conn):
            async with savepoint(conn):
                yield conn
        return
    async with pool.acquire() as own, own.transaction():
        with alone_in(own):
            yield own


@asynccontextmanager
async def savepoint(conn: Conn) -> AsyncIterator[None]:
    """``conn.transaction()`` (a savepoint inside a transaction) for use cases: rolled
    back, it also drops the events written in it that ``add_events`` still holds, so a
    use case takes its savepoints here, never from ``conn`` itself (D-365)."""
    state = _solo.get()
    mark = len(state.held) if state is not None and state.conn is conn else None
    try:
        async with conn.transaction():
            yield
    except BaseException:
        if mark is not None and state is not None:
            del state.held[mark:]
        raise


async def add_events(conn: Conn, events: Sequence[Event]) -> None:
    """A use case's events, into the outbox in its transaction on ``conn``.

    In an Idempotency-Key's transaction (``solo``) they are held instead, in order, and
    written after the use case returns, with the key and its answer in one statement
    (``idempotency.once``, D-365): the answer is only known then, and this is the last
    statement of every use case that has events. Nothing a use case reads depends on
    its own events being in the table yet; a savepoint rolled back drops those written
    in it (``savepoint``)."""
    if not events:
        return
    state = _solo.get()
    if state is not None and state.conn is conn:
        state.held.extend(events)
        return
    await outbox.add(conn, list(events))


async def record_change(
    conn: Conn,
    movements: Sequence[Movement],
    *,
    entry_type: EntryType,
    source: str,
    reference_id: str | None,
    now: datetime,
    reason: str | None = None,
    events: Sequence[Event] = (),
    levels_per_message: int = 0,
    reservation_lines: tuple[int, Sequence[LineAllocation]] | None = None,
) -> dict[str, SkuLevel]:
    """After the batch rows have moved: the ledger, the SKU versions, the events.

    All in the caller's transaction, so the stock, its history and the news of it
    commit together or not at all. ``levels_per_message`` above 0 (a bulk change: a sync
    page, a WMS snapshot): the new levels of several SKUs travel as
    ``inventory.levels_changed`` messages of up to that many SKUs (D-220); 0: one
    ``inventory.level_changed`` per SKU. ``reservation_lines``: a new reservation's
    lines, written in the ledger's round trip.

    Three round trips: the ledger with the SKU bump (D-300), the levels, the events.
    The levels need a statement of their own: it starts after the SKU locks are held,
    so its snapshot holds every earlier version's change (``sku_levels``).
    """
    await stock.ledger_and_bump(
        conn,
        movements,
        entry_type=entry_type,
        source=source,
        reference_id=reference_id,
        reason=reason,
        reservation_lines=reservation_lines,
    )
    skus = {m.sku for m in movements if not m.delta.is_zero}
    return await announce_levels(
        conn,
        skus,
        entry_type=entry_type,
        source=source,
        now=now,
        events=events,
        levels_per_message=levels_per_message,
        bumped=True,
    )


async def announce_levels(
    conn: Conn,
    skus: set[str],
    *,
    entry_type: EntryType,
    source: str,
    now: datetime,
    events: Sequence[Event] = (),
    levels_per_message: int = 0,
    bumped: bool = False,
) -> dict[str, SkuLevel]:
    """The second half of :func:`record_change`, for a caller that wrote the batches and
    their ledger entries itself (the set-based level statement of an ingest page): the
    SKUs' versions bumped (unless ``bumped``: :func:`record_change` bumps them with the
    ledger), their new levels read and written to the outbox as events."""
    if not skus:
        await add_events(conn, events)
        return {}
    if not bumped:
        await stock.bump_skus(conn, skus)
    levels = await stock.sku_levels(conn, skus, now)
    changes = [
        LevelChange(sku, levels[sku].version, levels[sku].level, entry_type.value, source)
        for sku in sorted(levels)
    ]
    await add_events(conn, [*events, *level_events(changes, levels_per_message)])
    return levels
