"""The asyncpg pool, created by bootstrap and passed down; never at import time."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from stockkeeper.config import DatabaseConfig

# A connection of our own or one lent by the pool; every repository accepts both.
if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]
    Pool: TypeAlias = asyncpg.Pool[asyncpg.Record]
else:
    Conn = asyncpg.Connection | PoolConnectionProxy
    Pool = asyncpg.Pool


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


async def ping(conn: Conn) -> None:
    """One round trip to the server: readiness, nothing read."""
    await conn.fetchval("SELECT 1")
