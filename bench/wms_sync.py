"""Full WMS sync: wall time and peak memory of the worker, against a COPY-based floor.

One run:

1. starts the sandbox WMS (``python -m stockkeeper sandbox wms``) in its own process,
   seeded with N batches (``--batches``, default 100,000, over N/4 SKUs);
2. in a fresh migrated database, runs a full sync the way the wms-sync worker does
   (``WmsSyncWorker.run_job``: paged GETs, and per page one transaction with the
   batches, ADJUSTMENT ledger rows, SKU versions, outbox events, snapshot rows and
   the request's progress), in a child process, first into an empty database (every
   batch new) and then again with nothing changed (pure reconciliation);
3. in another fresh database, the floor: a child process that reads the same pages
   with httpx and COPYs each page into a temporary table, then upserts it into a
   batch table (``INSERT ... SELECT ... ON CONFLICT DO UPDATE``), one transaction per
   page; timed with and without the HTTP reads.

Peak memory is the child's ``ru_maxrss``; "idle" is the same child importing the same
modules and connecting, without syncing. Figures are printed as a table and kept in
``bench/results/wms-sync-<time>.json``.

    python bench/wms_sync.py --batches 20000     # quick
    python bench/wms_sync.py                     # 100,000 batches
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

import harness
from harness import (
    DEFAULT_ADMIN_URL,
    Proc,
    create_database,
    drop_database,
    free_port,
    markdown_table,
)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- children --------------------------------------------------------------------------


async def child_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run full syncs exactly as the wms-sync worker does; report time and memory."""
    from stockkeeper.bootstrap import build
    from stockkeeper.config import Settings, WmsConnectorConfig
    from stockkeeper.connectors.wms import WmsClient
    from stockkeeper.workers.wms_sync import WmsSyncWorker

    settings = Settings.model_validate(
        {
            "data_dir": args.workdir,
            "database": {"url": args.db, "pool_size": 4},
            "logging": {"level": "warning"},
            "connectors": [
                {
                    "id": "wms",
                    "type": "wms",
                    "url": args.wms,
                    "rate_limit_rps": 10_000,
                    "page_size": args.page_size,
                    "incremental_interval_s": 0,
                }
            ],
        }
    )
    c = await build(settings, run_migrations=False)
    (cfg,) = settings.connectors_of(WmsConnectorConfig)
    client = WmsClient(cfg, metrics=c.metrics)
    worker = WmsSyncWorker(c.wms, {"wms": client}, [cfg], c.metrics)
    out: dict[str, Any] = {"idle_peak_mb": peak_mb(), "runs": []}
    try:
        for label in args.runs.split(","):
            await c.wms.request_sync(reason=label, requested_by="bench")
            job = await c.wms.claim(stale_after_s=3600)
            assert job is not None
            t0 = time.perf_counter()
            status = await worker.run_job(job)
            wall = time.perf_counter() - t0
            doc = await c.wms.get_request(job.id)
            out["runs"].append(
                {
                    "run": label,
                    "status": status.value,
                    "wall_s": wall,
                    "rows": doc.rows_seen,
                    "adjustments": doc.adjustments,
                    "pages": doc.pages,
                    "peak_mb": peak_mb(),
                }
            )
    finally:
        await client.aclose()
        await c.close()
    return out


FLOOR_TABLE = """
CREATE TABLE floor_batch (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL,
    location    text NOT NULL,
    lot_number  text,
    expires_at  timestamptz,
    on_hand     bigint NOT NULL,
    unavailable bigint NOT NULL
);
CREATE UNIQUE INDEX floor_batch_identity ON floor_batch (sku, location, COALESCE(lot_number, ''));
"""

FLOOR_PAGE = """
CREATE TEMP TABLE floor_page (
    sku text, location text, lot_number text, expires_at timestamptz,
    on_hand bigint, unavailable bigint
) ON COMMIT DROP
"""

FLOOR_UPSERT = """
INSERT INTO floor_batch (sku, location, lot_number, expires_at, on_hand, unavailable)
SELECT sku, location, lot_number, expires_at, on_hand, unavailable FROM floor_page
ON CONFLICT (sku, location, COALESCE(lot_number, '')) DO UPDATE
SET on_hand = EXCLUDED.on_hand, unavailable = EXCLUDED.unavailable
"""

COLUMNS = ("sku", "location", "lot_number", "expires_at", "on_hand", "unavailable")


async def child_floor(args: argparse.Namespace) -> dict[str, Any]:
    """Read the same pages, COPY each into a temporary table and upsert it."""
    conn = await asyncpg.connect(args.db)
    out: dict[str, Any] = {"idle_peak_mb": peak_mb()}
    try:
        await conn.execute(FLOOR_TABLE)
        pages: list[list[tuple[Any, ...]]] = []
        t0 = time.perf_counter()
        async with httpx.AsyncClient(base_url=args.wms, timeout=60) as http:
            cursor: str | None = None
            while True:
                params: dict[str, Any] = {"limit": args.page_size}
                if cursor:
                    params["cursor"] = cursor
                doc = (await http.get("/v1/stock", params=params)).json()
                pages.append(
                    [
                        (
                            r["sku"],
                            r["location"],
                            r["lot_number"],
                            datetime.fromisoformat(r["expires_at"]) if r["expires_at"] else None,
                            r["on_hand"],
                            r["unavailable"],
                        )
                        for r in doc["items"]
                    ]
                )
                cursor = doc["next_cursor"]
                if cursor is None:
                    break
        fetched = time.perf_counter() - t0
        t1 = time.perf_counter()
        rows = 0
        for page in pages:
            async with conn.transaction():
                await conn.execute(FLOOR_PAGE)
                await conn.copy_records_to_table("floor_page", records=page, columns=COLUMNS)
                await conn.execute(FLOOR_UPSERT)
            rows += len(page)
        upserted = time.perf_counter() - t1
        out.update(
            {
                "rows": rows,
                "pages": len(pages),
                "fetch_s": fetched,
                "copy_upsert_s": upserted,
                "wall_s": fetched + upserted,
                "peak_mb": peak_mb(),
            }
        )
    finally:
        await conn.close()
    return out


# -- the run ---------------------------------------------------------------------------


def run_child(role: str, **kw: Any) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--role", role]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{role} child failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def start_wms(batches: int, workdir: Path) -> tuple[Proc, str]:
    port = free_port()
    args = ["sandbox", "wms", "--port", str(port), "--batches", str(batches), "--seed", "1"]
    proc = Proc(args, workdir, "sandbox-wms")
    url = f"http://127.0.0.1:{port}"
    await proc.ready(url + "/v1/stock/token")
    return proc, url


async def check_books(db_url: str, wms_url: str, table: str) -> tuple[int, int]:
    """Rows and total on_hand in ``table``; the caller compares them with the WMS."""
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(f"SELECT count(*) AS n, sum(on_hand) AS s FROM {table}")
    finally:
        await conn.close()
    assert row is not None
    return int(row["n"]), int(row["s"] or 0)


async def wms_totals(wms_url: str, page_size: int) -> tuple[tuple[int, int], int]:
    """(batches, units on hand), and how many batches hold anything (those a first
    sync must adjust; an empty one matches the empty batch it creates)."""
    n = s = nonzero = 0
    async with httpx.AsyncClient(base_url=wms_url, timeout=60) as http:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 5000}
            if cursor:
                params["cursor"] = cursor
            doc = (await http.get("/v1/stock", params=params)).json()
            n += len(doc["items"])
            s += sum(r["on_hand"] for r in doc["items"])
            nonzero += sum(1 for r in doc["items"] if r["on_hand"] or r["unavailable"])
            cursor = doc["next_cursor"]
            if cursor is None:
                return (n, s), nonzero


async def amain(args: argparse.Namespace) -> int:
    run_id = uuid.uuid4().hex[:8]
    names = {k: f"bench_wms_{run_id}_{k}" for k in ("sync", "floor")}
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-wms-{run_id}-"))
    wms, wms_url = await start_wms(args.batches, workdir)
    try:
        sync_db = await create_database(args.database_url, names["sync"], migrated=True)
        floor_db = await create_database(args.database_url, names["floor"])
        expected, nonzero = await wms_totals(wms_url, args.page_size)
        print(f"sandbox WMS: {expected[0]:,} batches, {expected[1]:,} units on hand", flush=True)

        floor = run_child("floor", db=floor_db, wms=wms_url, page_size=args.page_size)
        assert floor["rows"] == expected[0], floor
        assert await check_books(floor_db, wms_url, "floor_batch") == expected
        print(f"floor done in {floor['wall_s']:.1f}s", flush=True)

        worker = run_child(
            "worker",
            db=sync_db,
            wms=wms_url,
            page_size=args.page_size,
            workdir=workdir,
            runs="first,unchanged",
        )
        assert await check_books(sync_db, wms_url, "sku_batch") == expected
        first, again = worker["runs"]
        assert first["adjustments"] == nonzero, (first, nonzero)
        assert again["adjustments"] == 0, again
    finally:
        wms.stop()
        for name in names.values():
            await drop_database(args.database_url, name)

    rows = [
        {
            "what": "worker: full sync into an empty database",
            "wall_s": first["wall_s"],
            "rows_per_s": first["rows"] / first["wall_s"],
            "vs_floor": first["wall_s"] / floor["wall_s"],
            "peak_mb": first["peak_mb"],
        },
        {
            "what": "worker: full sync again, nothing changed",
            "wall_s": again["wall_s"],
            "rows_per_s": again["rows"] / again["wall_s"],
            "vs_floor": again["wall_s"] / floor["wall_s"],
            "peak_mb": again["peak_mb"],
        },
        {
            "what": "floor: HTTP pages + COPY upsert",
            "wall_s": floor["wall_s"],
            "rows_per_s": floor["rows"] / floor["wall_s"],
            "vs_floor": 1.0,
            "peak_mb": floor["peak_mb"],
        },
        {
            "what": "floor: COPY upsert alone",
            "wall_s": floor["copy_upsert_s"],
            "rows_per_s": floor["rows"] / floor["copy_upsert_s"],
            "vs_floor": floor["copy_upsert_s"] / floor["wall_s"],
            "peak_mb": None,
        },
    ]
    print(
        f"\n{args.batches:,} batches, page size {args.page_size}; idle child peak: "
        f"worker {worker['idle_peak_mb']:.0f} MB, floor {floor['idle_peak_mb']:.0f} MB\n"
    )
    lines = [
        [
            r["what"],
            f"{r['wall_s']:.1f}",
            f"{r['rows_per_s']:,.0f}",
            f"{r['vs_floor']:.2f}",
            f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "—",
        ]
        for r in rows
    ]
    head = ("run", "wall s", "rows/s", "× floor", "peak RSS MB")
    print(markdown_table(head, lines, "lrrrr"))
    out = harness.write_results(
        "wms-sync",
        {
            "batches": args.batches,
            "page_size": args.page_size,
            "rows": rows,
            "worker": worker,
            "floor": floor,
        },
    )
    print(f"\nkept in {out}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, default=100_000)
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    # Internal: the child processes.
    p.add_argument("--role", choices=("main", "worker", "floor"), default="main")
    p.add_argument("--db")
    p.add_argument("--wms")
    p.add_argument("--workdir")
    p.add_argument("--runs", default="first")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.role == "main":
        harness.exit_with(amain(args))
    child = child_worker if args.role == "worker" else child_floor
    result = asyncio.run(child(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
