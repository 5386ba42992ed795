"""Amazon in bulk: time for N SKUs to be in sync via JSON_LISTINGS_FEED against via PATCH.

One run:

1. A fresh migrated database with ``--skus`` SKUs (applied as ingest pages in this
   process) and two sandbox Amazons on local ports: ``amazon-feeds`` (``feed_threshold``
   ``--threshold``, ``feed_max_skus`` ``--feed-max``, ``feed_poll_s`` ``--poll``; the
   sandbox processes a feed ``--feed-delay`` seconds after createFeed, and createFeed
   has Amazon's own limit, 0.0083 a second with a burst of 15) and ``amazon-patch``
   (feeds off: one patchListingsItem per SKU at Amazon's 5 a second, burst 5).
2. The level changes recorded per channel as the ``channel.propagation`` consumer records
   them (every SKU due on both channels), then the propagator's channel loops run, as
   ``stockkeeper run propagator`` runs them, until every SKU is in sync on
   ``amazon-feeds``. The PATCH channel runs alongside only until ``--patch-sample`` SKUs
   are in sync: its time for N SKUs is **extrapolated** from that sample's rate, taken
   past the first ``PATCH_BURST`` SKUs so Amazon's burst does not flatter it (at 5 a
   second, 50,000 SKUs take close to three hours; nobody waits for that in a bench).

    python bench/amazon_feeds.py --skus 5000                       # quick (~1 min)
    python bench/amazon_feeds.py --skus 50000 --feed-delay 60      # the issue's size

The sandbox's feed delay stands in for Amazon's processing time (minutes for a large
feed on the real service): the feed figure is that delay plus our own work, so read it
with the delay given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import harness
from harness import DEFAULT_ADMIN_URL, create_database, drop_database, markdown_table
from stockkeeper.bootstrap import build, channel_adapter
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.records import LevelRecord
from stockkeeper.domain.events import LEVEL_CHANGED, LEVELS_CHANGED
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.amazon import AmazonState, create_app
from stockkeeper_sandbox.server import SandboxServer

SELLER = "A1BENCH"
MARKET = "A1PA6795UKMFR9"
TOKEN_ENV = "BENCH_AMAZON_TOKEN"
TOKEN = "Atza|bench-token"
PATCH_BURST = 10  # the PATCH rate is measured past the first SKUs (Amazon's burst of 5)


def channel(cid: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": cid,
        "type": "amazon",
        "url": url,
        "seller_id": SELLER,
        "marketplace_ids": [MARKET],
        "token_env": TOKEN_ENV,
        "divergence_sample_s": 0,
        **extra,
    }


async def main(args: argparse.Namespace) -> int:
    os.environ[TOKEN_ENV] = TOKEN
    name = f"bench_amazon_feeds_{uuid.uuid4().hex[:8]}"
    db_url = await create_database(args.database_url, name, migrated=True)
    feeds = AmazonState(seller_id=SELLER, feed_delay_s=args.feed_delay)
    patch = AmazonState(seller_id=SELLER)
    try:
        with (
            SandboxServer(create_app(feeds, token=TOKEN)) as feeds_server,
            SandboxServer(create_app(patch, token=TOKEN)) as patch_server,
        ):
            settings = Settings.model_validate(
                {
                    "database": {"url": db_url, "pool_size": 6},
                    "logging": {"level": "warning"},
                    "api": {"tokens": [{"token": "bench-token-0123456789", "scopes": ["admin"]}]},
                    "connectors": [
                        {"id": "erp", "type": "erp", "dsn": "postgresql+asyncpg://x@127.0.0.1/x"},
                        channel(
                            "amazon-feeds",
                            feeds_server.url,
                            feed_threshold=args.threshold,
                            feed_max_skus=args.feed_max,
                            feed_poll_s=args.poll,
                        ),
                        channel("amazon-patch", patch_server.url),
                    ],
                }
            )
            c = await build(settings)
            adapters = {
                cfg.id: channel_adapter(cfg, c.metrics)
                for cfg in settings.connectors_of(ChannelConfig)
            }
            worker = Propagator(c.propagation, adapters, c.pool)
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
                # What the channel.propagation consumer does with those events.
                handle = worker.handler()
                async with c.pool.acquire() as conn:
                    events = await conn.fetch(
                        "SELECT event_type, payload, occurred_at, source FROM domain_event "
                        "WHERE event_type = ANY($1::text[]) ORDER BY id",
                        [LEVEL_CHANGED, LEVELS_CHANGED],
                    )
                for e in events:
                    env = Envelope.new(
                        e["event_type"],
                        e["payload"],
                        occurred_at=e["occurred_at"],
                        source=e["source"],
                    )
                    async with c.pool.acquire() as conn, conn.transaction():
                        await handle(conn, env)
                print(
                    f"seeded and recorded {args.skus:,} SKUs in {time.perf_counter() - t0:.1f}s",
                    flush=True,
                )
                stop = asyncio.Event()
                running = asyncio.ensure_future(worker.run(stop))
                t0 = time.perf_counter()
                feeds_s: float | None = None
                patch_s: float | None = None
                patch_done = 0
                warm: tuple[float, int] | None = None
                last_print = 0.0
                while feeds_s is None or patch_s is None:
                    await asyncio.sleep(0.2)
                    status = await c.propagation.status()
                    now = time.perf_counter() - t0
                    if feeds_s is None and status["amazon-feeds"]["pending"] == 0:
                        feeds_s = now
                    synced = status["amazon-patch"]["synced"]
                    if warm is None and synced >= PATCH_BURST:
                        warm = (now, synced)  # past Amazon's burst: the steady rate from here
                    if patch_s is None and warm is not None and synced >= args.patch_sample:
                        patch_s, patch_done = now - warm[0], synced - warm[1]
                    if now - last_print >= 5:
                        last_print = now
                        print(
                            f"  {now:5.0f}s feeds synced {status['amazon-feeds']['synced']:,}"
                            f", patch synced {status['amazon-patch']['synced']:,}",
                            flush=True,
                        )
                stop.set()
                await running
            finally:
                await c.close()
    finally:
        await drop_database(args.database_url, name)
    feeds_counters, patch_counters = feeds.counters(), patch.counters()
    patch_rate = patch_done / patch_s
    patch_n_s = args.skus / patch_rate
    print(f"\n{args.skus:,} SKUs to Amazon (sandbox), in one run\n")
    rows = [
        [
            f"feeds (threshold {args.threshold:,}, ≤{args.feed_max:,} SKUs each, "
            f"processing delay {args.feed_delay:g}s)",
            f"{feeds_s:,.1f}",
            f"{args.skus / feeds_s:,.0f}",
            "measured",
        ],
        [
            "PATCH per SKU (5/s)",
            f"{patch_n_s:,.1f}",
            f"{patch_rate:,.1f}",
            f"extrapolated from {patch_done:,} SKUs in {patch_s:.1f}s",
        ],
    ]
    print(markdown_table(("path", "s to in sync", "SKUs/s", "how"), rows, "lrrl"))
    print(
        f"\nfeeds: {feeds_counters.get('feeds', 0)} feeds, "
        f"{feeds_counters.get('feed_messages', 0):,} messages, "
        f"{feeds_counters.get('patches', 0):,} patches applied; "
        f"feeds are {patch_n_s / feeds_s:,.1f}× faster here"
    )
    print(
        f"patch: {patch_counters.get('patches', 0):,} PATCHes, "
        f"throttled {patch_counters.get('throttled', 0)}"
    )
    out = harness.write_results(
        "amazon_feeds",
        {
            "args": vars(args),
            "feeds_s": feeds_s,
            "patch_sample": patch_done,
            "patch_sample_s": patch_s,
            "patch_extrapolated_s": patch_n_s,
        },
    )
    print(f"kept in {out}")
    return 0


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--skus", type=int, default=5_000)
    ap.add_argument("--threshold", type=int, default=1_000)
    ap.add_argument("--feed-max", type=int, default=10_000)
    ap.add_argument("--feed-delay", type=float, default=10.0, help="sandbox processing, s")
    ap.add_argument("--poll", type=float, default=1.0, help="feed_poll_s")
    ap.add_argument("--patch-sample", type=int, default=70)
    ap.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    return ap.parse_args()


if __name__ == "__main__":
    harness.exit_with(main(parse()))
