"""Repository for ``webhook_delivery``: each delivery id of a connector is taken once."""

from __future__ import annotations

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@translated
async def claim(conn: Conn, connector: str, event_id: str) -> bool:
    """Record the delivery in the caller's transaction; False when it came before."""
    return await conn.fetchval(q("claim_delivery"), connector, event_id) is not None
