"""Carrier quotes from the configuration (``orders.carriers``): a flat price and transit
time per carrier, for the countries it ships to.

A carrier's or a shipping broker's rate API would be another class with the same
``quotes`` method (``services.orders.CarrierQuotes``), doing its HTTP call there.
"""

from __future__ import annotations

from collections.abc import Sequence

from stockkeeper.config import CarrierConfig
from stockkeeper.domain.carriers import Carrier, Quote, Shipment, flat_quotes


class ConfiguredCarriers:
    """The carriers of ``orders.carriers``; no I/O."""

    def __init__(self, configs: Sequence[CarrierConfig]) -> None:
        self.carriers = [
            Carrier(c.id, c.cost, c.reliability, c.transit_days, frozenset(c.countries))
            for c in configs
        ]

    async def quotes(self, shipment: Shipment) -> list[Quote]:
        return flat_quotes(self.carriers, shipment)
