"""Repository for ``connector_state``: each polled connector's circuit breaker, shared
by every process, every connector's last failure (a poll, push or sync), and the
per-connector overview (with its cursor) for the status page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from stockkeeper.store.errors import translated
from stockkeeper.store.pool import Conn
from stockkeeper.store.sql import q


@dataclass(frozen=True, slots=True)
class Circuit:
    state: str
    failures: int
    opened_at: datetime | None


@dataclass(frozen=True, slots=True)
class Failure:
    """A connector's last failed poll, push or sync, and when it happened."""

    message: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Overview:
    """One connector's cursor and breaker; a field is None where nothing was saved yet."""

    connector: str
    last_modified: datetime | None
    sku: str | None
    token: str | None
    pages: int | None
    records: int | None
    cursor_updated_at: datetime | None
    circuit: str | None
    failures: int | None
    opened_at: datetime | None
    last_error: str | None
    last_failure: Failure | None


@translated
async def circuit(conn: Conn, connector: str) -> Circuit | None:
    row = await conn.fetchrow(q("circuit_state"), connector)
    if row is None:
        return None
    return Circuit(row["circuit"], row["failures"], row["opened_at"])


@translated
async def save_circuit(conn: Conn, connector: str, c: Circuit, error: str | None) -> None:
    await conn.execute(q("save_circuit"), connector, c.state, c.failures, c.opened_at, error)


@translated
async def overview(conn: Conn, connectors: Sequence[str]) -> list[Overview]:
    rows = await conn.fetch(q("connector_states"), list(connectors))
    return [
        Overview(
            r["connector"],
            r["last_modified"],
            r["sku"],
            r["token"],
            r["pages"],
            r["records"],
            r["updated_at"],
            r["circuit"],
            r["failures"],
            r["opened_at"],
            r["last_error"],
            Failure(r["last_failure"], r["last_failure_at"]) if r["last_failure_at"] else None,
        )
        for r in rows
    ]


@translated
async def record_failure(conn: Conn, connector: str, message: str, at: datetime) -> None:
    """Keep ``message`` as the connector's last failure (an older one never replaces a
    newer one)."""
    await conn.execute(q("record_failure"), connector, message[:2000], at)


@translated
async def last_failures(conn: Conn, connectors: Sequence[str]) -> dict[str, Failure]:
    rows = await conn.fetch(q("last_failures"), list(connectors))
    return {r["connector"]: Failure(r["last_failure"], r["last_failure_at"]) for r in rows}
