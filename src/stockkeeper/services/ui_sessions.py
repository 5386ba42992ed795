"""The ops page's sessions, kept in PostgreSQL so every admin-api replica knows them
and a logout ends them for good (D-464).

A session is a random value (256 bits) that only the browser holds, in its cookie;
the database holds its SHA-256, the token's fingerprint and the expiry. Checking a
session is one primary-key lookup.
"""

from __future__ import annotations

import hashlib
import secrets

from stockkeeper.store import ui_sessions
from stockkeeper.store.pool import Pool

# Expired rows deleted at each login, at most: logins bound the table's growth.
PRUNE_BATCH = 100


def _id_hash(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class UiSessions:
    """Open, find and close the ops page's sessions."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def open(self, fingerprint: str, principal: str, ttl_s: int) -> str:
        """A new session of the token named by ``fingerprint``: the cookie's value."""
        value = secrets.token_urlsafe(32)
        async with self.pool.acquire() as conn:
            await ui_sessions.prune_expired(conn, PRUNE_BATCH)
            await ui_sessions.open_session(conn, _id_hash(value), fingerprint, principal, ttl_s)
        return value

    async def find(self, value: str) -> str | None:
        """The token fingerprint behind an open, unexpired session, or None."""
        async with self.pool.acquire() as conn:
            return await ui_sessions.find(conn, _id_hash(value))

    async def close(self, value: str) -> bool:
        """End the session (logout); whether it was open."""
        async with self.pool.acquire() as conn:
            return await ui_sessions.close(conn, _id_hash(value))
