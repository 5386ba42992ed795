"""Statements (round trips) a piece of work sends, counted on its connection: what
``bench/statements.py`` reports and the round-trip tests bound (D-300).

An asyncpg query logger on the connection sees every statement, ``BEGIN``, ``COMMIT``
and savepoints included, and, kept on until the pool took the connection back, the
pool's reset on release too (counted apart).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from stockkeeper.store.pool import Conn, Pool


@dataclass(slots=True)
class Statements:
    """What one piece of work sent: by first word, and after it, on release."""

    by_word: Counter[str] = field(default_factory=Counter)
    queries: list[str] = field(default_factory=list)
    on_release: int = 0

    @property
    def total(self) -> int:
        return sum(self.by_word.values())

    def parts(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(self.by_word.items()))


def _word(query: str) -> str:
    """The statement's first SQL word (a named query's leading comments skipped)."""
    for line in query.strip().splitlines():
        line = line.strip()
        if line and not line.startswith("--"):
            return line.split(None, 1)[0].upper().rstrip(";")
    return "?"


class _Lent:
    """A pool of one connection, for code that takes a pool (``idempotency.once``)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Conn]:
        yield self.conn


async def count(pool: Pool, use: Callable[[Conn, Any], Awaitable[Any]]) -> Statements:
    """Run ``use(conn, lent_pool)`` on one connection of ``pool`` and count what it sent.
    ``lent_pool`` hands out that same connection, for code that acquires its own."""
    seen = Statements()
    releasing = False

    def log(record: Any) -> None:
        if releasing:
            seen.on_release += 1
            return
        seen.by_word[_word(record.query)] += 1
        seen.queries.append(record.query)

    def release_begins() -> None:
        nonlocal releasing
        releasing = True

    loop = asyncio.get_running_loop()
    async with pool.acquire() as conn:
        # The connection itself, so the logger can stay on through the pool's reset.
        raw = getattr(conn, "_con", conn)
        raw.add_query_logger(log)
        try:
            await use(conn, _Lent(conn))
        finally:
            # asyncpg calls loggers with call_soon: this mark comes after every
            # statement sent so far and before the reset's.
            loop.call_soon(release_begins)
    for _ in range(3):
        await asyncio.sleep(0)
    raw.remove_query_logger(log)
    return seen
