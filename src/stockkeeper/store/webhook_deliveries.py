"""Repository for ``webhook_delivery``: each delivery id of a connector is taken once."""

from __future__ import annotations

from enum import StrEnum

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


class Claim(StrEnum):
    NEW = "new"  # first time: queue it
    DUPLICATE = "duplicate"  # the same delivery again: nothing new
    CONFLICT = "conflict"  # the id came before with another body (D-441)


@translated
async def claim(conn: Conn, connector: str, event_id: str, digest: bytes) -> Claim:
    """Record the delivery in the caller's transaction: new, the same one again, or the
    id again with another body (``digest`` is what the delivery carried)."""
    row = await conn.fetchrow(q("claim_delivery"), connector, event_id, digest)
    assert row is not None
    if row["new"]:
        return Claim.NEW
    first = row["digest"]
    return Claim.DUPLICATE if first is None or bytes(first) == digest else Claim.CONFLICT
