"""Carrier routing: which carrier takes a paid order.

Quotes that would arrive after the order's required delivery date are dropped; of the
rest, the best has the lowest cost divided by reliability (a cheap carrier that loses
parcels is not cheap). Ties go to the more reliable, then the earlier delivery, then
the carrier id, so the choice never depends on the order quotes came in.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any


@dataclass(frozen=True, slots=True)
class Quote:
    """One carrier's offer for one shipment."""

    carrier_id: str
    cost: Decimal
    reliability: Decimal  # share of parcels delivered as promised, in (0, 1]
    transit_days: int
    estimated_delivery: date

    def __post_init__(self) -> None:
        if not Decimal(0) < self.reliability <= Decimal(1):
            raise ValueError(f"{self.carrier_id}: reliability must be in (0, 1]")
        if self.cost < 0:
            raise ValueError(f"{self.carrier_id}: cost must not be negative")
        if self.transit_days < 0:
            raise ValueError(f"{self.carrier_id}: transit_days must not be negative")

    @property
    def score(self) -> Fraction:
        """Cost per unit of reliability, exactly (no rounding can make or break a tie)."""
        return Fraction(self.cost) / Fraction(self.reliability)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.carrier_id,
            "cost": str(self.cost),
            "reliability": str(self.reliability),
            "transit_days": self.transit_days,
            "estimated_delivery": self.estimated_delivery.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class Shipment:
    """What a carrier quotes for: where to, what, and the day it leaves."""

    order_id: str
    country: str  # ISO 3166-1 alpha-2
    postal_code: str | None
    lines: tuple[tuple[str, int], ...]  # (sku, quantity)
    ship_date: date


@dataclass(frozen=True, slots=True)
class Carrier:
    """A carrier with a flat quote: what the configuration describes."""

    id: str
    cost: Decimal
    reliability: Decimal
    transit_days: int
    countries: frozenset[str] = frozenset()  # empty: ships everywhere

    def serves(self, country: str) -> bool:
        return not self.countries or country in self.countries

    def quote(self, ship_date: date) -> Quote:
        return Quote(
            self.id,
            self.cost,
            self.reliability,
            self.transit_days,
            ship_date + timedelta(days=self.transit_days),
        )


def flat_quotes(carriers: Iterable[Carrier], shipment: Shipment) -> list[Quote]:
    """The quotes of every carrier that ships to the shipment's country."""
    return [c.quote(shipment.ship_date) for c in carriers if c.serves(shipment.country)]


@dataclass(frozen=True, slots=True)
class NoCarrier:
    """No quote can be used; ``reason`` says why, for the order and the operator."""

    reason: str


def _rank(q: Quote) -> tuple[Fraction, Decimal, date, str]:
    return (q.score, -q.reliability, q.estimated_delivery, q.carrier_id)


def choose(quotes: Sequence[Quote], required_by: date | None) -> Quote | NoCarrier:
    """The best quote that arrives by ``required_by`` (any, when None)."""
    if not quotes:
        return NoCarrier("no carrier ships to this destination")
    viable = [q for q in quotes if required_by is None or q.estimated_delivery <= required_by]
    if not viable:
        first = min(quotes, key=lambda q: (q.estimated_delivery, q.carrier_id))
        return NoCarrier(
            f"no carrier delivers by {required_by.isoformat() if required_by else '-'}: "
            f"the earliest is {first.carrier_id} on {first.estimated_delivery.isoformat()}"
        )
    return min(viable, key=_rank)
