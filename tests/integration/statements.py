"""Counting the statements a use case runs, on every connection of a pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from stockkeeper.store.pool import Pool

# asyncpg's own: look-ups of types it has not met on a connection yet, and the pool's
# reset of a connection given back.
_DRIVER = (
    "pg_catalog",
    "current_setting('jit')",
    "set_config('jit', $1, false)",
    "pg_advisory_unlock_all()",
)


@asynccontextmanager
async def statements(pool: Pool) -> AsyncIterator[list[str]]:
    """Every statement any connection of ``pool`` runs inside the block, in order.

    The logger is put on each of the pool's connections (all of them taken at once, so
    each is a different one), which the use case then takes as it always does.
    """
    seen: list[str] = []
    on = False

    def log(record: Any) -> None:
        if on and not any(d in record.query for d in _DRIVER):
            seen.append(record.query)

    async def each(action: str) -> None:
        conns = [await pool.acquire() for _ in range(pool.get_max_size())]
        try:
            for conn in conns:
                getattr(conn, action)(log)
        finally:
            for conn in conns:
                await pool.release(conn)

    await each("add_query_logger")
    on = True
    try:
        yield seen
    finally:
        on = False
        await each("remove_query_logger")
