"""A catalogue-wide change to every channel: time until each sandbox channel shows every
SKU, against that channel's floor (bench/floors.py; docs/channels.md "Channel floors").

One run:

1. A fresh migrated database; ``stockkeeper sandbox channels`` in its own process
   (Shopify's cost bucket ``--shopify-bucket`` / ``--shopify-restore``, a Shopify Plus
   plan by default; Amazon's Feeds API with createFeed at Amazon's 0.0083 a second,
   burst 15, each feed processed ``--feed-delay`` s after createFeed; the webhook
   receiver, ``--hooks-rps`` calls a second of ``--hooks-batch`` SKUs as configured).
2. The ERP change: ``--skus`` new SKUs (500,000 by default) applied as ERP pages of
   ``--page`` records (the ingest use case); timed, and not part of the figure
   (bench/ingest.py measures that part).
3. From there, as deployed: their ``inventory.levels_changed`` events recorded per
   channel as the ``channel.propagation`` consumer records them (every SKU due on every
   channel) while the propagator's channel loops (``stockkeeper run propagator``'s
   sender half, in this process) push, until every SKU is SYNCED on every channel; per
   channel, the time from the start to its last acknowledgement (``pushed_at``). With
   ``--record-first`` every change is recorded before the loops start, and the figure
   is the push phase alone (the shape of D-382's figures).
   Every SKU is new to the channels: Shopify looks each inventory item up first, Amazon
   takes feeds past ``feed_threshold``. Then each channel's levels are read back from
   the sandbox and compared with ours.

    python bench/catalogue.py --skus 20000 --shopify-bucket 2000 --shopify-restore 100
    python bench/catalogue.py                           # 500,000 SKUs, Plus plan
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

import harness
from floors import amazon_feeds_floor, shopify_push_floor, webhook_floor
from harness import DEFAULT_ADMIN_URL, Proc, create_database, drop_database
from stockkeeper.bootstrap import Container, build, channel_adapter
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.channels import Push
from stockkeeper.connectors.records import LevelRecord
from stockkeeper.domain.events import LEVEL_CHANGED, LEVELS_CHANGED
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.workers.propagator import Propagator

SECRET_ENV = "BENCH_CHANNEL_SECRET"
SECRET = "bench-channel-secret-0123456789"
SELLER = "A1BENCH"
ENV = {SECRET_ENV: SECRET}
CHANNELS = ("shopify", "hooks", "amazon")
FEED_RATE, FEED_BURST = 0.0083, 15.0  # the sandbox's createFeed limit (Amazon's)
FEED_MAX_MESSAGES = 25_000  # listings-feed-schema-v2: messages maxItems


def on_hand(n: int) -> int:
    return n % 40 + 1


def channel_configs(ports: dict[str, int], args: argparse.Namespace) -> list[dict[str, Any]]:
    base = "http://127.0.0.1"
    quiet = {"divergence_sample_s": 0}
    out = [
        {
            "id": "shopify",
            "type": "shopify",
            "url": f"{base}:{ports['shopify']}/admin/api/2026-04/graphql.json",
            "location_id": "gid://shopify/Location/1",
            **quiet,
        },
        {
            "id": "hooks",
            "type": "outbound_webhook",
            "url": f"{base}:{ports['hooks']}/stock",
            "secret_env": SECRET_ENV,
            "batch_size": args.hooks_batch,
            "rate_limit_rps": args.hooks_rps,
            "concurrency": args.hooks_concurrency,
            **quiet,
        },
        {
            "id": "amazon",
            "type": "amazon",
            "url": f"{base}:{ports['amazon']}",
            "seller_id": SELLER,
            "marketplace_ids": ["A1PA6795UKMFR9"],
            "feed_threshold": args.feed_threshold,
            "feed_max_skus": FEED_MAX_MESSAGES,
            "feed_poll_s": 1.0,
            **quiet,
        },
    ]
    return [c for c in out if c["id"] in args.channels]


def floors(args: argparse.Namespace) -> dict[str, tuple[float, str]]:
    n = args.skus
    return {
        "shopify": (
            shopify_push_floor(n, args.shopify_bucket, args.shopify_restore, lookups=True),
            f"bucket {args.shopify_bucket:,.0f} pts, {args.shopify_restore:,.0f} pts/s; "
            "per 250 SKUs: lookup 2+250, mutation 10",
        ),
        "hooks": (
            webhook_floor(n, args.hooks_rps, args.hooks_batch),
            f"{args.hooks_rps:g} calls/s (burst {max(1, args.hooks_rps):g}) "
            f"× {args.hooks_batch} SKUs",
        ),
        "amazon": (
            amazon_feeds_floor(n, FEED_MAX_MESSAGES, FEED_RATE, FEED_BURST, args.feed_delay),
            f"feeds of ≤{FEED_MAX_MESSAGES:,}, createFeed {FEED_RATE}/s burst "
            f"{FEED_BURST:g}, processing {args.feed_delay:g}s",
        ),
    }


async def synced_counts(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    rows = await conn.fetch(
        "SELECT channel, status, count(*) AS n FROM channel_sync_state GROUP BY 1, 2"
    )
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r["channel"], {})[r["status"]] = r["n"]
    return out


async def shown(http: httpx.AsyncClient, port: int) -> dict[str, int]:
    resp = await http.get(f"http://127.0.0.1:{port}/_sandbox/levels")
    resp.raise_for_status()
    levels: dict[str, int] = resp.json()["levels"]
    return levels


async def record_all(c: Container, worker: Propagator) -> None:
    """What the ``channel.propagation`` consumer does with the change's events."""
    handle = worker.handler()
    async with c.pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT event_type, payload, occurred_at, source FROM domain_event "
            "WHERE event_type = ANY($1::text[]) ORDER BY id",
            [LEVEL_CHANGED, LEVELS_CHANGED],
        )
    for e in events:
        env = Envelope.new(
            e["event_type"], e["payload"], occurred_at=e["occurred_at"], source=e["source"]
        )
        async with c.pool.acquire() as conn, conn.transaction():
            await handle(conn, env)


async def raw_calls(settings: Settings, skus: int) -> float:
    """The webhook's calls without us: the adapter posting every SKU again (a figure
    more), ``concurrency`` calls at a time under its rate limit, nothing claimed or
    settled. What this machine lets the receiver take now: the same run's baseline."""
    [cfg] = [c for c in settings.connectors_of(ChannelConfig) if c.id == "hooks"]
    adapter = channel_adapter(cfg)
    gate = asyncio.Semaphore(cfg.concurrency)
    batches = [
        [Push(f"SKU-{n:07d}", on_hand(n) + 1, 2) for n in range(i, min(skus, i + cfg.batch_size))]
        for i in range(0, skus, cfg.batch_size)
    ]

    async def one(batch: list[Push]) -> None:
        async with gate:
            await adapter.push(batch)

    t0 = time.perf_counter()
    try:
        await asyncio.gather(*(one(b) for b in batches))
    finally:
        await adapter.aclose()
    return time.perf_counter() - t0


def call_figures(c: Container) -> dict[str, tuple[float, float, float]]:
    """Per channel, from the metrics: calls, seconds in them, seconds of pacing waits."""
    out: dict[str, list[float]] = {}
    for family in c.metrics.registry.collect():
        for sample in family.samples:
            ch = sample.labels.get("connector")
            if ch is None or ch == "erp":
                continue
            row = out.setdefault(ch, [0.0, 0.0, 0.0])
            if sample.name == "stockkeeper_connector_call_duration_seconds_count":
                row[0] += sample.value
            elif sample.name == "stockkeeper_connector_call_duration_seconds_sum":
                row[1] += sample.value
            elif sample.name == "stockkeeper_connector_rate_limit_wait_seconds_total":
                row[2] += sample.value
    return {ch: (r[0], r[1], r[2]) for ch, r in out.items()}


async def wait_synced(
    db_url: str, channels: list[str], skus: int, poll: float, within: float, t0: float
) -> dict[str, int]:
    """Poll until every channel has every SKU SYNCED (or one is stuck, or time is up);
    the DEAD and UNLISTED counts found."""
    conn = await asyncpg.connect(db_url)
    try:
        last_print = 0.0
        while True:
            counts = await synced_counts(conn)
            now = time.perf_counter() - t0
            done = [ch for ch in channels if counts.get(ch, {}).get("SYNCED", 0) >= skus]
            stuck = {
                f"{ch} {st}": n
                for ch in channels
                for st, n in counts.get(ch, {}).items()
                if st in ("DEAD", "UNLISTED")
            }
            if len(done) == len(channels) or stuck or now > within:
                return stuck
            if now - last_print >= 10:
                last_print = now
                line = ", ".join(f"{ch} {counts.get(ch, {}).get('SYNCED', 0):,}" for ch in channels)
                print(f"  {now:6.0f}s synced: {line}", flush=True)
            await asyncio.sleep(poll)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> int:
    admin = args.database_url
    name = f"bench_catalogue_{uuid.uuid4().hex[:8]}"
    db_url = await create_database(admin, name, migrated=True)
    ports = {"shopify": harness.free_port(), "amazon": harness.free_port()}
    ports["hooks"] = harness.free_port()
    workdir = Path(tempfile.mkdtemp(prefix="bench-catalogue-"))
    erp = {"id": "erp", "type": "erp", "dsn": "postgresql+asyncpg://x@127.0.0.1/x"}
    os.environ[SECRET_ENV] = SECRET
    settings = Settings.model_validate(
        {
            "database": {"url": db_url, "pool_size": 12},
            "api": {"tokens": [{"token": "bench-token-0123456789", "scopes": ["admin"]}]},
            "logging": {"level": "warning"},
            "connectors": [erp, *channel_configs(ports, args)],
        }
    )
    c = await build(settings)
    procs: list[Proc] = []
    took: dict[str, float | None] = dict.fromkeys(args.channels)
    mismatched: dict[str, int] = {}
    counters: dict[str, Any] = {}
    stuck: dict[str, int] = {}
    raw_s: float | None = None
    try:
        sandbox = Proc(
            [
                "sandbox",
                "channels",
                "--shopify-port",
                str(ports["shopify"]),
                "--amazon-port",
                str(ports["amazon"]),
                "--webhook-port",
                str(ports["hooks"]),
                "--webhook-secret-env",
                SECRET_ENV,
                "--seller-id",
                SELLER,
                "--shopify-bucket",
                str(args.shopify_bucket),
                "--shopify-restore-rate",
                str(args.shopify_restore),
                "--amazon-feed-delay",
                str(args.feed_delay),
            ],
            workdir,
            "sandbox",
            env=ENV,
        )
        procs.append(sandbox)
        for port in ports.values():
            await sandbox.ready(f"http://127.0.0.1:{port}/_sandbox/counters", within=30)
        adapters = {
            cfg.id: channel_adapter(cfg, c.metrics) for cfg in settings.connectors_of(ChannelConfig)
        }
        worker = Propagator(c.propagation, adapters, c.pool)
        print(f"the ERP change: {args.skus:,} SKUs in pages of {args.page:,}", flush=True)
        at = datetime.now(UTC)
        t0 = time.perf_counter()
        for i in range(0, args.skus, args.page):
            levels = [
                LevelRecord(sku=f"SKU-{n:07d}", on_hand=on_hand(n), source_updated_at=at)
                for n in range(i, min(args.skus, i + args.page))
            ]
            async with c.pool.acquire() as conn, conn.transaction():
                await c.ingest.apply(conn, "erp", levels, [], reference=f"erp-{i}")
        ingest_s = time.perf_counter() - t0
        print(f"  applied in {ingest_s:.1f}s", flush=True)
        record_s = 0.0
        if args.record_first:
            t0 = time.perf_counter()
            await record_all(c, worker)
            record_s = time.perf_counter() - t0
            print(f"  recorded per channel in {record_s:.1f}s", flush=True)
        stop = asyncio.Event()
        start = datetime.now(UTC)
        t0 = time.perf_counter()
        cpu0 = (time.process_time(), harness.proc_cpu(sandbox.pid))
        running = asyncio.ensure_future(worker.run(stop))
        recording: asyncio.Future[None] | None = None
        if not args.record_first:
            # As in production: the consumer records while the senders push.
            recording = asyncio.ensure_future(record_all(c, worker))
            recording.add_done_callback(lambda _f: print("  recorded", flush=True))
        try:
            stuck = await wait_synced(db_url, args.channels, args.skus, args.poll, args.timeout, t0)
            if recording is not None:
                await recording
                record_s = time.perf_counter() - t0  # an upper bound: polled after
        finally:
            stop.set()
            await running
            if recording is not None and not recording.done():
                recording.cancel()
        push_wall = time.perf_counter() - t0
        cpu = (time.process_time() - cpu0[0], harness.proc_cpu(sandbox.pid) - cpu0[1])
        print(
            f"  push phase {push_wall:.1f}s: CPU of the propagator's loops {cpu[0]:.1f}s, "
            f"of the sandbox {cpu[1]:.1f}s; load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for ch, (calls, secs, waited) in call_figures(c).items():
            print(
                f"  {ch}: {calls:,.0f} calls, {secs / max(calls, 1) * 1000:.0f} ms each on "
                f"average, {waited:.1f}s waiting for a turn in the rate limit",
                flush=True,
            )
        if stuck:
            print(f"  dead or unlisted: {stuck}", flush=True)
        async with c.pool.acquire() as conn:
            last = await conn.fetch(
                "SELECT channel, max(pushed_at) AS at, count(*) FILTER (WHERE status = 'SYNCED') "
                "AS synced FROM channel_sync_state GROUP BY channel"
            )
        for r in last:
            if r["channel"] in took and r["synced"] >= args.skus:
                took[r["channel"]] = (r["at"] - start).total_seconds()
        async with httpx.AsyncClient(timeout=120) as http:
            for ch in args.channels:
                there = await shown(http, ports[ch])
                mismatched[ch] = sum(
                    1 for n in range(args.skus) if there.get(f"SKU-{n:07d}") != on_hand(n)
                )
                resp = await http.get(f"http://127.0.0.1:{ports[ch]}/_sandbox/counters")
                counters[ch] = resp.json()
        if "hooks" in args.channels:
            raw_s = await raw_calls(settings, args.skus)
            print(f"  the same calls to the receiver straight, no database: {raw_s:.1f}s")
    finally:
        for p in reversed(procs):
            p.stop()
        await c.close()
        await drop_database(admin, name)

    limits = floors(args)
    since = (
        f"from the start of the push phase, after recording every change ({record_s:.1f}s)"
        if args.record_first
        else "from the ERP change committed: recording and pushing together, as deployed"
    )
    print(
        f"\n{args.skus:,} new SKUs from the ERP, every one due on every channel, to in sync, "
        f"{since} (sandbox; applying the ERP pages before: {ingest_s:.1f}s; shared machine)\n"
    )
    rows = []
    for ch in args.channels:
        floor, how = limits[ch]
        t = took[ch]
        rows.append(
            [
                ch,
                "-" if t is None else f"{t:,.1f}",
                "-" if not t else f"{args.skus / t:,.0f}",
                f"{floor:,.1f}",
                f"{args.skus / floor:,.0f}" if floor else "-",
                f"{t / floor:.2f}" if t and floor else "-",
                f"{t / raw_s:.2f}" if t and raw_s and ch == "hooks" else "-",
                how,
            ]
        )
    print(
        harness.markdown_table(
            (
                "channel",
                "s to in sync",
                "SKUs/s",
                "floor s",
                "floor SKUs/s",
                "× floor",
                "× raw calls",
                "floor",
            ),
            rows,
            "lrrrrrrl",
        )
    )
    print(f"\nnot shown as ours at the end: {mismatched}")
    for ch, cnt in counters.items():
        print(f"{ch} counters: {cnt}")
    out = harness.write_results(
        "catalogue",
        {
            "args": vars(args),
            "ingest_s": ingest_s,
            "record_s": record_s,
            "record_first": args.record_first,
            "raw_calls_s": raw_s,
            "took_s": took,
            "floors_s": {ch: limits[ch][0] for ch in args.channels},
            "mismatched": mismatched,
            "stuck": stuck,
            "counters": counters,
        },
    )
    print(f"kept in {out}")
    ok = all(took[ch] is not None for ch in args.channels) and not any(mismatched.values())
    return 0 if ok else 1


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--skus", type=int, default=500_000)
    ap.add_argument("--page", type=int, default=5_000, help="records per ERP page")
    ap.add_argument("--channels", nargs="+", default=list(CHANNELS), choices=CHANNELS)
    ap.add_argument("--shopify-bucket", type=float, default=20_000.0, help="Plus: 20,000")
    ap.add_argument("--shopify-restore", type=float, default=1_000.0, help="Plus: 1,000/s")
    ap.add_argument("--hooks-rps", type=float, default=20.0)
    ap.add_argument("--hooks-batch", type=int, default=100)
    ap.add_argument("--hooks-concurrency", type=int, default=8, help="calls in flight")
    ap.add_argument("--feed-threshold", type=int, default=1_000)
    ap.add_argument("--feed-delay", type=float, default=10.0, help="sandbox processing, s")
    ap.add_argument("--poll", type=float, default=1.0)
    ap.add_argument("--timeout", type=float, default=3_600.0)
    ap.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    ap.add_argument(
        "--record-first",
        action="store_true",
        help="record every change per channel before the senders start, and time the\n"
        "push phase alone (the default records while the senders push, as deployed)",
    )
    return ap.parse_args()


if __name__ == "__main__":
    harness.exit_with(main(parse()))
