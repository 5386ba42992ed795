"""The audit's read queries: one per clause of the stock invariant (ARCHITECTURE 3).

Run them in one repeatable-read transaction (the caller's) to see one snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockkeeper.domain.quantities import Figures
from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class Counts:
    batches: int
    ledger_entries: int
    reservations: int


@dataclass(frozen=True, slots=True)
class LedgerMismatch:
    """A batch whose figures are not the sums of its ledger deltas."""

    batch_id: int
    sku: str
    figures: Figures
    ledger: Figures


@dataclass(frozen=True, slots=True)
class ReservationMismatch:
    """A batch whose reserved and committed are not the sums of its open lines."""

    batch_id: int
    sku: str
    reserved: int
    committed: int
    open_reserved: int
    open_committed: int


@dataclass(frozen=True, slots=True)
class NegativeBatch:
    batch_id: int
    sku: str
    figures: Figures


@translated
async def counts(conn: Conn) -> Counts:
    r = await conn.fetchrow(q("audit_counts"))
    assert r is not None
    return Counts(r["batches"], r["ledger_entries"], r["reservations"])


@translated
async def ledger_mismatches(conn: Conn) -> list[LedgerMismatch]:
    return [
        LedgerMismatch(
            r["id"],
            r["sku"],
            Figures(r["on_hand"], r["unavailable"], r["reserved"], r["committed"], r["oversold"]),
            Figures(
                r["l_on_hand"],
                r["l_unavailable"],
                r["l_reserved"],
                r["l_committed"],
                r["l_oversold"],
            ),
        )
        for r in await conn.fetch(q("audit_ledger_mismatch"))
    ]


@translated
async def reservation_mismatches(conn: Conn) -> list[ReservationMismatch]:
    return [
        ReservationMismatch(
            r["id"],
            r["sku"],
            r["reserved"],
            r["committed"],
            r["open_reserved"],
            r["open_committed"],
        )
        for r in await conn.fetch(q("audit_reservation_mismatch"))
    ]


@translated
async def negative_batches(conn: Conn) -> list[NegativeBatch]:
    return [
        NegativeBatch(
            r["id"],
            r["sku"],
            Figures(r["on_hand"], r["unavailable"], r["reserved"], r["committed"], r["oversold"]),
        )
        for r in await conn.fetch(q("audit_negative"))
    ]
