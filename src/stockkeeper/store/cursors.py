"""Repository for ``source_cursor``: how far each polled connector has been read.

Functions take a connection inside the caller's transaction; none opens its own. The
cursor is saved in the transaction that queues the page it covers, so it never runs
ahead of what is durably queued.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a connector's next read starts: an ERP's (last_modified, sku, location)
    position, or a marketplace's opaque token."""

    last_modified: datetime | None
    sku: str | None
    location: str | None
    token: str | None


@translated
async def get(conn: Conn, connector: str) -> Cursor | None:
    row = await conn.fetchrow(q("get_cursor"), connector)
    if row is None:
        return None
    return Cursor(row["last_modified"], row["sku"], row["location"], row["token"])


@translated
async def advance(conn: Conn, connector: str, to: Cursor, records: int) -> None:
    """Move the cursor past one page of ``records`` records (and count the page)."""
    await conn.execute(
        q("save_cursor"), connector, to.last_modified, to.sku, to.location, to.token, records
    )
