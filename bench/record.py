"""Recording a catalogue-wide change per channel: how fast the ``channel.propagation``
consumer books N new SKUs' ``inventory.levels_changed`` events for every channel, and
whether its rate holds as ``channel_sync_state`` grows.

One run: a fresh migrated database, ``--skus`` new SKUs applied as ERP pages (not
timed into the figure), then their events handled as the consumer handles them, one
transaction per message, with no sender running. Prints the rate per slice of
``--slice`` SKUs (a rate that falls as the table grows is a plan or an index gone
wrong) and the total against a baseline measured in the same run: one
``INSERT ... SELECT`` of the same (channel, SKU) rows into the table, the least the
database must write.

    python bench/record.py --skus 100000
    python bench/record.py --skus 500000 --slice 100000
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from harness import (
    DEFAULT_ADMIN_URL,
    cluster_processes,
    create_database,
    drop_database,
    postmaster,
    proc_cpu,
)
from stockkeeper.bootstrap import build
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.records import LevelRecord
from stockkeeper.domain.events import LEVEL_CHANGED, LEVELS_CHANGED
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.workers.propagator import Propagator

SECRET_ENV = "BENCH_CHANNEL_SECRET"


def backends_cpu(pm: int | None, dbname: str) -> float:
    """CPU seconds so far of the PostgreSQL backends serving ``dbname`` (0 when the
    server is not on this machine): a figure the other load on the machine moves less
    than the wall time."""
    if pm is None:
        return 0.0
    return sum(proc_cpu(p) for p in cluster_processes(pm, dbname)[1:] if _serves(p, dbname))


def _serves(pid: int, dbname: str) -> bool:
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return f" {dbname} " in f" {title} "


def channels() -> list[dict[str, object]]:
    base = "http://127.0.0.1:9"  # never called: no sender runs
    quiet = {"divergence_sample_s": 0}
    return [
        {
            "id": "shopify",
            "type": "shopify",
            "url": f"{base}/admin/api/2026-04/graphql.json",
            "location_id": "gid://shopify/Location/1",
            **quiet,
        },
        {
            "id": "hooks",
            "type": "outbound_webhook",
            "url": f"{base}/stock",
            "secret_env": SECRET_ENV,
            **quiet,
        },
        {
            "id": "amazon",
            "type": "amazon",
            "url": base,
            "seller_id": "A1BENCH",
            "marketplace_ids": ["A1PA6795UKMFR9"],
            **quiet,
        },
    ]


async def main(args: argparse.Namespace) -> int:
    import os

    os.environ[SECRET_ENV] = "bench-channel-secret-0123456789"
    name = f"bench_record_{uuid.uuid4().hex[:8]}"
    db_url = await create_database(args.database_url, name, migrated=True)
    settings = Settings.model_validate(
        {
            "database": {"url": db_url, "pool_size": 4},
            "api": {"tokens": [{"token": "bench-token-0123456789", "scopes": ["admin"]}]},
            "logging": {"level": "warning"},
            "connectors": [
                {"id": "erp", "type": "erp", "dsn": "postgresql+asyncpg://x@127.0.0.1/x"},
                *channels(),
            ],
        }
    )
    c = await build(settings)
    try:
        ids = [cfg.id for cfg in settings.connectors_of(ChannelConfig)]
        at = datetime.now(UTC)
        t0 = time.perf_counter()
        for i in range(0, args.skus, args.page):
            levels = [
                LevelRecord(sku=f"SKU-{n:07d}", on_hand=n % 40 + 1, source_updated_at=at)
                for n in range(i, min(args.skus, i + args.page))
            ]
            async with c.pool.acquire() as conn, conn.transaction():
                await c.ingest.apply(conn, "erp", levels, [], reference=f"erp-{i}")
        print(f"ERP change of {args.skus:,} SKUs applied in {time.perf_counter() - t0:.1f}s")
        worker = Propagator(c.propagation, {}, c.pool)
        handle = worker.handler()
        async with c.pool.acquire() as conn:
            events = await conn.fetch(
                "SELECT event_type, payload, occurred_at, source FROM domain_event "
                "WHERE event_type = ANY($1::text[]) ORDER BY id",
                [LEVEL_CHANGED, LEVELS_CHANGED],
            )
        pm = await postmaster(db_url)
        pg0, py0 = backends_cpu(pm, name), time.process_time()
        pg_slice = pg0
        done = 0
        mark = done
        t_slice = t_all = time.perf_counter()
        for e in events:
            env = Envelope.new(
                e["event_type"], e["payload"], occurred_at=e["occurred_at"], source=e["source"]
            )
            async with c.pool.acquire() as conn, conn.transaction():
                await handle(conn, env)
            done += len(e["payload"].get("levels", [])) or 1
            if done - mark >= args.slice:
                now, pg = time.perf_counter(), backends_cpu(pm, name)
                print(
                    f"  SKUs {mark:>9,} .. {done:>9,}: {(done - mark) / (now - t_slice):8,.0f}/s, "
                    f"PostgreSQL {1e6 * (pg - pg_slice) / (done - mark):.0f} ms per 1,000",
                    flush=True,
                )
                mark, t_slice, pg_slice = done, now, pg
        record_s = time.perf_counter() - t_all
        pg_s, py_s = backends_cpu(pm, name) - pg0, time.process_time() - py0
        # The baseline: the same rows written by one plain statement, in a copy of the
        # table (same columns, indexes and constraints), in this run.
        async with c.pool.acquire() as conn:
            await conn.execute("SET statement_timeout = 0")  # the pool sets one
            await conn.execute("CREATE TABLE bench_sync (LIKE channel_sync_state INCLUDING ALL)")
            t1 = time.perf_counter()
            await conn.execute(
                "INSERT INTO bench_sync (channel, sku, desired_version, desired_quantity, "
                "status, pending_since, pending_changes) "
                "SELECT c, s.sku, 1, 1, 'PENDING', now(), 1 FROM sku s "
                "CROSS JOIN unnest($1::text[]) AS c",
                ids,
            )
            floor_s = time.perf_counter() - t1
        print(
            f"recorded {done:,} SKUs × {len(ids)} channels in {record_s:.1f}s "
            f"({done / record_s:,.0f} SKUs/s); one INSERT of the same rows {floor_s:.1f}s: "
            f"{record_s / floor_s:.1f}× the floor"
        )
        print(
            f"CPU while recording: PostgreSQL {pg_s:.1f}s, this process {py_s:.1f}s; "
            f"per 1,000 SKUs {1e6 * pg_s / done:.0f} + {1e6 * py_s / done:.0f} ms"
        )
    finally:
        await c.close()
        await drop_database(args.database_url, name)
    return 0


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skus", type=int, default=100_000)
    ap.add_argument("--page", type=int, default=5_000, help="records per ERP page")
    ap.add_argument("--slice", type=int, default=25_000, help="SKUs per printed rate")
    ap.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    return ap.parse_args()


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(parse())))
