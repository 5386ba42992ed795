"""The asyncpg pool, created by bootstrap and passed down; never at import time; and what
every user of a connection shares: its health check, and driver errors made our own."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from stockkeeper.config import DatabaseConfig
from stockkeeper.store.errors import StoreError, StoreUnavailable
from stockkeeper.store.sql import q

# A connection of our own or one lent by the pool; every repository accepts both.
if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
    PooledConn: TypeAlias = PoolConnectionProxy[asyncpg.Record]
else:
    PooledConn = PoolConnectionProxy
    Conn = asyncpg.Connection | PoolConnectionProxy
    Pool = asyncpg.Pool

# A row as some repositories return it, read by column name (``row["sku"]``).
Row: TypeAlias = asyncpg.Record


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(url: str, cfg: DatabaseConfig, **overrides: Any) -> Pool:
    settings = {"application_name": "stockkeeper"}
    if cfg.statement_timeout_ms:
        settings["statement_timeout"] = str(cfg.statement_timeout_ms)
    pool: Pool = await asyncpg.create_pool(
        url,
        min_size=min(2, cfg.pool_size),
        max_size=cfg.pool_size,
        init=_init_connection,
        server_settings=settings,
        **overrides,
    )
    return pool


# What a database outage looks like from asyncpg: no route or a reset socket, a server
# refusing connections while it starts or shuts down, a connection that went away.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)


@contextlib.asynccontextmanager
async def connection(pool: Pool) -> AsyncIterator[Conn]:
    """A pooled connection whose driver errors (from acquiring it or from the statements
    run in the block) arrive as :mod:`stockkeeper.store.errors`: for the loops that ride
    out a database outage. Keep only store calls in the block."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(str(exc)) from exc
    except asyncpg.PostgresError as exc:
        raise StoreError(str(exc)) from exc


async def ping(conn: Conn) -> None:
    """One round trip on ``conn``; raises if the connection no longer works."""
    await conn.execute(q("ping"))


def is_open(conn: Conn | None) -> bool:
    """Whether ``conn`` is still usable. The pool takes back a proxy whose connection
    was lost, after which asking it anything raises: that counts as closed too."""
    if conn is None:
        return False
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False
