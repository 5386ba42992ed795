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
import contextlib
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any

import harness
from harness import DEFAULT_ADMIN_URL, Databases
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import DomainError
from stockkeeper.services import idempotency
from stockkeeper.services.idempotency import Answer, IdempotencyKey
from stockkeeper.services.orders import PlaceOrder
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.reserve_batch import BatchReserver
from stockkeeper.services.stock import Adjustment, Receipt
from stockkeeper.store.pool import Conn
from stockkeeper.store.roundtrips import Statements, count

Use = Callable[[Conn, Any, str], Awaitable[Any]]
SHIP_TO = {"name": "Ada", "line1": "Unter den Linden 1", "city": "Berlin", "country": "DE"}


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

            def keyed(
                name: str,
                run_: Callable[[Conn, str], Awaitable[Any]],
                *,
                one_statement: bool = False,
            ) -> Use:
                """``run_(conn, n)`` through ``idempotency.once``, a key of its own;
                ``one_statement`` as api/ runs placing an order (D-366)."""

                async def use(conn: Conn, pool: Any, n: str) -> Any:
                    key = IdempotencyKey("bench", f"{name}-{n}", "POST", f"/{name}", "fp")

                    async def recorded(k: Conn) -> Answer:
                        try:
                            await run_(k, n)
                        except DomainError as exc:  # an error answer, as api/ gives it
                            return Answer(409, {"type": exc.slug})
                        return Answer(201, {"n": n})

                    def render(_result: Any) -> Answer:
                        return Answer(201, {"n": n})

                    return await idempotency.once(
                        pool, key, recorded, render=render if one_statement else None
                    )

                return use

            async def refused(k: Conn, order: str) -> Any:
                """A reservation refused (409, insufficient stock): its error answer."""
                with contextlib.suppress(DomainError):
                    await r.reserve(ReserveRequest(order, (OrderLine("S-1", 10**6),)), k)

            async def awaiting_payment(order: str) -> None:
                await c.orders.place(PlaceOrder(order, (OrderLine("S-2", 1),), SHIP_TO))
                async with c.pool.acquire() as k, k.transaction():
                    await c.orders.reserve(k, order)

            def place(k: Conn, order: str) -> Any:
                return c.orders.place(PlaceOrder(order, (OrderLine("S-2", 1),), SHIP_TO), k)

            def pay(k: Conn, order: str) -> Any:
                return c.orders.pay(order, succeeded=True, reference=f"pay-{order}", conn=k)

            def adjustment(k: Conn, ref: str) -> Any:
                return c.stock.adjust(Adjustment("S-1", "unavailable", "count", ref, delta=1), k)

            # (name, use(conn, lent_pool, n)): the run "warm" first, then "n" (counted).
            # Orders o-n (plain) and ok-n (keyed) are reserved, then confirmed and
            # fulfilled; p-n and pk-n are reserved before and released.
            cases: list[tuple[str, Use]] = [
                ("receipt", lambda k, _p, n: receipt(k, f"r-{n}")),
                ("receipt, Idempotency-Key", keyed("receipt", lambda k, n: receipt(k, f"rk-{n}"))),
                ("adjustment", lambda k, _p, n: adjustment(k, f"a-{n}")),
                (
                    "adjustment, Idempotency-Key",
                    keyed("adjustment", lambda k, n: adjustment(k, f"ak-{n}")),
                ),
                ("reserve (1 line)", lambda k, _p, n: reserve(k, f"o-{n}")),
                ("reserve, Idempotency-Key", keyed("reserve", lambda k, n: reserve(k, f"ok-{n}"))),
                ("reserve repeat", lambda k, _p, n: reserve(k, f"o-{n}")),
                (
                    "reserve repeat, Idempotency-Key",
                    keyed("repeat", lambda k, n: reserve(k, f"o-{n}")),
                ),
                ("confirm", lambda k, _p, n: r.confirm(f"o-{n}", k)),
                (
                    "confirm, Idempotency-Key",
                    keyed("confirm", lambda k, n: r.confirm(f"ok-{n}", k)),
                ),
                ("fulfil", lambda k, _p, n: r.fulfil(f"o-{n}", k)),
                ("fulfil, Idempotency-Key", keyed("fulfil", lambda k, n: r.fulfil(f"ok-{n}", k))),
                ("release", lambda k, _p, n: r.release(f"p-{n}", None, k)),
                (
                    "release, Idempotency-Key",
                    keyed("release", lambda k, n: r.release(f"pk-{n}", None, k)),
                ),
                ("reserve refused (409)", lambda k, _p, n: refused(k, f"x-{n}")),
                (
                    "reserve refused (409), Idempotency-Key",
                    keyed("refused", lambda k, n: refused(k, f"xk-{n}")),
                ),
                # The orders: placed, paid (o-n, ok-n), cancelled (c-n, ck-n).
                ("place order", lambda k, _p, n: place(k, f"order-{n}")),
                (
                    "place order, Idempotency-Key",
                    keyed("place", lambda k, n: place(k, f"order-k-{n}"), one_statement=True),
                ),
                ("pay order", lambda k, _p, n: pay(k, f"order-p-{n}")),
                ("pay order, Idempotency-Key", keyed("pay", lambda k, n: pay(k, f"order-pk-{n}"))),
                ("cancel order", lambda k, _p, n: c.orders.cancel(f"order-c-{n}", None, k)),
                (
                    "cancel order, Idempotency-Key",
                    keyed("cancel", lambda k, n: c.orders.cancel(f"order-ck-{n}", None, k)),
                ),
            ]
            for n in ("warm", "n"):
                await r.reserve(ReserveRequest(f"p-{n}", (OrderLine("S-2", 1),)))
                await r.reserve(ReserveRequest(f"pk-{n}", (OrderLine("S-2", 1),)))
                for order in ("p", "pk", "c", "ck"):
                    await awaiting_payment(f"order-{order}-{n}")
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
