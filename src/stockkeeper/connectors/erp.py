"""The ERP source: a read-only SQL view read by a keyset cursor, turned into levels.

The view has the columns ``sku, location, on_hand, price, last_modified``. Pages are
read in ``(last_modified, sku, location)`` order and continued strictly after the last
row read, so rows that share a timestamp are never skipped, however a page boundary
falls among them (an OFFSET would skip or repeat rows as the ERP changes under it).

A NULL ``location`` is the default location (as an empty one), and a NULL ``sku`` a
bad row (a dead letter): in the key both count as ``''``, so the order and the "after"
comparison are the same total order on every database. Compared raw, ``location >
'WH-A'`` is not true of a NULL, and PostgreSQL sorts NULLs last while SQL Server sorts
them first: a NULL at a page boundary skipped the rows tied with it (D-418). A row
without ``last_modified`` has no place on the cursor and is not read (its level would
have no source time, refused anyway); a page ending on one would have saved a cursor
that starts again from the beginning, every poll.

Column types are read for what they hold (D-442): a whole quantity in a decimal column
is that many units, a code in a ``char(n)`` column loses its padding, and a view whose
times have no zone (read as UTC) is compared with the cursor's UTC wall time without a
zone, so the ERP session's own time zone never shifts the comparison.

The query is built with SQLAlchemy Core, so one code path serves every database the
ERP may run on: PostgreSQL through ``postgresql+asyncpg://`` (tested here) and Microsoft
SQL Server through ``mssql+aioodbc://user@host/db?driver=ODBC+Driver+18+for+SQL+Server``
(install ``aioodbc`` and Microsoft's ODBC Driver 18; the dialect writes TOP/OFFSET
instead of LIMIT, and the portable OR form of the keyset condition works on both).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, column, func, literal, or_, select, table
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql import Select

from stockkeeper.config import ErpConnectorConfig
from stockkeeper.connectors.http import ConnectorError
from stockkeeper.connectors.records import LevelRecord, Refused, parse_levels

COLUMNS = ("sku", "location", "on_hand", "price", "last_modified")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a keyset read goes on from: just after this row."""

    last_modified: datetime
    sku: str
    location: str


@dataclass(frozen=True, slots=True)
class ErpPage:
    levels: list[LevelRecord]
    refused: list[Refused]
    rows: int
    last: Position | None


def _view(view_name: str) -> Any:
    schema, _, name = view_name.rpartition(".")
    return table(name, *(column(c) for c in COLUMNS), schema=schema or None)


def time_probe(view_name: str) -> Select[Any]:
    """One ``last_modified`` of the view, to learn whether it has a zone (on the index)."""
    c = _view(view_name).c
    return select(c.last_modified).where(c.last_modified.is_not(None)).limit(1)


def _bound(at: datetime, naive: bool) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None) if naive else at


def page_query(
    view_name: str,
    after: Position | None,
    limit: int,
    *,
    naive: bool = False,
    upto: datetime | None = None,
) -> Select[Any]:
    """The keyset query for one page (bound parameters only). ``naive``: the view's
    ``last_modified`` has no zone, so the cursor's time is bound without one too (its
    UTC wall time): bound with a zone, the database would compare the column as a time
    in its session's zone and skip every row within that offset after the cursor.
    ``upto``: rows stamped later are left for a later poll (``settle_ms``, D-493)."""
    c = _view(view_name).c
    if after is not None and naive:
        after = replace(after, last_modified=_bound(after.last_modified, naive))
    # NULL-free keys (see the module docstring); '' is bound, like every value.
    sku = func.coalesce(c.sku, literal(""))
    location = func.coalesce(c.location, literal(""))
    stmt = (
        select(*(c[n] for n in COLUMNS))
        .where(c.last_modified.is_not(None))
        .order_by(c.last_modified, sku, location)
    )
    if upto is not None:
        stmt = stmt.where(c.last_modified <= _bound(upto, naive))
    if after is not None:
        stmt = stmt.where(
            or_(
                c.last_modified > after.last_modified,
                and_(c.last_modified == after.last_modified, sku > after.sku),
                and_(
                    c.last_modified == after.last_modified,
                    sku == after.sku,
                    location > after.location,
                ),
            )
        )
    return stmt.limit(limit)


def _key(value: Any) -> str:
    """A row's sku or location as the keyset compares it (NULL is '')."""
    return "" if value is None else str(value)


def _aware(value: Any) -> Any:
    # Many ERPs keep local times without a zone; we read them as UTC (documented).
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _whole(value: Any) -> Any:
    """A quantity the database gives as a decimal or a float, as the integer it is.

    ERPs keep quantities in decimal columns (``numeric(15,3)``, SQL Server's
    ``decimal(38,20)``), so 5 units arrive as ``Decimal('5.000')``. That is the whole
    number 5, not a string or a float sent where JSON should have an integer (D-417 is
    about the latter); a fraction (5.5) is left as it is and refused (D-442)."""
    if isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _unpadded(value: Any) -> Any:
    """A code from a fixed-width CHAR column without the spaces the database pads it with
    to the column's width (``'BOLT' + 16 spaces`` in a ``char(20)``): padding, not part
    of the code (D-442). Leading spaces are the code's own and still refused."""
    return value.rstrip(" ") if isinstance(value, str) else value


def to_levels(rows: Sequence[Sequence[Any]]) -> tuple[list[LevelRecord], list[Refused]]:
    """ERP rows to validated levels; a bad row is refused with its reason. The keyset
    position keeps the raw values (``ErpSource.page``): the database compares those."""
    raw: list[dict[str, Any]] = []
    for sku, location, on_hand, price, last_modified in rows:
        doc: dict[str, Any] = {
            "sku": _unpadded(sku),
            "location": _unpadded(location) or "default",
            "on_hand": _whole(on_hand),
            "source_updated_at": _aware(last_modified),
        }
        if price is not None:
            doc["price"] = str(price) if isinstance(price, Decimal | float | int) else price
        raw.append(doc)
    return parse_levels(raw)


class ErpSource:
    """Reads one ERP's view, at most ``max_concurrent_queries`` queries at once."""

    def __init__(
        self, cfg: ErpConnectorConfig, dsn: str, engine: AsyncEngine | None = None
    ) -> None:
        self.cfg = cfg
        self.engine = engine or create_async_engine(
            dsn,
            pool_size=cfg.max_concurrent_queries,
            max_overflow=0,
            pool_pre_ping=True,
        )
        self.gate = asyncio.Semaphore(cfg.max_concurrent_queries)
        # Whether the view's last_modified has no zone: learnt from the view itself (one
        # of its values) before the first query that continues from a cursor.
        self.naive: bool | None = None

    async def _naive_times(self, conn: AsyncConnection) -> bool:
        if self.naive is None:
            value = (await conn.execute(time_probe(self.cfg.view))).scalar()
            if value is None:  # an empty view: nothing to compare yet, ask again later
                return False
            self.naive = isinstance(value, datetime) and value.tzinfo is None
        return self.naive

    async def page(self, after: Position | None, upto: datetime | None = None) -> ErpPage:
        """The rows after ``after`` (all from the start: None), in cursor order, stamped
        no later than ``upto`` (None: however late)."""
        try:
            async with (
                self.gate,
                asyncio.timeout(self.cfg.query_timeout_ms / 1000),
                self.engine.connect() as conn,
            ):
                compared = after is not None or upto is not None
                naive = compared and await self._naive_times(conn)
                stmt = page_query(self.cfg.view, after, self.cfg.page_size, naive=naive, upto=upto)
                result = await conn.execute(stmt)
                rows = [tuple(r) for r in result.fetchall()]
        except TimeoutError:
            raise self._failed(f"no answer within {self.cfg.query_timeout_ms} ms") from None
        except (SQLAlchemyError, OSError) as exc:
            # The database's own words ("column stock_changes.on_hand does not exist"),
            # not SQLAlchemy's wrapping with the statement and a link (D-440).
            raise self._failed(_db_message(exc)) from exc
        levels, refused = to_levels(rows)
        last = None
        if rows:
            sku, location, _, _, last_modified = rows[-1]
            last = Position(_aware(last_modified), _key(sku), _key(location))
        return ErpPage(levels, refused, len(rows), last)

    def _failed(self, message: str) -> ConnectorError:
        return ConnectorError(self.cfg.id, f"reading the view {self.cfg.view}", message)

    async def close(self) -> None:
        await self.engine.dispose()


def _db_message(exc: BaseException) -> str:
    cause: BaseException = exc
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        cause = exc.orig
    # The driver's own error when the adapter wraps one (asyncpg's under SQLAlchemy's).
    cause = cause.__cause__ or cause
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
