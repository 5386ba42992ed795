"""Ingestion rules: absolute levels from a source of truth, and sales from a channel.

Pure: the ingest worker reads the batches, asks these functions how they move, and
writes what they return.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from stockkeeper.domain.allocation import BatchStock
from stockkeeper.domain.quantities import Delta


@dataclass(frozen=True, slots=True)
class Level:
    """A source says: this SKU has ``on_hand`` at ``location``, as of ``updated_at``."""

    connector: str
    sku: str
    location: str
    on_hand: int
    updated_at: datetime
    price: Decimal | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.sku, self.location)


@dataclass(frozen=True, slots=True)
class Sale:
    """A channel sold (negative delta) or took back (positive) units, once per id."""

    source: str
    transaction_id: str
    sku: str
    delta: int


def newest_per_key(levels: list[Level]) -> list[Level]:
    """One level per (sku, location): the newest (the later one given wins a tie)."""
    best: dict[tuple[str, str], Level] = {}
    for lv in levels:
        seen = best.get(lv.key)
        if seen is None or lv.updated_at >= seen.updated_at:
            best[lv.key] = lv
    return [best[k] for k in sorted(best)]


def level_moves(batches: list[BatchStock], target: int) -> list[tuple[int, Delta]]:
    """How ``on_hand`` at one location becomes ``target``.

    A source that counts per SKU and location knows nothing of our lots. More units go
    to the batch without a lot (``batches[0]`` must be it); fewer come from it first,
    then from the lots that expire last, so the lots sold first keep their units.
    The level is the whole truth of the place: units oversold there are settled by it
    (D-120), as a count replaces a negative figure.
    """
    moves: dict[int, Delta] = {}
    current = sum(b.figures.on_hand for b in batches)
    change = target - current
    if change > 0:
        moves[batches[0].id] = Delta(on_hand=change)
    need = max(0, -change)
    lotless, lots = batches[0], batches[1:]
    for b in [lotless, *sorted(lots, key=_expiry_desc)]:
        if not need:
            break
        take = min(need, b.figures.on_hand)
        if take:
            moves[b.id] = Delta(on_hand=-take)
            need -= take
    for b in batches:
        if b.figures.oversold:
            moves[b.id] = moves.get(b.id, Delta()) + Delta(oversold=-b.figures.oversold)
    return list(moves.items())


def home_batch(batches: list[BatchStock]) -> BatchStock:
    """Where a SKU's units without a lot live: its lotless batch at the default location
    if it has one, else its first lotless batch, else its first batch."""
    return min(batches, key=lambda b: (b.lot_number is not None, b.location != "default", b.id))


def sale_return_moves(batches: list[BatchStock], units: int) -> list[tuple[int, Delta]]:
    """Units a channel took back (a return, a cancelled order). They first cancel units
    it had oversold (no longer owed to anyone); the rest go back on the shelf of the
    lotless batch at the default location, which must exist."""
    moves: dict[int, Delta] = {}
    left = units
    for b in sorted(batches, key=lambda b: b.id):
        n = min(left, b.figures.oversold)
        if n:
            moves[b.id] = Delta(oversold=-n)
            left -= n
    if left:
        home = next(b for b in batches if b.location == "default" and b.lot_number is None)
        moves[home.id] = moves.get(home.id, Delta()) + Delta(on_hand=left)
    return sorted(moves.items())


def _expiry_desc(b: BatchStock) -> tuple[bool, float, int]:
    # Lots without expiry first, then latest expiry first; ties by newest batch.
    if b.expires_at is None:
        return (False, 0.0, -b.id)
    return (True, -b.expires_at.timestamp(), -b.id)


def sale_moves(
    batches: list[BatchStock], units: int, now: datetime
) -> tuple[list[tuple[int, Delta]], int]:
    """Take ``units`` sold elsewhere out of on_hand; return the moves and what on_hand
    could not cover (the caller books it as oversold, D-120).

    The channel has already sold them, so nothing is refused: sellable units go first
    (earliest expiry first, as we would allocate), then units held for our own orders
    (which leaves a shortfall), never below zero on any batch.
    """
    left = units
    moves: dict[int, int] = {}

    def take(b: BatchStock, most: int) -> None:
        nonlocal left
        n = min(left, most - moves.get(b.id, 0))
        if n > 0:
            moves[b.id] = moves.get(b.id, 0) + n
            left -= n

    sellable = [b for b in batches if b.expires_at is None or b.expires_at > now]
    for b in sorted(sellable, key=lambda b: (b.expires_at is None, b.expires_at or now, b.id)):
        take(b, max(0, b.figures.available))
    for b in sorted(batches, key=lambda b: b.id):
        take(b, b.figures.on_hand)
    return [(bid, Delta(on_hand=-n)) for bid, n in sorted(moves.items())], left


@dataclass(frozen=True, slots=True)
class PricingRule:
    """Our price from a source's: a markup in percent, rounded to a step."""

    markup_percent: Decimal = Decimal(0)
    round_to: Decimal = Decimal("0.01")

    def price(self, source_price: Decimal) -> Decimal:
        raw = source_price * (1 + self.markup_percent / 100)
        steps = (raw / self.round_to).quantize(Decimal(1), rounding=ROUND_HALF_UP)
        return steps * self.round_to
