"""The quantities of a batch, in Shopify's vocabulary, and the deltas that move them."""

from __future__ import annotations

from dataclasses import dataclass

# Requests are bounded to what a signed 32-bit integer holds; stored sums are 64-bit.
MAX_QUANTITY = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Delta:
    """How much one movement changes each quantity of one batch."""

    on_hand: int = 0
    unavailable: int = 0
    reserved: int = 0
    committed: int = 0
    oversold: int = 0

    def __neg__(self) -> Delta:
        return Delta(
            -self.on_hand, -self.unavailable, -self.reserved, -self.committed, -self.oversold
        )

    def __add__(self, other: Delta) -> Delta:
        return Delta(
            self.on_hand + other.on_hand,
            self.unavailable + other.unavailable,
            self.reserved + other.reserved,
            self.committed + other.committed,
            self.oversold + other.oversold,
        )

    @property
    def is_zero(self) -> bool:
        return not (
            self.on_hand or self.unavailable or self.reserved or self.committed or self.oversold
        )


@dataclass(frozen=True, slots=True)
class Figures:
    """The stored quantities and what follows from them.

    ``available`` never goes below zero; when the physical truth reported by a WMS or
    an ERP is below what was already promised, the difference is the ``shortfall``.
    ``oversold`` is what the outside world sold beyond ``on_hand`` (D-120): units owed
    to buyers, so they count against ``available`` and in ``shortfall`` like a promise.
    Units held back (``unavailable``) beyond ``on_hand`` promise nothing to anyone, so
    alone they leave ``available`` at 0 and no shortfall (D-475).
    """

    on_hand: int = 0
    unavailable: int = 0
    reserved: int = 0
    committed: int = 0
    oversold: int = 0

    @property
    def net(self) -> int:
        return self.on_hand - self.unavailable - self.reserved - self.committed - self.oversold

    @property
    def available(self) -> int:
        return max(0, self.net)

    @property
    def promised(self) -> int:
        """Units owed to buyers: our reservations and orders, and what was oversold."""
        return self.reserved + self.committed + self.oversold

    @property
    def shortfall(self) -> int:
        """What was promised beyond the sellable stock (D-475). The SQL that reads or
        counts shortfall mirrors this: ``store/queries/inventory.sql: sku_levels``,
        ``listing.sql: list_skus``, ``ingest.sql: apply_plain_levels``,
        ``wms.sql: reconcile_counts``."""
        return max(0, self.promised - max(0, self.on_hand - self.unavailable))

    def apply(self, delta: Delta) -> Figures:
        return Figures(
            self.on_hand + delta.on_hand,
            self.unavailable + delta.unavailable,
            self.reserved + delta.reserved,
            self.committed + delta.committed,
            self.oversold + delta.oversold,
        )

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            self.on_hand + other.on_hand,
            self.unavailable + other.unavailable,
            self.reserved + other.reserved,
            self.committed + other.committed,
            self.oversold + other.oversold,
        )

    @property
    def is_valid(self) -> bool:
        """No stored figure is ever negative."""
        return (
            min(self.on_hand, self.unavailable, self.reserved, self.committed, self.oversold) >= 0
        )


def oversell(before: Figures, after: Figures) -> int:
    """Units a report from outside (a sale, a level, a count) left us short by: how much
    the batch's shortfall grew. What ``stockkeeper_oversell_total`` counts."""
    return max(0, after.shortfall - before.shortfall)


@dataclass(frozen=True, slots=True)
class StockLevel:
    """A SKU's figures: the sums over its batches.

    ``available`` and ``shortfall`` are summed per batch, not computed from the sums:
    a batch that is short does not eat into another batch's sellable stock, which is
    exactly what allocation (batch by batch) can hand out.
    """

    figures: Figures
    available: int
    shortfall: int

    @classmethod
    def of(cls, batches: list[Figures]) -> StockLevel:
        total = Figures()
        for f in batches:
            total = total + f
        return cls(
            total,
            sum(f.available for f in batches),
            sum(f.shortfall for f in batches),
        )
