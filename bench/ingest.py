"""Ingestion: a full ERP sync through the real processes, and webhook accept rate.

One run:

1. ERP sync. The sandbox ERP (a separate PostgreSQL database) is seeded with N rows
   (``--skus``, default 500,000: one row per SKU). Then ``stockkeeper run pollers``,
   ``run dispatcher`` and ``run ingest`` start as separate processes on a fresh
   database (RabbitMQ if ``--amqp-url`` answers, else the embedded queue) and the clock
   runs until every row is in our books: polled by keyset, queued through the outbox,
   published, applied by the ingest worker (guard rows, batches, ADJUSTMENT ledger
   entries, SKU versions, outbox events). Peak memory is each process's VmHWM.
   The floor: the same rows COPYed out of the ERP view and into a staging table, then
   upserted into a batch table, one statement each (asyncpg, one connection).
2. Webhooks. ``stockkeeper run inventory-api`` with a generic webhook connector and
   ``api.expose_noop``; a closed-loop load of signed deliveries (one level each) at a
   fixed concurrency for a fixed time, against the same load on ``POST /noop`` (auth,
   body validation, no database) as the HTTP ceiling of the same server.

    python bench/ingest.py --skus 50000 --webhook-seconds 5     # quick
    python bench/ingest.py --broker both --webhook-seconds 0    # both brokers, no webhooks
    python bench/ingest.py                                      # the full run

``--records-per-message`` (the ERP connector's ``records_per_message``) and
``--levels-per-message`` (``bulk.levels_per_message``; 0: one level_changed per SKU, as
before issue 15) set the bulk shapes. ``--profile DIR`` runs each child process under
pyinstrument (``pip install pyinstrument`` in the venv) and writes one text report per
process into DIR (wall-clock samples, idle and database waits included; its CPU time is
in the header): where the time goes, process by process.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

import harness
from harness import (
    DEFAULT_ADMIN_URL,
    DEFAULT_AMQP_URL,
    TOKEN,
    Proc,
    create_database,
    drop_database,
    free_port,
    markdown_table,
    percentile,
    rabbit_ok,
)
from stockkeeper.connectors.signatures import generic_headers
from stockkeeper.messaging import rabbitmq
from stockkeeper_sandbox.erp import ErpSandbox, create_erp, drop_erp

SECRET = "bench-webhook-secret"
ENV = {"BENCH_WEBHOOK_SECRET": SECRET}


# -- 1. the ERP sync ----------------------------------------------------------------


async def erp_sync(args: argparse.Namespace, workdir: Path, broker_kind: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    erp_url = await create_erp(args.database_url, f"bench_erp_{run}")
    erp = ErpSandbox(erp_url)
    ours = f"bench_ingest_{run}"
    floor_db = f"bench_floor_{run}"
    procs: list[Proc] = []
    try:
        t0 = time.perf_counter()
        await erp.seed(args.skus, seed=1)
        print(f"sandbox ERP seeded with {args.skus:,} rows in {time.perf_counter() - t0:.1f}s")
        db_url = await create_database(args.database_url, ours, migrated=True)
        broker: dict[str, Any] = {"prefix": f"b{run}."}
        if broker_kind == "rabbitmq":
            broker["url"] = args.amqp_url
        cfg = {
            "data_dir": str(workdir / "data"),
            "database": {"url": db_url, "pool_size": 10},
            "broker": broker,
            "logging": {"level": "warning"},
            "monitoring": {"metrics_port": 0},
            "connectors": [
                {
                    "id": "erp",
                    "type": "erp",
                    "dsn": erp.reader_url.replace("postgresql://", "postgresql+asyncpg://", 1),
                    "page_size": args.page_size,
                    "interval_s": 0.5,
                    "backlog_high_water": 50,
                    "records_per_message": args.records_per_message,
                }
            ],
            "bulk": {"levels_per_message": args.levels_per_message},
        }
        started = time.perf_counter()
        for service in ("pollers", "dispatcher", "ingest"):
            procs.append(Proc(["run", service], workdir, service, cfg=cfg, env=ENV))
        conn = await asyncpg.connect(db_url)
        try:
            while True:
                for p in procs:
                    p.check()
                    p.sample()
                done = await conn.fetchval("SELECT count(*) FROM source_record_version")
                if done >= args.skus:
                    break
                await asyncio.sleep(0.25)
            wall = time.perf_counter() - started
            entries = await conn.fetchval("SELECT count(*) FROM inventory_ledger")
            total = await conn.fetchval("SELECT sum(on_hand) FROM sku_batch")
        finally:
            await conn.close()
        for p in procs:
            p.stop()
        expected = sum(r["on_hand"] for r in await erp.rows())
        assert total == expected, (total, expected)

        floor_url = await create_database(args.database_url, floor_db, migrated=True)
        floor_s = await copy_floor(erp.reader_url, floor_url)
        return {
            "rows": args.skus,
            "broker": "rabbitmq" if "url" in broker else "embedded",
            "wall_s": wall,
            "rows_per_s": args.skus / wall,
            "ledger_entries": entries,
            "floor_s": floor_s,
            "vs_floor": wall / floor_s,
            "peak_mb": {p.label: p.peak for p in procs},
        }
    finally:
        for p in procs:
            p.stop()
        await delete_topology(args.amqp_url, f"b{run}.")
        await drop_erp(args.database_url, erp_url)
        await drop_database(args.database_url, ours)
        await drop_database(args.database_url, floor_db)


async def delete_topology(url: str, prefix: str) -> None:
    """Drop this run's queues (half a million level_changed messages wait in one)."""
    if await rabbit_ok(url):
        await rabbitmq.delete_topology(url, prefix)


async def copy_floor(erp_url: str, floor_url: str) -> float:
    """COPY the view out and into a staging table, then one upsert into batches."""
    src = await asyncpg.connect(erp_url)
    dst = await asyncpg.connect(floor_url)
    try:
        await dst.execute(
            "CREATE TABLE floor_batch (sku text, location text, on_hand bigint, "
            "last_modified timestamptz, PRIMARY KEY (sku, location))"
        )
        t0 = time.perf_counter()
        records = await src.fetch("SELECT sku, location, on_hand, last_modified FROM stock_changes")
        async with dst.transaction():
            await dst.execute("CREATE TEMP TABLE staging (LIKE floor_batch) ON COMMIT DROP")
            await dst.copy_records_to_table("staging", records=records)
            await dst.execute(
                "INSERT INTO floor_batch SELECT * FROM staging ON CONFLICT (sku, location) "
                "DO UPDATE SET on_hand = EXCLUDED.on_hand, last_modified = EXCLUDED.last_modified "
                "WHERE floor_batch.last_modified < EXCLUDED.last_modified"
            )
        return time.perf_counter() - t0
    finally:
        await src.close()
        await dst.close()


# -- 2. webhooks --------------------------------------------------------------------


async def load(
    url: str, make: Any, seconds: float, connections: int
) -> tuple[int, int, list[float]]:
    ok = failed = 0
    lat: list[float] = []
    end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:

        async def worker(w: int) -> None:
            nonlocal ok, failed
            i = 0
            while time.monotonic() < end:
                path, body, headers = make(w, i)
                t = time.perf_counter()
                r = await http.post(path, content=body, headers=headers)
                lat.append(time.perf_counter() - t)
                if 200 <= r.status_code < 300:
                    ok += 1
                else:
                    failed += 1
                    if failed == 1:
                        print(f"  {path}: {r.status_code} {r.text[:300]}", file=sys.stderr)
                i += 1

        await asyncio.gather(*(worker(w) for w in range(connections)))
    return ok, failed, lat


async def webhooks(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    name = f"bench_hook_{run}"
    db_url = await create_database(args.database_url, name, migrated=True)
    port = free_port()
    cfg = {
        "data_dir": str(workdir / "data-hook"),
        "database": {"url": db_url, "pool_size": 20},
        "logging": {"level": "warning"},
        "monitoring": {"metrics_port": 0},
        "api": {
            "inventory_port": port,
            "admin_port": free_port(),
            "expose_noop": True,
            "tokens": [
                {"name": "b", "token": TOKEN, "scopes": ["inventory:read", "inventory:write"]}
            ],
        },
        "connectors": [{"id": "hook", "type": "webhook", "secret_env": "BENCH_WEBHOOK_SECRET"}],
    }
    api = Proc(["run", "inventory-api"], workdir, "inventory-api", cfg=cfg, env=ENV)
    url = f"http://127.0.0.1:{port}"
    try:
        await api.ready(url + "/readyz", within=30)
        noop_body = orjson.dumps({"order_id": "o", "lines": [{"sku": "A", "quantity": 1}]})
        noop_headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

        def noop(w: int, i: int) -> tuple[str, bytes, dict[str, str]]:
            return "/noop", noop_body, noop_headers

        def hook(w: int, i: int) -> tuple[str, bytes, dict[str, str]]:
            body = orjson.dumps(
                {
                    "event_id": f"{run}-{w}-{i}",
                    "levels": [
                        {
                            "sku": f"SKU-{(w * 7919 + i) % 10_000:05d}",
                            "on_hand": i % 100,
                            "source_updated_at": datetime.now(UTC).isoformat(),
                        }
                    ],
                }
            )
            headers = generic_headers(SECRET.encode(), body, int(time.time()))
            return "/webhooks/hook", body, {**headers, "Content-Type": "application/json"}

        await load(url, noop, 1, args.connections)  # warm up
        results = {}
        for label, make in (("noop", noop), ("webhook", hook)):
            ok, failed, lat = await load(url, make, args.webhook_seconds, args.connections)
            results[label] = {
                "accepted_per_s": ok / args.webhook_seconds,
                "failed": failed,
                "p50_ms": percentile(lat, 50) * 1000,
                "p99_ms": percentile(lat, 99) * 1000,
            }
        api.sample()
        results["webhook"]["vs_noop"] = (
            results["webhook"]["accepted_per_s"] / results["noop"]["accepted_per_s"]
        )
        results["server_peak_mb"] = api.peak
        return results
    finally:
        api.stop()
        await drop_database(args.database_url, name)


def profile_children(out: Path) -> None:
    """Each child process runs under pyinstrument (bench/profiling/sitecustomize.py) and
    writes its report into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ENV["SK_PROFILE_OUT"] = str(out.resolve())
    ENV["PYTHONPATH"] = str(Path(__file__).parent / "profiling")


async def amain(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    if args.profile:
        profile_children(Path(args.profile))
    kinds = ["rabbitmq", "embedded"] if args.broker == "both" else [args.broker]
    if args.broker == "auto":
        kinds = ["rabbitmq" if await rabbit_ok(args.amqp_url) else "embedded"]
    for kind in kinds:
        (workdir / kind).mkdir()
    syncs = [await erp_sync(args, workdir / kind, kind) for kind in kinds]
    print(
        f"\nERP sync of {args.skus:,} SKUs (page {args.page_size}, "
        f"{args.records_per_message} records a message, "
        f"{args.levels_per_message} levels a levels_changed)\n"
    )
    rows = []
    for sync in syncs:
        peak = max((v for v in sync["peak_mb"].values() if v), default=0.0)
        rows.append(
            [
                f"pollers + dispatcher + ingest, {sync['broker']}",
                f"{sync['wall_s']:.1f}",
                f"{sync['rows_per_s']:,.0f}",
                f"{sync['vs_floor']:.1f}",
                f"{peak:.0f}",
            ]
        )
        rows.append(
            [
                "floor: COPY out, COPY in, one upsert",
                f"{sync['floor_s']:.1f}",
                f"{sync['rows'] / sync['floor_s']:,.0f}",
                "1.0",
                "",
            ]
        )
    head = ("run", "wall s", "rows/s", "× floor", "peak RSS MB/process")
    print(markdown_table(head, rows, "lrrrr"))
    for sync in syncs:
        print(
            f"\npeak RSS MB ({sync['broker']}): "
            + ", ".join(f"{k} {v:.0f}" for k, v in sync["peak_mb"].items() if v)
        )
    sync = syncs[0]
    if args.webhook_seconds <= 0:
        out = harness.write_results("ingest", {"args": vars(args), "erp_sync": syncs})
        print(f"\nkept in {out}")
        return 0
    hooks = await webhooks(args, workdir)
    print(f"\nwebhooks, {args.connections} connections, {args.webhook_seconds}s each\n")
    rows = [
        [
            label,
            f"{r['accepted_per_s']:,.0f}",
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r.get('vs_noop', 1.0):.2f}",
        ]
        for label, r in ((label, hooks[label]) for label in ("noop", "webhook"))
    ]
    head = ("endpoint", "accepted/s", "p50 ms", "p99 ms", "× noop")
    print(markdown_table(head, rows, "lrrrr"))
    results = {"args": vars(args), "erp_sync": syncs, "webhooks": hooks}
    out = harness.write_results("ingest", results)
    print(f"\nkept in {out}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--skus", type=int, default=500_000)
    p.add_argument("--page-size", type=int, default=5000)
    p.add_argument("--webhook-seconds", type=float, default=10.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    p.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    p.add_argument(
        "--broker",
        choices=("auto", "rabbitmq", "embedded", "both"),
        default="auto",
        help="auto: RabbitMQ if it answers, else the embedded queue; both: a row each",
    )
    p.add_argument("--records-per-message", type=int, default=5000)
    p.add_argument("--levels-per-message", type=int, default=500)
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="profile each child process with pyinstrument (pip install pyinstrument): "
        "a text report per process in DIR",
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    harness.exit_with(amain(parse_args()))
