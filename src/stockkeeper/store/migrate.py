"""Versioned migrations: ``migrations/NNNN_name.sql``, applied in order, each once.

Two processes starting at once are safe: the whole run holds an advisory lock, so the
second waits and then finds nothing left to do.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from stockkeeper.store.pool import Conn, mark_session_state

# Any fixed 64-bit number; "stockkeeper migrate" in ASCII, truncated.
MIGRATION_LOCK_ID = 0x73746F636B6D6967

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def available() -> list[Migration]:
    folder = resources.files("stockkeeper.store") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions: {versions}")
    return found


async def migrate(
    conn: Conn, on_step: Callable[[Migration], None] | None = None
) -> list[Migration]:
    """Apply every pending migration; return the ones applied by this call.

    ``on_step`` is told of each of ``available()`` once it is in place (applied now or
    before): a progress bar's tick."""
    applied: list[Migration] = []
    mark_session_state(conn)
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_ID)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migration (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migration")
        }
        for mig in available():
            if mig.version in done:
                if done[mig.version] != mig.checksum:
                    raise RuntimeError(
                        f"migration {mig.version:04d}_{mig.name} was changed after it was "
                        "applied; add a new migration instead"
                    )
                if on_step is not None:
                    on_step(mig)
                continue
            async with conn.transaction():
                await conn.execute(mig.sql)
                await conn.execute(
                    "INSERT INTO schema_migration (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            applied.append(mig)
            if on_step is not None:
                on_step(mig)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_ID)
    return applied
