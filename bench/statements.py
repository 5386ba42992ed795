"""Statements (round trips) per use case, counted on the connection that runs it.

Each use case gets a connection with an asyncpg query logger and runs on it as it would
on its own (``BEGIN`` ... ``COMMIT`` included); what the pool sends when it takes the
connection back (its reset) is counted apart, per checkout. Each use case runs twice on
one connection and the second run is counted: every statement is prepared by then, as
on a server that has been up a while (the first run on a connection also prepares them
and introspects a type or two). The keyed rows run the use case through
``idempotency.once`` (an Idempotency-Key). The coalesced row runs the set-based batch
the coalescer uses (``BatchReserver``, D-290) over a batch of ``--batch`` one-line
orders and reports statements per request.

    python bench/statements.py
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import harness
from harness import DEFAULT_ADMIN_URL, Databases
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services import idempotency
from stockkeeper.services.idempotency import Answer, IdempotencyKey
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.reserve_batch import BatchReserver
from stockkeeper.services.stock import Adjustment, Receipt
from stockkeeper.store.pool import Conn
from stockkeeper.store.roundtrips import Statements, count

Use = Callable[[Conn, Any, str], Awaitable[Any]]


async def measure(c: Container, use: Use, n: str) -> Statements:
    return await count(c.pool, lambda conn, lent: use(conn, lent, n))


async def amain(args: argparse.Namespace) -> None:
    run = secrets.token_hex(4)
    async with Databases(args.database_url) as dbs:
        url = await dbs.create(f"bench_{run}_statements")
        cfg = {
            "database": {"url": url, "pool_size": 1},
            "api": {"tokens": [{"token": harness.TOKEN, "scopes": ["admin"]}]},
            "data_dir": tempfile.mkdtemp(prefix="stockkeeper-statements-"),
            "concurrency": {"strategy": args.strategy},
        }
        c = await build(Settings.model_validate(cfg))
        rows: list[tuple[str, Statements, int]] = []
        try:
            await c.stock.receive(Receipt("S-1", 1000, "seed-1"))
            await c.stock.receive(Receipt("S-2", 1000, "seed-2"))
            r = c.reservations

            async def reserve(k: Conn, order: str, sku: str = "S-1") -> Any:
                return await r.reserve(ReserveRequest(order, (OrderLine(sku, 1),)), k)

            async def receipt(k: Conn, ref: str) -> Any:
                return await c.stock.receive(Receipt("S-1", 5, ref), k)

            def keyed(name: str, run_: Callable[[Conn, str], Awaitable[Any]]) -> Use:
                async def use(conn: Conn, pool: Any, n: str) -> Any:
                    key = IdempotencyKey("bench", f"{name}-{n}", "POST", f"/{name}", "fp")

                    async def recorded(k: Conn) -> Answer:
                        await run_(k, f"{name}-{n}")
                        return Answer(201, {"n": n})

                    return await idempotency.once(pool, key, recorded)

                return use

            # (name, use(conn, lent_pool, n), prepare(n)): the run "warm" first, then "n".
            cases: list[tuple[str, Use]] = [
                ("receipt", lambda k, _p, n: receipt(k, f"r-{n}")),
                ("receipt, Idempotency-Key", keyed("receipt", receipt)),
                (
                    "adjustment",
                    lambda k, _p, n: c.stock.adjust(
                        Adjustment("S-1", "unavailable", "count", f"a-{n}", delta=1), k
                    ),
                ),
                ("reserve (1 line)", lambda k, _p, n: reserve(k, f"o-{n}")),
                ("reserve repeat", lambda k, _p, n: reserve(k, f"o-{n}")),
                ("reserve, Idempotency-Key", keyed("reserve", reserve)),
                ("confirm", lambda k, _p, n: r.confirm(f"o-{n}", k)),
                ("fulfil", lambda k, _p, n: r.fulfil(f"o-{n}", k)),
                ("release", lambda k, _p, n: r.release(f"p-{n}", None, k)),
            ]
            for n in ("warm", "n"):
                await r.reserve(ReserveRequest(f"p-{n}", (OrderLine("S-2", 1),)))
                for name, use in cases:
                    seen = await measure(c, use, n)
                    if n == "n":
                        rows.append((name, seen, 1))
            batch = [
                ReserveRequest(f"b-{i}", (OrderLine("S-1" if i % 2 else "S-2", 1),))
                for i in range(args.batch)
            ]
            rows.append(
                (
                    f"coalesced reserve, batch of {args.batch}",
                    await count(
                        c.pool,
                        lambda k, _p: BatchReserver(c.reservations).reserve_batch(batch, conn=k),
                    ),
                    args.batch,
                )
            )
        finally:
            await c.close()
    print(f"strategy {args.strategy}; second run on a connection (statements prepared)\n")
    print("| use case | statements | per request | on release | of which |")
    print("|---|---:|---:|---:|---|")
    for name, seen, n in rows:
        print(
            f"| {name} | {seen.total} | {seen.total / n:.1f} | {seen.on_release} | {seen.parts()} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    p.add_argument("--strategy", default="conditional")
    p.add_argument("--batch", type=int, default=20)
    asyncio.run(amain(p.parse_args()))


if __name__ == "__main__":
    main()
