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
    if await conn.fetchval(q("claim_delivery"), connector, event_id, digest) is not None:
        return Claim.NEW
    # A new statement: it sees a concurrent first delivery that the claim waited for.
    first = await conn.fetchval(q("delivery_digest"), connector, event_id)
    return Claim.DUPLICATE if first is None or bytes(first) == digest else Claim.CONFLICT
