"""The asyncpg pools, created by bootstrap and passed down; never at import time; and what
every user of a connection shares: its health check, and driver errors made our own.

A process has one pool for its transactions and, behind PgBouncer in transaction mode,
a second small one straight to PostgreSQL for what needs a session of its own: LISTEN
connections, advisory locks and migrations (PgBouncer hands each transaction to any
server connection, so a session's state does not follow the client). Without PgBouncer
both are the same pool.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
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

APPLICATION_NAME = "stockkeeper"


@dataclass(frozen=True)
class Connections:
    """What a process holds at once: ``work`` connections for transactions (one per
    request, consumer or loop in flight) and ``session`` ones kept for the whole run
    (LISTEN, advisory locks). A process gets one spare on top."""

    work: int
    session: int = 0

    def __add__(self, other: Connections) -> Connections:
        return Connections(self.work + other.work, self.session + other.session)

    def pool_size(self, cfg: DatabaseConfig) -> int:
        """The transaction pool's size: ``database.pool_size`` when set, else the need.
        Behind PgBouncer the session connections live in their own pool."""
        if cfg.pool_size is not None:
            return cfg.pool_size
        return self.work + 1 + (0 if cfg.pgbouncer else self.session)

    def session_pool_size(self) -> int:
        """The direct pool's size behind PgBouncer (at least one: migrations)."""
        return max(1, self.session)


ONE_OFF = Connections(work=3, session=1)
"""A command that is not a service (``migrate``, ``status``), a test or a benchmark."""


# Every named query of store/queries stays prepared on a connection once it has run
# (asyncpg's default cache holds 100; we have more), D-303.
STATEMENT_CACHE_SIZE = 512


class TrackedConnection(asyncpg.Connection):
    """A connection that knows whether it took session state: a LISTEN, a session-level
    advisory lock (``mark_session_state``). Only such a connection needs asyncpg's reset
    query when it goes back to the pool (D-303)."""

    session_state = False

    def mark_session_state(self) -> None:
        self.session_state = True

    async def add_listener(self, channel: str, callback: Any) -> None:
        self.session_state = True
        await super().add_listener(channel, callback)


def mark_session_state(conn: Conn) -> None:
    """Tell ``conn``'s pool to reset it on release: it took session state (an advisory
    lock, a LISTEN, a session setting). A proxy forwards the call to its connection."""
    mark = getattr(conn, "mark_session_state", None)
    if mark is not None:
        mark()


async def _reset_if_needed(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's reset on release. asyncpg has already rolled back an open transaction
    and dropped the client's listener callbacks; what the server keeps for the session
    (advisory locks, LISTEN, settings, cursors held past a transaction) is only there
    if the connection took it, which ``mark_session_state`` records. A plain use case's
    connection (``BEGIN`` ... ``COMMIT``) goes back without a round trip."""
    if getattr(conn, "session_state", True):
        reset_query = conn.get_reset_query()
        if reset_query:
            await conn.execute(reset_query)
        if isinstance(conn, TrackedConnection):
            conn.session_state = False


def _pool_options(cfg: DatabaseConfig, overrides: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "connection_class": TrackedConnection,
        "reset": _reset_if_needed,
        "statement_cache_size": STATEMENT_CACHE_SIZE,
    }
    if cfg.pgbouncer:
        # Transaction mode: a prepared statement lives on a server connection the next
        # transaction may not get.
        options["statement_cache_size"] = 0
    options.update(overrides)
    return options


async def _init_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def _server_settings(cfg: DatabaseConfig, *, via_pgbouncer: bool) -> dict[str, str]:
    settings = {"application_name": APPLICATION_NAME}
    # PgBouncer refuses startup parameters it does not track (statement_timeout among
    # them): there the timeout is the role's or the database's (ALTER ROLE ... SET).
    if cfg.statement_timeout_ms and not via_pgbouncer:
        settings["statement_timeout"] = str(cfg.statement_timeout_ms)
    return settings


async def create_pool(
    url: str, cfg: DatabaseConfig, *, size: int | None = None, **overrides: Any
) -> Pool:
    """The transaction pool on ``url`` (PgBouncer's address when ``cfg.pgbouncer``),
    ``size`` connections at most (default: ``cfg.pool_size``, else a one-off's need)."""
    max_size = size or ONE_OFF.pool_size(cfg)
    with _opening():
        pool: Pool = await asyncpg.create_pool(
            url,
            min_size=min(2, max_size),
            max_size=max_size,
            init=_init_connection,
            server_settings=_server_settings(cfg, via_pgbouncer=cfg.pgbouncer),
            **_pool_options(cfg, overrides),
        )
    return pool


@contextlib.contextmanager
def _opening() -> Iterator[None]:
    """Opening a pool: a server that cannot be reached is :class:`StoreUnavailable`; one
    that refuses us (no such database, a wrong password) or a URL asyncpg cannot read
    is a plain :class:`StoreError`, so the process can say so at start, no traceback."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise StoreUnavailable(str(exc) or type(exc).__name__) from exc
    except (asyncpg.PostgresError, ValueError) as exc:
        raise StoreError(str(exc) or type(exc).__name__) from exc


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


async def create_session_pool(cfg: DatabaseConfig, size: int) -> Pool:
    """The pool straight to PostgreSQL (``database.direct_url``) behind PgBouncer.
    Its connections open when first needed; a LISTEN holds one for the whole run."""
    assert cfg.direct_url is not None, "validated with database.pgbouncer"
    with _opening():
        pool: Pool = await asyncpg.create_pool(
            cfg.direct_url,
            min_size=0,
            max_size=size,
            init=_init_connection,
            server_settings=_server_settings(cfg, via_pgbouncer=False),
            connection_class=TrackedConnection,
            reset=_reset_if_needed,
            statement_cache_size=STATEMENT_CACHE_SIZE,
        )
    return pool
