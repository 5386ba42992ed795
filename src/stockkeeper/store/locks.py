"""Advisory locks: one holder at a time across every process, without a table.

Session-level locks, held by the connection that took them until it unlocks or closes;
a caller keeps that connection for as long as it holds the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn, mark_session_state
from stockkeeper.store.sql import q


def key_of(name: str) -> int:
    """A stable 64-bit advisory-lock key for ``name`` (the same in every process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@translated
async def try_hold(conn: Conn, key: int) -> bool:
    """Take the lock on this connection if nobody holds it; True when we now hold it."""
    mark_session_state(conn)
    got: bool = await conn.fetchval(q("try_advisory_lock"), key)
    return got


@translated
async def release(conn: Conn, key: int) -> None:
    await conn.execute(q("advisory_unlock"), key)


def watch_session(conn: Conn, lost: asyncio.Event) -> Callable[[], None]:
    """Set ``lost`` when the session of ``conn`` ends (the server restarted, the link was
    cut): a lock taken on it, and a LISTEN, ended with it. asyncpg tells at once, from
    the closed socket, with no round trip. Returns what stops watching (a connection
    going back to the pool keeps its watchers otherwise)."""

    def ended(_conn: object) -> None:
        lost.set()

    conn.add_termination_listener(ended)

    def unwatch() -> None:
        with contextlib.suppress(Exception):  # the connection may be gone already
            conn.remove_termination_listener(ended)

    return unwatch
