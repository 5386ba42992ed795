"""Migrations on a real, empty PostgreSQL database: concurrent starts, changed files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from stockkeeper.store.migrate import MIGRATION_LOCK_ID, available, migrate
from stockkeeper.store.sql import queries
from tests.support import scratch_database

WAITING_ON_ADVISORY = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
HELD_ADVISORY = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
async def empty_db(admin_url: str) -> AsyncIterator[str]:
    """A brand-new database with no schema at all."""
    async with scratch_database(admin_url, "sk_migrate") as url:
        yield url


async def wait_for_waiters(conn: asyncpg.Connection, n: int, timeout: float = 10.0) -> None:
    """Until ``n`` sessions wait on an advisory lock. Each probe is a round trip to the
    server, during which the waiting tasks run; no sleeping."""
    deadline = time.monotonic() + timeout
    while await conn.fetchval(WAITING_ON_ADVISORY) < n:
        if time.monotonic() > deadline:
            raise AssertionError(f"{n} migrate() calls never queued on the advisory lock")


def test_there_are_migrations() -> None:
    migs = available()
    assert migs, "no migrations found"
    assert [m.version for m in migs] == sorted({m.version for m in migs})
    assert migs[0].version == 1
    for m in migs:
        assert len(m.checksum) == 64


async def test_two_concurrent_migrations_apply_each_once(empty_db: str) -> None:
    blocker, a, b = [await asyncpg.connect(empty_db) for _ in range(3)]
    try:
        # Hold the migration lock so both calls are certainly running at the same
        # time and queued on it, then let them go together.
        await blocker.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
        first = asyncio.create_task(migrate(a))
        second = asyncio.create_task(migrate(b))
        await wait_for_waiters(blocker, 2)
        assert not first.done()
        assert not second.done()
        await blocker.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        applied_a, applied_b = await asyncio.wait_for(asyncio.gather(first, second), 30)

        versions = [m.version for m in available()]
        got = sorted([m.version for m in applied_a] + [m.version for m in applied_b])
        assert got == versions, "each migration is applied by exactly one caller"
        assert [] in (applied_a, applied_b), "one caller did everything, the other nothing"

        rows = await blocker.fetch("SELECT version, name, checksum FROM schema_migration")
        assert sorted(r["version"] for r in rows) == versions
        by_version = {m.version: m for m in available()}
        for r in rows:
            assert r["name"] == by_version[r["version"]].name
            assert r["checksum"] == by_version[r["version"]].checksum
        # The schema is really there, and the lock was given back.
        assert await blocker.fetchval("SELECT count(*) FROM location") >= 1
        assert await blocker.fetchval(HELD_ADVISORY) == 0
        # A third start finds nothing to do.
        assert await migrate(a) == []
    finally:
        for c in (blocker, a, b):
            await c.close()


async def test_concurrent_migrations_without_a_head_start(empty_db: str) -> None:
    conns = [await asyncpg.connect(empty_db) for _ in range(4)]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(migrate(c) for c in conns)), 30)
        assert sorted(m.version for r in results for m in r) == [m.version for m in available()]
        count = await conns[0].fetchval("SELECT count(*) FROM schema_migration")
        assert count == len(available())
    finally:
        for c in conns:
            await c.close()


async def test_changed_checksum_is_refused(empty_db: str) -> None:
    conn = await asyncpg.connect(empty_db)
    try:
        assert [m.version for m in await migrate(conn)] == [m.version for m in available()]
        first = available()[0]
        await conn.execute(
            "UPDATE schema_migration SET checksum = $1 WHERE version = $2",
            "0" * 64,
            first.version,
        )
        with pytest.raises(RuntimeError, match=f"{first.version:04d}_{first.name} was changed"):
            await migrate(conn)
        # The refusal let go of the lock: another session can take it at once.
        assert await conn.fetchval(HELD_ADVISORY) == 0
        other = await asyncpg.connect(empty_db)
        try:
            assert await other.fetchval("SELECT pg_try_advisory_lock($1)", MIGRATION_LOCK_ID)
            await other.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
        finally:
            await other.close()
        # Nothing was re-applied or recorded twice.
        assert await conn.fetchval("SELECT count(*) FROM schema_migration") == len(available())
    finally:
        await conn.close()


async def test_every_named_query_prepares_against_the_schema(empty_db: str) -> None:
    """Each query in store/queries names real tables, columns and types."""
    conn = await asyncpg.connect(empty_db)
    try:
        await migrate(conn)
        failures: dict[str, str] = {}
        for name, text in queries().items():
            try:
                await conn.prepare(text)
            except asyncpg.PostgresError as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
        assert not failures, failures
    finally:
        await conn.close()
