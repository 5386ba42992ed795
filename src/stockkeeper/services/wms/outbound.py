"""The outbound side: what the WMS must be told (allocations, releases,
confirmations); the wms-outbound worker sends it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from stockkeeper.domain.errors import NotFound
from stockkeeper.domain.wms import OutboundLine
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.wms.base import WmsBase
from stockkeeper.store import wms as repo
from stockkeeper.store.pool import Conn

# A replayed dead letter of the outbound sender: its items go back to the queue.
OUTBOUND_REARM = "wms.outbound_rearm"
OUTBOUND_QUEUE = "wms.outbound"


class OutboundBook(WmsBase):
    """Outbound items, recorded in the consumer's transaction and re-armed on replay."""

    async def record_outbound(
        self, conn: Conn, message_id: uuid.UUID, lines: Sequence[OutboundLine]
    ) -> int:
        """In the consumer's transaction: one outbound item per line and WMS connector."""
        if not lines or not self.connectors:
            return 0
        where = await repo.batch_identities(conn, sorted({li.batch_id for li in lines}))
        items = []
        for li in lines:
            batch = where.get(li.batch_id)
            if batch is None:
                raise NotFound(f"batch {li.batch_id} of event {li.event_id} does not exist")
            items.append(
                (
                    li.event_id,
                    li.action.value,
                    li.order_id,
                    li.sku,
                    batch["location"],
                    batch["lot_number"],
                    li.quantity,
                )
            )
        for name in self.connectors:
            await repo.insert_outbound(conn, name, message_id, items)
        return len(items)

    async def rearm_outbound(self, conn: Conn, connector: str, event_ids: Sequence[str]) -> int:
        """A replayed dead letter: its items are sent again, with a fresh count."""
        return await repo.outbound_rearm(conn, connector, event_ids)

    @staticmethod
    def rearm_envelope(connector: str, items: Sequence[repo.OutboundRow], now: datetime) -> bytes:
        """The dead letter of items the WMS never took: replaying it re-arms them."""
        payload = {
            "connector": connector,
            "event_ids": [i.event_id for i in items],
            "items": [
                {
                    "event_id": i.event_id,
                    "action": i.action,
                    "order_id": i.order_id,
                    "sku": i.sku,
                    "location": i.location,
                    "lot_number": i.lot_number,
                    "quantity": i.quantity,
                }
                for i in items
            ],
        }
        return Envelope.new(OUTBOUND_REARM, payload, occurred_at=now).to_bytes()
