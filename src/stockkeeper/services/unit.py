"""Transactions for use cases, and the pieces every stock change shares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from stockkeeper.domain.events import Event, LevelChange
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
) -> dict[str, SkuLevel]:
    """After the batch rows have moved: the ledger, the SKU versions, the events.

    All in the caller's transaction, so the stock, its history and the news of it
    commit together or not at all.
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
    if not skus:
        await outbox.add(conn, list(events))
        return {}
    await stock.bump_skus(conn, skus)
    levels = await stock.sku_levels(conn, skus, now)
    out = list(events)
    for sku in sorted(levels):
        lv = levels[sku]
        out.extend(LevelChange(sku, lv.version, lv.level, entry_type.value, source).events())
    await outbox.add(conn, out)
    return levels
