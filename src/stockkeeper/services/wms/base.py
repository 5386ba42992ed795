"""What the parts of the WMS service share: the pool, the metrics, the connectors."""

from __future__ import annotations

from collections.abc import Sequence

from stockkeeper.config import WmsConnectorConfig
from stockkeeper.observability.metrics import Metrics
from stockkeeper.services.unit import Clock, utcnow
from stockkeeper.store.pool import Pool


class WmsBase:
    """The state every part of :class:`~stockkeeper.services.wms.WmsService` uses."""

    def __init__(
        self,
        pool: Pool,
        metrics: Metrics,
        connectors: Sequence[WmsConnectorConfig],
        clock: Clock = utcnow,
        *,
        levels_per_message: int = 0,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.connectors = {c.id: c for c in connectors}
        self.clock = clock
        # A snapshot page's new levels as inventory.levels_changed messages (D-220).
        self.levels_per_message = levels_per_message
