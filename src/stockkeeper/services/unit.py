"""Transactions for use cases, and the pieces every stock change shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from stockkeeper.domain.events import Event, LevelChange, level_events
from stockkeeper.domain.reservation import EntryType
from stockkeeper.store import outbox, stock
from stockkeeper.store.pool import Conn, Pool
from stockkeeper.store.stock import Movement, SkuLevel

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def transaction(pool: Pool, conn: Conn | None = None) -> AsyncIterator[Conn]:
    """A transaction of our own, or a savepoint inside the caller's.

    Passing ``conn`` lets a caller put several use cases in one transaction (a batch
    of reservations, or an Idempotency-Key record with the effect it guards); each
    use case still fails alone, rolled back to its savepoint.
    """
    if conn is not None:
        async with conn.transaction():
            yield conn
        return
    async with pool.acquire() as own, own.transaction():
        yield own


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
) -> dict[str, SkuLevel]:
    """After the batch rows have moved: the ledger, the SKU versions, the events.

    All in the caller's transaction, so the stock, its history and the news of it
    commit together or not at all. ``levels_per_message`` above 0 (a bulk change: a sync
    page, a WMS snapshot): the new levels of several SKUs travel as
    ``inventory.levels_changed`` messages of up to that many SKUs (D-220); 0: one
    ``inventory.level_changed`` per SKU.
    """
    await stock.insert_ledger(
        conn,
        movements,
        entry_type=entry_type,
        source=source,
        reference_id=reference_id,
        reason=reason,
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
) -> dict[str, SkuLevel]:
    """The second half of :func:`record_change`, for a caller that wrote the batches and
    their ledger entries itself (the set-based level statement of an ingest page): the
    SKUs' versions bumped, their new levels read and written to the outbox as events."""
    if not skus:
        await outbox.add(conn, list(events))
        return {}
    await stock.bump_skus(conn, skus)
    levels = await stock.sku_levels(conn, skus, now)
    changes = [
        LevelChange(sku, levels[sku].version, levels[sku].level, entry_type.value, source)
        for sku in sorted(levels)
    ]
    await outbox.add(conn, [*events, *level_events(changes, levels_per_message)])
    return levels
