"""The sandbox ERP: a PostgreSQL database of its own, read through a view, as real ERPs are.

The ERP keeps its items in ``erp_item`` and offers integrations a read-only view,
``stock_changes (sku, location, on_hand, price, last_modified)``, to be read by a keyset
cursor on ``(last_modified, sku, location)``. The role ``erp_reader`` may read that view
and nothing else. :class:`ErpSandbox` writes the ERP's side of the story: a bulk seed with
many rows sharing one timestamp (so paging across ties is exercised), random changes
stamped later than anything before, and bad rows on request (the ERP's data is not always
clean: negative quantities and prices, missing ones).

Every method opens its own connection: the sandbox is driven by tests and a CLI loop,
never on a hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import secrets
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg

READER_ROLE = "erp_reader"
DEFAULT_WAREHOUSE = "default"
# Seeded rows are stamped from here on, one second per group of ties: the same arguments
# give the same rows, and every later change (stamped by the ERP's clock) is newer.
SEED_START = datetime(2024, 1, 1, tzinfo=UTC)

# What a database that went away looks like: a refused or dropped connection, or a
# server shutting down or starting up.
UNREACHABLE = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")

# Idempotent: an existing ERP database is brought up to this shape, data untouched.
# The index leads with (last_modified, sku), the keyset of the poller; the warehouse
# completes it, because one SKU in two warehouses can be changed at the same instant and
# only the three columns together order every row exactly once.
SCHEMA = """
CREATE TABLE IF NOT EXISTS erp_item (
    sku           text NOT NULL,
    warehouse     text NOT NULL DEFAULT 'default',
    qty_on_hand   integer,
    unit_price    numeric(12, 2),
    last_modified timestamptz NOT NULL,
    PRIMARY KEY (sku, warehouse)
);
CREATE INDEX IF NOT EXISTS erp_item_changes ON erp_item (last_modified, sku, warehouse);

CREATE OR REPLACE VIEW stock_changes AS
    SELECT sku, warehouse AS location, qty_on_hand AS on_hand, unit_price AS price,
           last_modified
    FROM erp_item;

-- A one-table view is updatable in PostgreSQL; this one is for reading only, even by
-- its owner.
CREATE OR REPLACE FUNCTION stock_changes_read_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'stock_changes is a read-only view' USING ERRCODE = 'feature_not_supported';
END
$$;
CREATE OR REPLACE TRIGGER stock_changes_read_only
    INSTEAD OF INSERT OR UPDATE OR DELETE ON stock_changes
    FOR EACH ROW EXECUTE FUNCTION stock_changes_read_only();

REVOKE ALL ON erp_item FROM PUBLIC;
"""

# Roles belong to the whole cluster: another ERP database (or a concurrent test) may have
# created it already, and two concurrent CREATE ROLEs end in a unique violation.
CREATE_READER = f"""
DO $$
BEGIN
    CREATE ROLE {READER_ROLE} LOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;
GRANT USAGE ON SCHEMA public TO {READER_ROLE};
GRANT SELECT ON stock_changes TO {READER_ROLE};
"""

# A new change is stamped by the ERP's clock, but always after every change before it,
# so a poller's cursor is never already past it. Run under LOCK_FOR_CHANGES.
LOCK_FOR_CHANGES = "LOCK TABLE erp_item IN SHARE ROW EXCLUSIVE MODE"
NEXT_STAMP = """
SELECT greatest(clock_timestamp(),
                (SELECT max(last_modified) FROM erp_item) + interval '1 millisecond')
"""

PICK_ROWS = """
SELECT sku, warehouse
FROM (SELECT sku, warehouse, row_number() OVER (ORDER BY sku, warehouse) AS n
      FROM erp_item) AS numbered
WHERE n = ANY($1::bigint[])
ORDER BY sku, warehouse
"""

# The new quantity always differs from the old one, so every change is a real change.
APPLY_CHANGES = """
UPDATE erp_item AS e
SET qty_on_hand = CASE WHEN e.qty_on_hand IS NOT DISTINCT FROM c.qty THEN c.qty + 1
                       ELSE c.qty END,
    unit_price = coalesce(c.price, e.unit_price),
    last_modified = c.at
FROM unnest($1::text[], $2::text[], $3::integer[], $4::numeric[], $5::timestamptz[])
     AS c(sku, warehouse, qty, price, at)
WHERE e.sku = c.sku AND e.warehouse = c.warehouse
"""

UPSERT_ITEM = """
INSERT INTO erp_item AS e (sku, warehouse, qty_on_hand, unit_price, last_modified)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (sku, warehouse) DO UPDATE
SET qty_on_hand = excluded.qty_on_hand,
    unit_price = coalesce(excluded.unit_price, e.unit_price),
    last_modified = excluded.last_modified
"""

ALL_ROWS = """
SELECT sku, location, on_hand, price, last_modified
FROM stock_changes
ORDER BY last_modified, sku, location
"""


def _database_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return name


def _with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` (socket URLs keep their ?host=)."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def reader_url(url: str) -> str:
    """``url`` logged in as ``erp_reader`` instead (no password: for trust auth, as in
    the tests and the demo)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{READER_ROLE}@{host}"))


async def create_erp(admin_url: str, name: str | None = None) -> str:
    """Create the ERP database ``name`` (default ``sk_erp_<random>``) and return its URL.

    An existing database of that name is kept, data and all, and its schema completed.
    The role ``erp_reader`` is created if the admin may create roles, and otherwise left
    out (the view works the same; only the read-only login is missing).
    """
    name = _database_name(name or f"sk_erp_{secrets.token_hex(6)}")
    admin = await asyncpg.connect(admin_url)
    try:
        with contextlib.suppress(asyncpg.DuplicateDatabaseError):
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(admin_url, name)
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(SCHEMA)
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            async with conn.transaction():
                await conn.execute(CREATE_READER)
    finally:
        await conn.close()
    return url


async def drop_erp(admin_url: str, url: str) -> None:
    """Drop the ERP database at ``url``, closing its connections; gone already is fine."""
    name = _database_name(unquote(urlsplit(url).path.lstrip("/")))
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def _money(value: Decimal | int | float | str | None) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def _cents(rng: random.Random) -> Decimal:
    return Decimal(rng.randrange(100, 100_000)).scaleb(-2)


class ErpSandbox:
    """Writes and reads the ERP database at ``url`` (made by :func:`create_erp`)."""

    def __init__(self, url: str) -> None:
        self.url = url

    @property
    def reader_url(self) -> str:
        """The same database, as the read-only ``erp_reader``."""
        return reader_url(self.url)

    @contextlib.asynccontextmanager
    async def _connect(self) -> AsyncIterator[asyncpg.Connection]:
        conn = await asyncpg.connect(self.url)
        try:
            yield conn
        finally:
            await conn.close()

    async def seed(self, skus: int, *, seed: int = 0, ties: int = 50) -> None:
        """Replace every row by ``skus`` generated items ``SKU-000000``… in the default
        warehouse; each run of ``ties`` consecutive SKUs shares one ``last_modified``.

        The same arguments give the same rows. Written by COPY: 500,000 rows take seconds.
        """
        if skus < 0 or ties < 1:
            raise ValueError("skus must be >= 0 and ties >= 1")
        async with self._connect() as conn:
            async with conn.transaction():
                await conn.execute(LOCK_FOR_CHANGES)
                await conn.execute("TRUNCATE erp_item")
                await conn.copy_records_to_table(
                    "erp_item",
                    records=_generated(skus, seed, ties),
                    columns=["sku", "warehouse", "qty_on_hand", "unit_price", "last_modified"],
                )
            await conn.execute("ANALYZE erp_item")  # the poller's plans see the real size

    async def mutate(self, n: int, *, seed: int, same_timestamp: bool = True) -> list[str]:
        """Change the quantity (and a quarter of the time the price) of ``n`` random rows,
        stamped later than every row before: all with one new timestamp, or each with its
        own. Returns the changed SKUs in the order the view now sorts them."""
        rng = random.Random(seed)  # noqa: S311 - test data
        async with self._connect() as conn, conn.transaction():
            await conn.execute(LOCK_FOR_CHANGES)
            total = await conn.fetchval("SELECT count(*) FROM erp_item")
            picks = rng.sample(range(1, total + 1), min(max(n, 0), total))
            if not picks:
                return []
            keys = [(r["sku"], r["warehouse"]) for r in await conn.fetch(PICK_ROWS, picks)]
            rng.shuffle(keys)  # the order of distinct timestamps
            start: datetime = await conn.fetchval(NEXT_STAMP)
            step = timedelta(0) if same_timestamp else timedelta(milliseconds=1)
            stamps = [start + i * step for i in range(len(keys))]
            quantities = [rng.randrange(1000) for _ in keys]
            prices = [_cents(rng) if rng.random() < 0.25 else None for _ in keys]
            await conn.execute(
                APPLY_CHANGES,
                [k[0] for k in keys],
                [k[1] for k in keys],
                quantities,
                prices,
                stamps,
            )
        ordered = sorted(zip(stamps, keys, strict=True))
        return [sku for _, (sku, _warehouse) in ordered]

    async def set(
        self,
        sku: str,
        on_hand: int | None,
        *,
        price: Decimal | int | float | str | None = None,
        at: datetime | None = None,
        warehouse: str = DEFAULT_WAREHOUSE,
    ) -> datetime:
        """Create or change one row, as given: negative or missing values too (bad data).

        ``price=None`` keeps the row's price (a new row has none). ``at=None`` stamps it
        later than every row before; an explicit ``at`` is taken as it is, even if older.
        Returns the row's ``last_modified``.
        """
        async with self._connect() as conn, conn.transaction():
            await conn.execute(LOCK_FOR_CHANGES)
            stamp: datetime = at if at is not None else await conn.fetchval(NEXT_STAMP)
            await conn.execute(UPSERT_ITEM, sku, warehouse, on_hand, _money(price), stamp)
        return stamp

    async def rows(self) -> list[dict[str, Any]]:
        """Every row as the view shows it, in keyset order (last_modified, sku, location)."""
        async with self._connect() as conn:
            return [dict(r) for r in await conn.fetch(ALL_ROWS)]

    async def count(self) -> int:
        async with self._connect() as conn:
            total: int = await conn.fetchval("SELECT count(*) FROM erp_item")
            return total


def _generated(
    skus: int, seed: int, ties: int
) -> Iterator[tuple[str, str, int, Decimal, datetime]]:
    rng = random.Random(seed)  # noqa: S311 - test data
    stamp = SEED_START
    for i in range(skus):
        if i and i % ties == 0:
            stamp += timedelta(seconds=1)
        yield (f"SKU-{i:06d}", DEFAULT_WAREHOUSE, rng.randrange(1000), _cents(rng), stamp)


async def simulate(
    admin_url: str,
    name: str | None,
    skus: int,
    mutate_every_s: float,
    mutate_n: int,
    *,
    seed: int = 0,
    rounds: int | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> str:
    """Create (or reuse) the ERP ``name``, seed it if it is empty, say its URL (print
    it, or call ``on_ready`` with it), then change ``mutate_n`` rows every
    ``mutate_every_s`` seconds, ``rounds`` times (None: until cancelled). Returns the URL.

    A round that cannot reach the database (its server restarted, say) is skipped with
    one line on stderr; each round connects afresh, so the next one picks up again."""
    url = await create_erp(admin_url, name)
    erp = ErpSandbox(url)
    if await erp.count() == 0:
        await erp.seed(skus, seed=seed)
    if on_ready is None:
        print(url, flush=True)  # the answer, on stdout for scripts
    else:
        on_ready(url)
    done = 0
    while rounds is None or done < rounds:
        await asyncio.sleep(mutate_every_s)
        try:
            changed = await erp.mutate(mutate_n, seed=(seed << 32) + done)
        except UNREACHABLE as exc:
            print(f"ERP database unreachable ({exc!r}); trying again", file=sys.stderr)
            continue
        finally:
            done += 1
        print(f"changed {len(changed)} rows", file=sys.stderr, flush=True)
    return url


def run(
    admin_url: str,
    name: str | None = None,
    skus: int = 10_000,
    mutate_every_s: float = 5.0,
    mutate_n: int = 100,
    seed: int = 0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run a sandbox ERP in the foreground until interrupted (see :func:`simulate`):
    Ctrl-C or SIGTERM (a supervisor's, ``kill``) stop it alike, so the caller's clean-up
    runs (the CLI stops the embedded server it joined, when it is its last user). The
    database is kept afterwards; run again with the same ``name`` to reuse it."""
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(
            _until_terminated(
                simulate(
                    admin_url, name, skus, mutate_every_s, mutate_n, seed=seed, on_ready=on_ready
                )
            )
        )


async def _until_terminated(work: Coroutine[Any, Any, object]) -> None:
    """Run ``work``; SIGTERM cancels it as asyncio.run's own Ctrl-C handling does (the
    event loop's signal handler, never an exception thrown into whatever code runs)."""
    task = asyncio.current_task()
    if task is None or threading.current_thread() is not threading.main_thread():
        await work
        return
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
