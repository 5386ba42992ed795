"""Soak: the whole system (``stockkeeper up``) at a steady mixed load for ``--minutes``.

Prints, once a minute: rows and on-disk size (table + indexes) of the tables that grow
with traffic, p50/p99 latency of ``POST /inventory/reserve`` over that minute, and the
dispatcher's lag (commit of an event to its publish, p50/p99 over that minute, and the
age of the oldest PENDING event). With a short retention (``--retention-s``) the pruned
tables should level off once the first rows pass it; the ledger grows by design.

    python bench/soak.py --minutes 3 --retention-s 60 --retention-interval-s 10

The load, per second: ``--rate`` reservations of one unit of a random SKU (each with an
Idempotency-Key), of which half are released and half confirmed a little later, and
``--rate / 10`` receipts. Every event goes through the outbox, RabbitMQ (or the
embedded queue when RabbitMQ is not there) and the consumers (propagator, wms-outbound,
saga...), so ``processed_message`` and ``consumer_position`` fill as in production.
When the server has autovacuum off, the script VACUUMs the tables after each minute's
figures, as autovacuum would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

import harness
from harness import (
    DEFAULT_ADMIN_URL,
    DEFAULT_AMQP_URL,
    TOKEN,
    Databases,
    Proc,
    fmt,
    free_port,
    markdown_table,
    percentile,
    rabbit_ok,
    stamp_now,
    write_results,
)

# The tables retention prunes, then the ones that grow by design or churn.
TABLES = (
    "domain_event",
    "processed_message",
    "consumer_position",
    "idempotency_key",
    "inventory_ledger",
    "reservation",
    "queue_message",
)
STOCK_PER_SKU = 10_000_000
# No built-in consumer drops stale events, so consumer_position would stay empty: a
# consumer of our own (``stockkeeper consume --drop-stale``) shares channel.propagation.
LEVELS_CONSUMER = ["consume", "channel.propagation", "soak:apply_level"]
LEVELS_ARGS = ["--name", "soak-levels", "--drop-stale"]
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def apply_level(conn: Any, env: Any) -> None:
    """The soak's own consumer: its effect is its processed mark and SKU position."""


@dataclass
class Load:
    """What the load generator saw, appended as it goes."""

    reserve_ms: list[tuple[float, float]] = field(default_factory=list)  # (at, ms)
    errors: dict[str, int] = field(default_factory=dict)
    requests: int = 0

    def count_error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def config(
    args: argparse.Namespace, db_url: str, workdir: Path, amqp: str | None
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "data_dir": str(workdir / "data"),
        "database": {"url": db_url, "pool_size": args.pool_size},
        "broker": {
            "url": amqp,
            "prefix": f"soak{uuid.uuid4().hex[:8]}.",
            # A short redelivery window, so a short retention is allowed.
            "retry_base_ms": 100,
            "retry_max_ms": 1000,
            "max_attempts": 3,
            "lease_ms": 10_000,
        },
        "api": {
            "inventory_port": free_port(),
            "admin_port": free_port(),
            "tokens": [
                {
                    "name": "bench",
                    "token": TOKEN,
                    "scopes": ["inventory:read", "inventory:write", "admin"],
                }
            ],
        },
        "monitoring": {"metrics_port": 0},
        "logging": {"level": "warning"},
    }
    if args.retention_s is not None:
        keep = args.retention_s
        cfg["retention"] = {
            "outbox_sent_s": keep,
            "processed_message_s": keep,
            "consumer_position_s": keep,
            "interval_s": args.retention_interval_s,
        }
        cfg["api"]["idempotency_ttl_seconds"] = keep
    return cfg


async def seed(client: httpx.AsyncClient, skus: list[str]) -> None:
    sem = asyncio.Semaphore(16)

    async def one(sku: str) -> None:
        async with sem:
            r = await client.post(
                "/inventory/receipts",
                json={"sku": sku, "quantity": STOCK_PER_SKU, "reference_id": f"seed-{sku}"},
            )
            if r.status_code != 201:
                raise RuntimeError(f"seed receipt {sku}: {r.status_code} {r.text[:200]}")

    await asyncio.gather(*(one(s) for s in skus))


async def reserve_then_settle(client: httpx.AsyncClient, skus: list[str], load: Load) -> None:
    order = f"soak-{uuid.uuid4().hex}"
    body = {"order_id": order, "lines": [{"sku": random.choice(skus), "quantity": 1}]}
    t0 = time.perf_counter()
    try:
        r = await client.post("/inventory/reserve", json=body, headers={"Idempotency-Key": order})
    except httpx.HTTPError as exc:
        load.count_error(type(exc).__name__)
        return
    load.reserve_ms.append((time.monotonic(), (time.perf_counter() - t0) * 1000))
    load.requests += 1
    if r.status_code not in (200, 201):
        load.count_error(f"reserve {r.status_code}")
        return
    await asyncio.sleep(random.uniform(0.5, 2.0))  # the shopper's pause, not a race
    path = "/inventory/release" if random.random() < 0.5 else "/inventory/confirm"
    try:
        r = await client.post(path, json={"order_id": order})
    except httpx.HTTPError as exc:
        load.count_error(type(exc).__name__)
        return
    load.requests += 1
    if r.status_code >= 300:
        load.count_error(f"{path} {r.status_code}")


async def receipt(client: httpx.AsyncClient, skus: list[str], load: Load) -> None:
    ref = f"r-{uuid.uuid4().hex}"
    try:
        r = await client.post(
            "/inventory/receipts",
            json={"sku": random.choice(skus), "quantity": 5, "reference_id": ref},
        )
    except httpx.HTTPError as exc:
        load.count_error(type(exc).__name__)
        return
    load.requests += 1
    if r.status_code != 201:
        load.count_error(f"receipt {r.status_code}")


async def drive(
    client: httpx.AsyncClient, skus: list[str], rate: float, until: float, load: Load
) -> None:
    """An open loop: ``rate`` reservations per second whatever the answers take."""
    tasks: set[asyncio.Task[None]] = set()
    tick = 0
    start = time.monotonic()
    while time.monotonic() < until:
        tick += 1
        jobs = [reserve_then_settle(client, skus, load) for _ in range(int(rate))]
        if tick % 10 == 0:
            jobs += [receipt(client, skus, load) for _ in range(max(1, int(rate)))]
        for job in jobs:
            t = asyncio.create_task(job)
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        await asyncio.sleep(max(0.0, start + tick - time.monotonic()))
    if tasks:
        await asyncio.gather(*tasks)


async def sample(db: asyncpg.Connection) -> dict[str, Any]:
    """Rows and bytes per table, and the dispatcher's lag over the last minute."""
    tables = {}
    for t in TABLES:
        row = await db.fetchrow(
            f"SELECT (SELECT count(*) FROM {t}) AS n, pg_table_size('{t}') AS heap, "
            f"pg_indexes_size('{t}') AS idx"
        )
        tables[t] = {"rows": row["n"], "table_bytes": row["heap"], "index_bytes": row["idx"]}
    lag = await db.fetchrow(
        """
        SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99,
               count(*) AS sent
        FROM (SELECT EXTRACT(EPOCH FROM sent_at - occurred_at) * 1000 AS ms
              FROM domain_event
              WHERE status = 'SENT' AND sent_at > now() - interval '60 seconds') AS s
        """
    )
    pending = await db.fetchrow(
        "SELECT count(*) AS n, EXTRACT(EPOCH FROM now() - min(occurred_at))::float8 AS oldest "
        "FROM domain_event WHERE status = 'PENDING'"
    )
    return {
        "tables": tables,
        "dispatch_lag_p50_ms": lag["p50"],
        "dispatch_lag_p99_ms": lag["p99"],
        "events_sent_last_min": lag["sent"],
        "pending_events": pending["n"],
        "oldest_pending_s": pending["oldest"],
    }


async def vacuum(db: asyncpg.Connection) -> None:
    """Stand in for autovacuum when the server has it off: the space of the rows
    retention deleted is reused only after a VACUUM."""
    for t in TABLES:
        await db.execute(f"VACUUM {t}")


def mb(n: int) -> str:
    return f"{n / 1_048_576:.2f}"


def print_minute(minute: int, s: dict[str, Any]) -> None:
    t = s["tables"]
    cells = " ".join(
        f"{name}={t[name]['rows']}/{mb(t[name]['table_bytes'] + t[name]['index_bytes'])}MB"
        for name in TABLES
    )
    print(
        f"min {minute:>2}: reserve p50 {fmt(s['reserve_p50_ms'], '.1f')} ms "
        f"p99 {fmt(s['reserve_p99_ms'], '.1f')} ms ({s['reserves']} reserves); "
        f"dispatch lag p50 {fmt(s['dispatch_lag_p50_ms'], '.0f')} ms "
        f"p99 {fmt(s['dispatch_lag_p99_ms'], '.0f')} ms, {s['pending_events']} PENDING "
        f"(oldest {fmt(s['oldest_pending_s'], '.1f')} s); {cells}",
        flush=True,
    )


def summary(rows: list[dict[str, Any]]) -> str:
    """The minutes as one markdown table (what bench/README.md shows)."""
    head = ["min", "reserve p50/p99 ms", "lag p50/p99 ms", "PENDING"]
    head += [f"{t} rows / MB" for t in TABLES]
    body = []
    for r in rows:
        t = r["tables"]
        body.append(
            [
                str(r["minute"]),
                f"{fmt(r['reserve_p50_ms'], '.1f')} / {fmt(r['reserve_p99_ms'], '.1f')}",
                f"{fmt(r['dispatch_lag_p50_ms'], '.0f')} / {fmt(r['dispatch_lag_p99_ms'], '.0f')}",
                str(r["pending_events"]),
            ]
            + [
                f"{t[n]['rows']:,} / {mb(t[n]['table_bytes'] + t[n]['index_bytes'])}"
                for n in TABLES
            ]
        )
    return markdown_table(head, body, "r" * len(head))


async def amain(args: argparse.Namespace) -> int:
    amqp = args.amqp_url if not args.embedded and await rabbit_ok(args.amqp_url) else None
    stamp = stamp_now()
    workdir = Path(args.workdir)
    skus = [f"SOAK-{i:05d}" for i in range(args.skus)]
    async with Databases(args.database_url) as dbs:
        name = f"bench_soak_{stamp.lower()}"
        db_url = await dbs.create(name)
        cfg = config(args, db_url, workdir, amqp)
        print(
            f"soak: {args.minutes} min at {args.rate} reserves/s on "
            f"{'RabbitMQ' if amqp else 'the embedded queue'}, retention "
            f"{args.retention_s if args.retention_s is not None else 'default'} s; "
            f"logs in {workdir}",
            flush=True,
        )
        proc = Proc(["up"], workdir, "up", cfg=cfg)
        levels: Proc | None = None
        rows: list[dict[str, Any]] = []
        load = Load()
        try:
            base = f"http://127.0.0.1:{cfg['api']['inventory_port']}"
            await proc.ready(f"{base}/readyz")
            levels = Proc(
                [*LEVELS_CONSUMER, *LEVELS_ARGS],
                workdir,
                "levels",
                cfg=cfg,
                env={"PYTHONPATH": str(harness.HERE)},
            )
            db = await asyncpg.connect(db_url)
            autovacuum = await db.fetchval("SHOW autovacuum") == "on"
            if not autovacuum:
                print(
                    "autovacuum is off on this server: the soak VACUUMs the tables "
                    "after each minute's figures, as autovacuum would",
                    flush=True,
                )
            limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
            async with httpx.AsyncClient(
                base_url=base, headers=HEADERS, timeout=30, limits=limits
            ) as client:
                await seed(client, skus)
                t0 = time.monotonic()
                until = t0 + args.minutes * 60
                driver = asyncio.create_task(drive(client, skus, args.rate, until, load))
                for minute in range(1, args.minutes + 1):
                    await asyncio.sleep(max(0.0, t0 + minute * 60 - time.monotonic()))
                    proc.check()
                    levels.check()
                    lo = t0 + (minute - 1) * 60
                    window = [ms for at, ms in load.reserve_ms if at >= lo]
                    s = await sample(db)
                    s.update(
                        minute=minute,
                        reserves=len(window),
                        reserve_p50_ms=percentile(window, 50),
                        reserve_p99_ms=percentile(window, 99),
                    )
                    s["autovacuum"] = autovacuum
                    rows.append(s)
                    print_minute(minute, s)
                    if not autovacuum:
                        await vacuum(db)
                await driver
            await db.close()
        finally:
            if levels is not None:
                levels.stop()
            proc.stop()
            if amqp:
                from stockkeeper.messaging.rabbitmq import delete_topology

                with contextlib.suppress(Exception):
                    await delete_topology(amqp, cfg["broker"]["prefix"])
    print()
    print(summary(rows))
    if load.errors:
        print(f"\nerrors: {load.errors}")
    out = write_results(
        "soak",
        {
            "args": vars(args),
            "machine": await harness.machine_info(args.database_url, "asyncio"),
            "minutes": rows,
            "requests": load.requests,
            "errors": load.errors,
        },
        stamp,
    )
    print(f"\nresults: {out}")
    return 1 if load.errors else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--rate", type=float, default=20.0, help="reservations per second")
    p.add_argument("--skus", type=int, default=500)
    p.add_argument(
        "--retention-s",
        type=int,
        default=None,
        help="retention of every pruned table (and Idempotency-Keys); default: the config's",
    )
    p.add_argument("--retention-interval-s", type=float, default=10.0)
    p.add_argument("--pool-size", type=int, default=10)
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    p.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    p.add_argument("--embedded", action="store_true", help="the embedded queue, not RabbitMQ")
    p.add_argument("--workdir", default=None)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix="stockkeeper-soak-")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    harness.exit_with(amain(args))


if __name__ == "__main__":
    main()
