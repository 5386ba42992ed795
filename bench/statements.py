"""Statements (round trips) per use case, counted on the connection that runs it.

Each use case gets a connection with an asyncpg query logger and runs on it as it would
on its own (``BEGIN`` ... ``COMMIT`` included); the pool's reset on release (asyncpg's
default ``Connection.reset()``, one more round trip per checkout) is counted apart. The
coalesced row runs the set-based batch the coalescer uses (``BatchReserver``, D-290)
over a batch of ``--batch`` one-line orders and reports statements per request.

    python bench/statements.py
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import harness
from harness import DEFAULT_ADMIN_URL, Databases
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.reserve_batch import BatchReserver
from stockkeeper.services.stock import Adjustment, Receipt
from stockkeeper.store.pool import Conn


async def counted(c: Container, use: Callable[[Conn], Awaitable[Any]]) -> Counter[str]:
    seen: Counter[str] = Counter()

    def log(record: Any) -> None:
        word = record.query.strip().split(None, 1)[0].upper() if record.query.strip() else "?"
        seen[word] += 1

    async with c.pool.acquire() as conn:
        conn.add_query_logger(log)
        try:
            await use(conn)
        finally:
            conn.remove_query_logger(log)
    return seen


async def amain(args: argparse.Namespace) -> None:
    run = secrets.token_hex(4)
    async with Databases(args.database_url) as dbs:
        url = await dbs.create(f"bench_{run}_statements")
        cfg = {
            "database": {"url": url, "pool_size": 3},
            "api": {"tokens": [{"token": harness.TOKEN, "scopes": ["admin"]}]},
            "data_dir": tempfile.mkdtemp(prefix="stockkeeper-statements-"),
            "concurrency": {"strategy": args.strategy},
        }
        c = await build(Settings.model_validate(cfg))
        try:
            await c.stock.receive(Receipt("S-1", 1000, "seed-1"))
            await c.stock.receive(Receipt("S-2", 1000, "seed-2"))
            one = ReserveRequest("o-1", (OrderLine("S-1", 1),))
            rows: list[tuple[str, Counter[str], int]] = [
                (
                    "receipt",
                    await counted(c, lambda k: c.stock.receive(Receipt("S-1", 5, "r-x"), k)),
                    1,
                ),
                (
                    "adjustment",
                    await counted(
                        c,
                        lambda k: c.stock.adjust(
                            Adjustment("S-1", "unavailable", "count", "a-x", delta=1), k
                        ),
                    ),
                    1,
                ),
                ("reserve (1 line)", await counted(c, lambda k: c.reservations.reserve(one, k)), 1),
                (
                    "reserve repeat",
                    await counted(c, lambda k: c.reservations.reserve(one, k)),
                    1,
                ),
                ("confirm", await counted(c, lambda k: c.reservations.confirm("o-1", k)), 1),
                ("fulfil", await counted(c, lambda k: c.reservations.fulfil("o-1", k)), 1),
            ]
            await c.reservations.reserve(ReserveRequest("o-2", (OrderLine("S-2", 1),)))
            rows.append(
                ("release", await counted(c, lambda k: c.reservations.release("o-2", None, k)), 1)
            )
            batch = [
                ReserveRequest(f"b-{i}", (OrderLine("S-1" if i % 2 else "S-2", 1),))
                for i in range(args.batch)
            ]
            rows.append(
                (
                    f"coalesced reserve, batch of {args.batch}",
                    await counted(
                        c, lambda k: BatchReserver(c.reservations).reserve_batch(batch, conn=k)
                    ),
                    args.batch,
                )
            )
        finally:
            await c.close()
    print(f"strategy {args.strategy}; +1 reset query per pool checkout (asyncpg default)\n")
    print("| use case | statements | per request | of which |")
    print("|---|---:|---:|---|")
    for name, seen, n in rows:
        total = sum(seen.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(seen.items()))
        print(f"| {name} | {total} | {total / n:.1f} | {parts} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    p.add_argument("--strategy", default="conditional")
    p.add_argument("--batch", type=int, default=20)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
