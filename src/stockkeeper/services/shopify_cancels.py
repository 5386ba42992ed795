"""Shopify's ``orders/cancelled`` puts back only what its ``orders/create`` took (D-489).

The Shopify webhook preset books a cancelled line as the return of transaction
``<order>:<line>:cancel``. A cancel whose line's sale was never booked here (its create
refused as stale, lost, or from before the connector) would put back units never taken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from stockkeeper.config import IngestOptions, WebhookConnectorConfig
from stockkeeper.connectors.webhook import SHOPIFY_CANCEL
from stockkeeper.domain.ingest import Sale
from stockkeeper.store import source_records
from stockkeeper.store.pool import Conn


async def cancels_of_nothing(
    conn: Conn, sales: Sequence[Sale], connectors: Mapping[str, IngestOptions]
) -> set[tuple[str, str]]:
    """The (source, transaction_id) keys of the cancels in ``sales`` to book as no-ops.

    For each cancel from a Shopify-preset connector whose line is not in ``sales``, the
    line's own transaction id is claimed with no units. A new claim means the line's
    sale was never booked, so its cancel puts back nothing, and a create that arrives
    later is a repeat: the two net to nothing in either order."""

    def from_shopify(source: str) -> bool:
        cfg = connectors.get(source)
        return isinstance(cfg, WebhookConnectorConfig) and cfg.preset == "shopify"

    here = {(s.source, s.transaction_id) for s in sales}
    lines = [
        Sale(s.source, s.transaction_id.removesuffix(SHOPIFY_CANCEL), s.sku, 0)
        for s in sales
        if s.delta > 0 and s.transaction_id.endswith(SHOPIFY_CANCEL) and from_shopify(s.source)
    ]
    lines = [s for s in lines if (s.source, s.transaction_id) not in here]
    if not lines:
        return set()
    never = await source_records.claim_sales(conn, lines)
    return {(src, tid + SHOPIFY_CANCEL) for src, tid in never}
