"""Repository for what sources told us: ``source_record_version`` (the newest level per
connector, SKU and location), ``ingested_sale`` (each sale once) and ``sku_price``.

Functions take a connection inside the caller's transaction; none opens its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from stockkeeper.domain.ingest import Level, Sale
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@translated
async def record_newer_levels(
    conn: Conn, connector: str, levels: Sequence[Level]
) -> set[tuple[str, str]]:
    """Record the levels newer than what ``connector`` last told us; the (sku, location)
    keys of those recorded, which are the ones to apply."""
    if not levels:
        return set()
    rows = await conn.fetch(
        q("guard_levels"),
        connector,
        [lv.sku for lv in levels],
        [lv.location for lv in levels],
        [lv.updated_at for lv in levels],
        [lv.on_hand for lv in levels],
    )
    return {(r["sku"], r["location"]) for r in rows}


@translated
async def claim_sales(conn: Conn, sales: Sequence[Sale]) -> set[tuple[str, str]]:
    """Record each sale once; the (source, transaction_id) keys of those new here."""
    if not sales:
        return set()
    rows = await conn.fetch(
        q("claim_sales"),
        [s.source for s in sales],
        [s.transaction_id for s in sales],
        [s.sku for s in sales],
        [s.delta for s in sales],
    )
    return {(r["source"], r["transaction_id"]) for r in rows}


@translated
async def set_unbooked(conn: Conn, source: str, transaction_id: str, units: int) -> None:
    """Note the units of a sale no batch had on hand to take."""
    await conn.execute(q("set_unbooked"), source, transaction_id, units)


@translated
async def set_unbooked_many(conn: Conn, rows: Sequence[tuple[str, str, int]]) -> None:
    """:func:`set_unbooked` for (source, transaction_id, units) each, in one statement."""
    if not rows:
        return
    sources, ids, units = (list(c) for c in zip(*rows, strict=True))
    await conn.execute(q("set_unbooked_many"), sources, ids, units)


@translated
async def save_prices(
    conn: Conn,
    connector: str,
    rows: Sequence[tuple[str, Decimal, Decimal, datetime]],
) -> None:
    """(sku, source price, our price, source time) per SKU; a newer source time wins."""
    if not rows:
        return
    skus, source_prices, prices, stamps = (list(c) for c in zip(*rows, strict=True))
    await conn.execute(q("upsert_prices"), connector, skus, source_prices, prices, stamps)


@dataclass(frozen=True, slots=True)
class PlainLevels:
    """What :func:`apply_plain_levels` did: the SKUs whose batch moved, the units of
    shortfall the levels added, and the places with lots it left to the caller."""

    moved: set[str]
    oversell: int
    with_lots: set[tuple[str, str]]


@translated
async def create_level_batches(
    conn: Conn,
    levels: Sequence[Level],
    *,
    source: str,
    reference_id: str,
    reason: str,
) -> set[str]:
    """Each level at a place without any batch creates the place's lotless batch holding
    it, with its ledger entry (one statement); the SKUs whose new batch holds units."""
    if not levels:
        return set()
    rows = await conn.fetch(
        q("create_level_batches"),
        [lv.sku for lv in levels],
        [lv.location for lv in levels],
        [lv.on_hand for lv in levels],
        source,
        reference_id,
        reason,
    )
    return {r["sku"] for r in rows}


@translated
async def lock_batches(conn: Conn, skus: Iterable[str]) -> None:
    """Lock every batch of the SKUs in id order (the global lock order), reading nothing."""
    await conn.execute(q("lock_sku_batches_quietly"), sorted(set(skus)))


@translated
async def apply_plain_levels(
    conn: Conn,
    levels: Sequence[Level],
    *,
    source: str,
    reference_id: str,
    reason: str,
) -> PlainLevels:
    """Set-based level arithmetic (one statement): each level at a place whose only batch
    is the lotless one becomes that batch's on_hand, with its ledger entry; places with
    lots are returned untouched. The caller holds the batches' locks."""
    if not levels:
        return PlainLevels(set(), 0, set())
    rows = await conn.fetch(
        q("apply_plain_levels"),
        [lv.sku for lv in levels],
        [lv.location for lv in levels],
        [lv.on_hand for lv in levels],
        source,
        reference_id,
        reason,
    )
    moved = {r["sku"] for r in rows if r["kind"] == "moved"}
    oversell = sum(r["oversell"] for r in rows if r["kind"] == "moved")
    lots = {(r["sku"], r["location"]) for r in rows if r["kind"] == "lots"}
    return PlainLevels(moved, oversell, lots)
