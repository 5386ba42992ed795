"""Repository for ``ui_session``: the ops page's sessions, one row each (D-464).

A session is named by the SHA-256 of its cookie's value; the value itself is never
stored. Expiry is on the database's clock, so every replica agrees on it.
"""

from __future__ import annotations

from datetime import datetime

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@translated
async def open_session(
    conn: Conn, id_hash: bytes, fingerprint: str, principal: str, ttl_s: int
) -> datetime:
    """Record a new session of the token named by ``fingerprint``; its expiry."""
    expires: datetime = await conn.fetchval(
        q("open_ui_session"), id_hash, fingerprint, principal, float(ttl_s)
    )
    return expires


@translated
async def find(conn: Conn, id_hash: bytes) -> str | None:
    """The token fingerprint of an open, unexpired session, or None."""
    found: str | None = await conn.fetchval(q("find_ui_session"), id_hash)
    return found


@translated
async def close(conn: Conn, id_hash: bytes) -> bool:
    """End the session; whether there was one."""
    status: str = await conn.execute(q("close_ui_session"), id_hash)
    return status != "DELETE 0"


@translated
async def prune_expired(conn: Conn, limit: int) -> int:
    """Delete up to ``limit`` expired sessions; how many went."""
    status: str = await conn.execute(q("prune_ui_sessions"), limit)
    return int(status.rsplit(" ", 1)[-1])
