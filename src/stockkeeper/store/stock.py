"""Repository for SKUs, batches, the ledger and per-SKU levels.

Functions take a connection inside the caller's transaction; none opens its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from stockkeeper.domain.allocation import Allocation, BatchStock, LineAllocation
from stockkeeper.domain.quantities import Delta, Figures, StockLevel
from stockkeeper.domain.reservation import EntryType
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class Movement:
    """One ledger entry: a delta on one batch; ``reference_id`` overrides the default."""

    batch_id: int
    sku: str
    delta: Delta
    reference_id: str | None = None


@dataclass(frozen=True, slots=True)
class SkuLevel:
    sku: str
    version: int
    updated_at: datetime
    level: StockLevel


def figures_from_row(r: asyncpg.Record) -> Figures:
    return Figures(r["on_hand"], r["unavailable"], r["reserved"], r["committed"], r["oversold"])


def batch_from_row(r: asyncpg.Record) -> BatchStock:
    return BatchStock(
        id=r["id"],
        sku=r["sku"],
        location=r["location"],
        lot_number=r["lot_number"],
        expires_at=r["expires_at"],
        figures=figures_from_row(r),
        version=r["version"],
    )


@translated
async def ensure_sku(conn: Conn, sku: str) -> None:
    await conn.execute(q("ensure_sku"), sku)


@translated
async def known_skus(conn: Conn, skus: Sequence[str]) -> set[str]:
    return {r["sku"] for r in await conn.fetch(q("sku_exists"), list(skus))}


@translated
async def known_locations(conn: Conn, codes: Iterable[str]) -> set[str]:
    return {r["code"] for r in await conn.fetch(q("location_exists"), sorted(set(codes)))}


@translated
async def ensure_location(conn: Conn, code: str) -> None:
    await conn.execute(q("ensure_location"), code)


@translated
async def ensure_skus(conn: Conn, skus: Iterable[str]) -> None:
    """Create the SKUs not known yet (in name order, so two callers wait in order)."""
    await conn.execute(q("ensure_skus"), sorted(set(skus)))


@translated
async def ensure_locations(conn: Conn, codes: Iterable[str]) -> None:
    await conn.execute(q("ensure_locations"), sorted(set(codes)))


@translated
async def add_lotless_batches(conn: Conn, places: Iterable[tuple[str, str]]) -> None:
    """Create an empty batch without lot or expiry at each (sku, location) that has none."""
    ordered = sorted(set(places))
    if not ordered:
        return
    await conn.execute(
        q("insert_missing_batches"),
        [sku for sku, _ in ordered],
        [loc for _, loc in ordered],
        [None] * len(ordered),
        [None] * len(ordered),
    )


@translated
async def upsert_batch(
    conn: Conn,
    sku: str,
    location: str,
    lot_number: str | None,
    expires_at: datetime | None,
) -> tuple[int, datetime | None]:
    row = await conn.fetchrow(q("upsert_batch"), sku, location, lot_number, expires_at)
    assert row is not None
    return row["id"], row["expires_at"]


@translated
async def receive_start(
    conn: Conn,
    reference_id: str,
    request_hash: str,
    sku: str,
    location: str,
    lot_number: str | None,
    expires_at: datetime | None,
    quantity: int,
) -> tuple[int, datetime | None, int] | None:
    """A receipt's claim of its reference, its SKU, location and batch, and the units
    added to the batch, in one round trip: the batch's id and expiry and the units the
    SKU owes on its other batches (D-485), or None when the reference was already
    claimed (nothing written)."""
    row = await conn.fetchrow(
        q("receive_start"),
        reference_id,
        request_hash,
        sku,
        location,
        lot_number,
        expires_at,
        quantity,
    )
    assert row is not None
    if not row["claimed"]:
        return None
    return row["id"], row["expires_at"], int(row["owed"])


@translated
async def carry_oversold(conn: Conn, sku: str, batch_id: int, units: int) -> list[tuple[int, int]]:
    """Move up to ``units`` oversold units of ``sku``'s other batches onto ``batch_id``
    (D-485): (batch moved from, units) each, in id order."""
    rows = await conn.fetch(q("carry_oversold"), sku, batch_id, units)
    return [(int(r["id"]), int(r["units"])) for r in rows]


@translated
async def adjust_start(
    conn: Conn, reference_id: str, request_hash: str, sku: str
) -> list[BatchStock] | None:
    """An adjustment's claim of its reference and the lock of every batch of ``sku`` in
    id order (the global lock order), one round trip: the batches, or None when the
    reference was already claimed (nothing locked). Every batch, not only the one
    adjusted: units it frees may serve what the SKU owes on the others (D-490)."""
    rows = await conn.fetch(q("adjust_start_sku"), reference_id, request_hash, sku)
    if not rows[0]["claimed"]:
        return None
    return [batch_from_row(r) for r in rows if r["id"] is not None]


@translated
async def read_batches(conn: Conn, skus: Sequence[str], *, lock: bool = False) -> list[BatchStock]:
    rows = await conn.fetch(q("lock_batches" if lock else "read_batches"), list(skus))
    return [batch_from_row(r) for r in rows]


@translated
async def lock_batches_of(conn: Conn, skus: Iterable[str]) -> dict[int, BatchStock]:
    """Every batch of the SKUs, locked in id order (the global lock order), by id."""
    rows = await conn.fetch(q("lock_sku_batches"), sorted(set(skus)))
    return {r["id"]: batch_from_row(r) for r in rows}


@translated
async def lock_batch(conn: Conn, batch_id: int) -> BatchStock | None:
    row = await conn.fetchrow(q("lock_batch_by_id"), batch_id)
    return batch_from_row(row) if row else None


def _in_lock_order(allocations: Iterable[Allocation]) -> list[Allocation]:
    return sorted(allocations, key=lambda a: a.batch_id)


@translated
async def reserve_guarded(conn: Conn, allocations: Sequence[Allocation]) -> bool:
    """conditional: add to ``reserved`` only where enough is available. All or nothing
    is the caller's savepoint; this reports whether every batch took its part."""
    ordered = _in_lock_order(allocations)
    rows = await conn.fetchmany(q("reserve_guarded"), [(a.batch_id, a.quantity) for a in ordered])
    return len(rows) == len(ordered)


@translated
async def reserve_cas(conn: Conn, allocations: Sequence[Allocation]) -> bool:
    """optimistic: add to ``reserved`` only where the batch version is unchanged."""
    ordered = _in_lock_order(allocations)
    rows = await conn.fetchmany(
        q("reserve_cas"), [(a.batch_id, a.quantity, a.batch_version) for a in ordered]
    )
    return len(rows) == len(ordered)


@translated
async def apply_movements(
    conn: Conn, movements: Sequence[Movement], *, already_locked: bool = False
) -> None:
    """Apply deltas in batch-id order (the global lock order).

    ``already_locked``: this transaction holds every row's lock already (a sync page),
    so one set-based UPDATE does it, in whatever order the join visits them.
    """
    merged: dict[int, Delta] = {}
    for m in movements:
        merged[m.batch_id] = merged.get(m.batch_id, Delta()) + m.delta
    args = [
        (bid, d.on_hand, d.unavailable, d.reserved, d.committed, d.oversold)
        for bid, d in sorted(merged.items())
        if not d.is_zero
    ]
    if not args:
        return
    if already_locked and len(args) > 1:
        await conn.execute(q("apply_deltas_locked"), *map(list, zip(*args, strict=True)))
    else:
        await conn.executemany(q("apply_delta"), args)


def ledger_columns(
    rows: Sequence[Movement],
    entry_type: EntryType,
    source: str,
    reference_id: str | None,
    reason: str | None,
) -> list[list[object]]:
    n = len(rows)
    return [
        [m.batch_id for m in rows],
        [m.sku for m in rows],
        [entry_type.value] * n,
        [m.delta.on_hand for m in rows],
        [m.delta.unavailable for m in rows],
        [m.delta.reserved for m in rows],
        [m.delta.committed for m in rows],
        [source] * n,
        [m.reference_id or reference_id for m in rows],
        [reason] * n,
        [m.delta.oversold for m in rows],
    ]


@translated
async def insert_ledger(
    conn: Conn,
    movements: Sequence[Movement],
    *,
    entry_type: EntryType,
    source: str,
    reference_id: str | None,
    reason: str | None = None,
) -> None:
    rows = [m for m in movements if not m.delta.is_zero]
    if not rows:
        return
    await conn.execute(
        q("insert_ledger"), *ledger_columns(rows, entry_type, source, reference_id, reason)
    )


@translated
async def ledger_and_bump(
    conn: Conn,
    movements: Sequence[Movement],
    *,
    entry_type: EntryType,
    source: str,
    reference_id: str | None,
    reason: str | None = None,
    reservation_lines: tuple[int, Sequence[LineAllocation]] | None = None,
) -> dict[str, int]:
    """``insert_ledger`` then ``bump_skus`` of the SKUs that moved, in one round trip;
    with ``reservation_lines`` (a new reservation's id and lines) those lines too.
    Returns the SKUs' new versions."""
    rows = [m for m in movements if not m.delta.is_zero]
    skus = sorted({m.sku for m in rows})
    cols = ledger_columns(rows, entry_type, source, reference_id, reason)
    if reservation_lines is None:
        if not rows:
            return {}
        found = await conn.fetch(q("ledger_and_bump"), *cols, skus)
    else:
        rid, lines = reservation_lines
        allocs = [(no, a) for no, la in enumerate(lines) for a in la.allocations]
        found = await conn.fetch(
            q("lines_ledger_and_bump"),
            *cols,
            skus,
            rid,
            [no for no, _ in allocs],
            [a.sku for _, a in allocs],
            [a.batch_id for _, a in allocs],
            [a.quantity for _, a in allocs],
        )
    return {r["sku"]: r["version"] for r in found}


@translated
async def bump_skus(conn: Conn, skus: Iterable[str]) -> dict[str, int]:
    rows = await conn.fetch(q("bump_skus"), sorted(set(skus)))
    return {r["sku"]: r["version"] for r in rows}


@translated
async def lock_skus(conn: Conn, skus: Iterable[str]) -> None:
    await conn.execute(q("lock_skus"), sorted(set(skus)))


def _level_from_row(r: asyncpg.Record) -> SkuLevel:
    figures = figures_from_row(r)
    return SkuLevel(
        r["sku"],
        r["version"],
        r["updated_at"],
        StockLevel(figures, r["available"], r["shortfall"]),
    )


@translated
async def sku_levels(conn: Conn, skus: Iterable[str], now: datetime) -> dict[str, SkuLevel]:
    """Per-SKU figures; lots expired at ``now`` count for nothing in ``available``."""
    rows = await conn.fetch(q("sku_levels"), sorted(set(skus)), now)
    return {r["sku"]: _level_from_row(r) for r in rows}


@translated
async def sku_batches(conn: Conn, skus: Sequence[str]) -> list[asyncpg.Record]:
    return list(await conn.fetch(q("sku_batches"), list(skus)))


@translated
async def ledger_page(conn: Conn, sku: str, after: int, limit: int) -> list[asyncpg.Record]:
    return list(await conn.fetch(q("ledger_page"), sku, after, limit))


@translated
async def claim_expired_lots(conn: Conn, now: datetime, limit: int) -> list[BatchStock]:
    rows = await conn.fetch(q("claim_expired_lots"), now, limit)
    return [batch_from_row(r) for r in rows]
