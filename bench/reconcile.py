"""Drift repair (``reconcile-channels``) over many SKUs against the Shopify sandbox.

One run:

1. A fresh migrated database with ``--skus`` SKUs (applied as ingest pages in this
   process) and the sandbox Shopify (its cost bucket set by ``--bucket`` and
   ``--restore-rate``: a Shopify Plus plan by default) on a local port, every SKU
   listed on first use.
2. ``Propagation.reconcile`` of the Shopify channel, as ``stockkeeper
   reconcile-channels`` runs it: per page, one read-back in Shopify's batch shape
   (``inventoryItems`` by SKU, then ``nodes()`` of their levels), one read of our
   levels, one statement comparing and marking the page.
3. The floor: the channel's read limit. The points the read-back must spend (the
   sandbox's cost rules: ``inventoryItems`` 2 + 1 per SKU, ``nodes()`` 1 + 2 per id, in
   chunks of at most 250), less the full bucket at the start, at the restore rate.

    python bench/reconcile.py --skus 5000        # quick
    python bench/reconcile.py --skus 100000      # the issue's size (minutes)
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime

import harness
from floors import shopify_read_points
from harness import DEFAULT_ADMIN_URL, create_database, drop_database, markdown_table
from stockkeeper.bootstrap import build
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.channel_registry import make_channel
from stockkeeper.connectors.records import LevelRecord
from stockkeeper.services.propagation import RECONCILE_PAGE
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, create_app, graphql_url


def read_points(skus: int) -> float:
    """What reading ``skus`` SKUs back costs in the sandbox's points (bench/floors.py)."""
    return shopify_read_points(skus, RECONCILE_PAGE)


async def main(args: argparse.Namespace) -> int:
    name = f"bench_reconcile_{uuid.uuid4().hex[:8]}"
    db_url = await create_database(args.database_url, name, migrated=True)
    state = ShopifyState(bucket_size=args.bucket, restore_rate=args.restore_rate)
    try:
        with SandboxServer(create_app(state)) as server:
            settings = Settings.model_validate(
                {
                    "database": {"url": db_url, "pool_size": 4},
                    "logging": {"level": "warning"},
                    "api": {"tokens": [{"token": "bench-token-0123456789", "scopes": ["admin"]}]},
                    "connectors": [
                        {"id": "erp", "type": "erp", "dsn": "postgresql+asyncpg://x@127.0.0.1/x"},
                        {
                            "id": "shopify",
                            "type": "shopify",
                            "url": graphql_url(server.url),
                            "location_id": "gid://shopify/Location/1",
                        },
                    ],
                }
            )
            c = await build(settings)
            try:
                at = datetime.now(UTC)
                t0 = time.perf_counter()
                for i in range(0, args.skus, 5000):
                    levels = [
                        LevelRecord(sku=f"SKU-{n:06d}", on_hand=n % 40 + 1, source_updated_at=at)
                        for n in range(i, min(args.skus, i + 5000))
                    ]
                    async with c.pool.acquire() as conn, conn.transaction():
                        await c.ingest.apply(conn, "erp", levels, [], reference=f"seed-{i}")
                print(f"seeded {args.skus:,} SKUs in {time.perf_counter() - t0:.1f}s", flush=True)
                (cfg,) = settings.connectors_of(ChannelConfig)
                adapter = make_channel(cfg, token=None)

                seen = [0]

                def progress(n: int) -> None:
                    seen[0] += n
                    if seen[0] % (args.progress_pages * 250) < n:
                        print(f"  {seen[0]:,} SKUs checked", flush=True)

                try:
                    t0 = time.perf_counter()
                    drift = await c.propagation.reconcile(adapter, on_page=progress)
                    wall = time.perf_counter() - t0
                finally:
                    await adapter.aclose()
            finally:
                await c.close()
    finally:
        await drop_database(args.database_url, name)
    points = read_points(args.skus)
    floor = max(0.0, points - args.bucket) / args.restore_rate
    print(
        f"\nreconcile-channels over {args.skus:,} SKUs on the Shopify sandbox "
        f"(bucket {args.bucket:.0f}, restore {args.restore_rate:.0f} points/s; "
        f"{points:,.0f} points to read)\n"
    )
    rows = [
        [
            "reconcile (read back, compare, mark)",
            f"{wall:.1f}",
            f"{drift.checked / wall:,.0f}",
            f"{wall / floor:.2f}" if floor else "—",
        ],
        [
            "floor: the channel's read limit",
            f"{floor:.1f}",
            f"{args.skus / floor:,.0f}" if floor else "—",
            "1.00",
        ],
    ]
    print(markdown_table(("run", "wall s", "SKUs/s", "× floor"), rows, "lrrr"))
    print(f"\nchecked {drift.checked:,}, differed {drift.drifted:,}, unlisted {drift.unlisted:,}")
    out = harness.write_results(
        "reconcile", {"args": vars(args), "wall_s": wall, "floor_s": floor, "points": points}
    )
    print(f"kept in {out}")
    return 0


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--skus", type=int, default=20_000)
    ap.add_argument("--bucket", type=float, default=20_000.0, help="points (Plus: 20,000)")
    ap.add_argument("--restore-rate", type=float, default=1_000.0, help="points/s (Plus: 1,000)")
    ap.add_argument("--progress-pages", type=int, default=20)
    ap.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    return ap.parse_args()


if __name__ == "__main__":
    harness.exit_with(main(parse()))
