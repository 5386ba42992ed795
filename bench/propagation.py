"""Propagation: sync lag per channel at a steady rate of changes, and what coalescing saved.

One run:

1. A fresh database and RabbitMQ prefix; ``stockkeeper sandbox channels`` (Shopify with
   its standard cost bucket, Amazon at 5 requests/s, a webhook receiver) in its own
   process; ``stockkeeper run dispatcher`` and ``run propagator`` as separate processes.
2. ``--skus`` SKUs received, every channel brought in sync.
3. ``--rate`` level changes a second for ``--seconds``, open loop. ``--via feed``
   (default): an ERP-like feed of absolute levels, ``--per-txn`` records per ingest
   message, applied by ``stockkeeper run ingest``. ``--via use-cases``: receipts,
   reservations and releases through the use cases from this process, ``--per-txn``
   SKUs per transaction (on 2 cores this generator itself tops out near 300/s).
4. Figures from the database: per channel, p50/p99 of ``channel_push.lag_ms`` (commit of
   the change to the channel's acknowledgement) for pushes acknowledged while the load
   ran; the *floor*, measured in the same run, is commit to the propagator's consumer
   transaction (``processed_message``) of the same changes: the lag before any channel
   is involved. Coalescing: level changes against SKU pushes per channel.

    python bench/propagation.py --seconds 10 --rate 200      # quick
    python bench/propagation.py                              # 500 changes/s for 60 s
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

import harness
from harness import (
    DEFAULT_ADMIN_URL,
    DEFAULT_AMQP_URL,
    Proc,
    create_database,
    drop_database,
    fmt,
    free_port,
    markdown_table,
    percentile,
)
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.connectors.records import LevelRecord
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import InsufficientStock
from stockkeeper.messaging import rabbitmq
from stockkeeper.services.ingest import queue_records
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.store import stock
from stockkeeper.store.pool import Conn

SECRET_ENV = "BENCH_CHANNEL_SECRET"
SECRET = "bench-channel-secret-0123456789"
SELLER = "A1BENCH"
ENV = {SECRET_ENV: SECRET}
CHANNELS = ("shopify", "amazon", "hooks")


def connectors(ports: dict[str, int]) -> list[dict[str, Any]]:
    base = "http://127.0.0.1"
    return [
        {
            "id": "shopify",
            "type": "shopify",
            "url": f"{base}:{ports['shopify']}/admin/api/2026-04/graphql.json",
            "location_id": "gid://shopify/Location/1",
        },
        {
            "id": "amazon",
            "type": "amazon",
            "url": f"{base}:{ports['amazon']}",
            "seller_id": SELLER,
            "marketplace_ids": ["A1PA6795UKMFR9"],
        },
        {
            "id": "hooks",
            "type": "outbound_webhook",
            "url": f"{base}:{ports['hooks']}/stock",
            "secret_env": SECRET_ENV,
            "batch_size": 50,
        },
    ]


class Load:
    """Changes through the real use cases: receipts, reservations, releases. Each
    transaction changes ``per_txn`` distinct SKUs (in name order, the global lock order),
    as a page of an ERP or WMS sync does: as many level changes, fewer commits."""

    def __init__(self, c: Container, skus: list[str], seed: int, per_txn: int) -> None:
        self.c = c
        self.skus = skus
        self.rng = random.Random(seed)
        self.per_txn = per_txn
        self.held: dict[str, list[str]] = {}

    async def _one(self, conn: Conn, sku: str) -> str | None:
        """One change of ``sku``; the order it reserved, if it did."""
        roll = self.rng.random()
        if roll < 0.5 or (roll >= 0.8 and not self.held.get(sku)):
            await self.c.stock.receive(Receipt(sku, 1, reference_id=f"r-{uuid.uuid4().hex}"), conn)
            return None
        if roll < 0.8:
            order = f"o-{uuid.uuid4().hex}"
            try:
                await self.c.reservations.reserve(
                    ReserveRequest(order, (OrderLine(sku, 1),), ttl_seconds=3600), conn
                )
            except InsufficientStock:
                receipt = Receipt(sku, 5, reference_id=f"r-{uuid.uuid4().hex}")
                await self.c.stock.receive(receipt, conn)
                return None
            return order
        orders = self.held[sku]
        await self.c.reservations.release(orders.pop(self.rng.randrange(len(orders))), conn=conn)
        return None

    async def batch(self) -> None:
        reserved: list[tuple[str, str]] = []
        async with self.c.pool.acquire() as conn, conn.transaction():
            for sku in sorted(self.rng.sample(self.skus, self.per_txn)):
                order = await self._one(conn, sku)
                if order is not None:
                    reserved.append((sku, order))
        for sku, order in reserved:
            self.held.setdefault(sku, []).append(order)

    async def run(self, rate: float, seconds: float, in_flight: int = 8) -> float:
        """Open loop: transaction i is due at start + i * per_txn / rate. Returns the
        achieved rate of changes."""
        gate = asyncio.Semaphore(in_flight)
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds / self.per_txn)
        tasks: list[asyncio.Task[None]] = []

        async def guarded() -> None:
            async with gate:
                await self.batch()

        for i in range(total):
            delay = start + i * self.per_txn / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(guarded()))
        await asyncio.gather(*tasks)
        return total * self.per_txn / (loop.time() - start)


class FeedLoad:
    """An ERP-like feed: absolute levels queued as ``ingest.feed`` messages (``per_txn``
    records each, through the outbox, as the ERP poller and webhooks queue them) and
    applied by ``stockkeeper run ingest``: the level changes commit in the ingest
    worker's transactions, set-based, as a real feed's do."""

    def __init__(self, c: Container, skus: list[str], seed: int, per_txn: int) -> None:
        self.c = c
        self.skus = skus
        self.rng = random.Random(seed)
        self.per_txn = per_txn

    async def batch(self) -> None:
        now = datetime.now(UTC)
        levels = [
            LevelRecord(sku=sku, on_hand=self.rng.randint(0, 60), source_updated_at=now)
            for sku in self.rng.sample(self.skus, self.per_txn)
        ]
        async with self.c.pool.acquire() as conn, conn.transaction():
            await queue_records(conn, "feed", levels, [])

    async def run(self, rate: float, seconds: float) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        total = int(rate * seconds / self.per_txn)
        for i in range(total):
            delay = start + i * self.per_txn / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.batch()
        return total * self.per_txn / (loop.time() - start)


async def levels(http: httpx.AsyncClient, port: int) -> dict[str, int]:
    resp = await http.get(f"http://127.0.0.1:{port}/_sandbox/levels")
    resp.raise_for_status()
    shown: dict[str, int] = resp.json()["levels"]
    return shown


async def sandboxes_up(ports: dict[str, int], sandbox: Proc) -> None:
    for port in ports.values():
        await sandbox.ready(f"http://127.0.0.1:{port}/_sandbox/levels", within=20)


async def wait_in_sync(
    c: Container, skus: list[str], ports: dict[str, int], within: float
) -> dict[str, float | None]:
    """Seconds until each channel shows our availability of every SKU (None: not within
    ``within`` seconds). Ours is read afresh each round: queued feed records may still be
    landing."""
    start = time.monotonic()
    took: dict[str, float | None] = dict.fromkeys(CHANNELS)
    async with httpx.AsyncClient(timeout=10) as http:
        while time.monotonic() - start < within and any(v is None for v in took.values()):
            async with c.pool.acquire() as conn:
                now = datetime.now(UTC)
                ours = {
                    s: lv.level.available
                    for s, lv in (await stock.sku_levels(conn, skus, now)).items()
                }
            for ch in CHANNELS:
                if took[ch] is None:
                    shown = await levels(http, ports[ch])
                    if all(shown.get(s) == q for s, q in ours.items()):
                        took[ch] = time.monotonic() - start
            await asyncio.sleep(0.5)
    return took


def ms(value: float) -> str:
    return fmt(value, ",.0f")


def times(a: float, b: float) -> str:
    """``a`` as a multiple of ``b``, or ``-`` when either is missing or zero."""
    ratio = a / b if a and b else None
    return "-" if fmt(ratio, ".1f") == "-" else f"{ratio:.1f}x"


async def figures(db_url: str, since: datetime, until: datetime) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        floor = [
            r["lag_ms"]
            for r in await conn.fetch(
                "SELECT (EXTRACT(EPOCH FROM p.processed_at - e.occurred_at) * 1000)::float8 "
                "AS lag_ms "
                "FROM domain_event e JOIN processed_message p "
                "ON p.message_id = e.event_id AND p.consumer = 'propagator' "
                "WHERE e.event_type IN ('inventory.level_changed', 'inventory.levels_changed') "
                "AND e.occurred_at BETWEEN $1 AND $2",
                since,
                until,
            )
        ]
        # A levels_changed message (D-220) carries one change per SKU in it.
        changes = await conn.fetchval(
            "SELECT coalesce(sum(CASE WHEN event_type = 'inventory.levels_changed' "
            "THEN jsonb_array_length(payload->'levels') ELSE 1 END), 0) "
            "FROM domain_event "
            "WHERE event_type IN ('inventory.level_changed', 'inventory.levels_changed') "
            "AND occurred_at BETWEEN $1 AND $2",
            since,
            until,
        )
        per: dict[str, Any] = {}
        for ch in CHANNELS:
            lags = [
                r["lag_ms"]
                for r in await conn.fetch(
                    "SELECT lag_ms FROM channel_push "
                    "WHERE channel = $1 AND acked_at BETWEEN $2 AND $3",
                    ch,
                    since,
                    until,
                )
            ]
            pushes = await conn.fetchval(
                "SELECT count(*) FROM channel_push WHERE channel = $1 AND acked_at >= $2", ch, since
            )
            per[ch] = {"lags": lags, "pushes": pushes}
        dead = await conn.fetchval("SELECT count(*) FROM dead_letter")
    finally:
        await conn.close()
    return {"floor": floor, "changes": changes, "channels": per, "dead_letters": dead}


async def calls(ports: dict[str, int]) -> dict[str, dict[str, int]]:
    async with httpx.AsyncClient(timeout=10) as http:
        out = {}
        for ch in CHANNELS:
            resp = await http.get(f"http://127.0.0.1:{ports[ch]}/_sandbox/counters")
            out[ch] = resp.json()
    return out


async def main(args: argparse.Namespace) -> int:
    admin = args.database_url
    name = f"bench_prop_{uuid.uuid4().hex[:8]}"
    prefix = f"benchprop{uuid.uuid4().hex[:6]}."
    db_url = await create_database(admin, name, migrated=True)
    ports = {ch: free_port() for ch in CHANNELS}
    workdir = Path(tempfile.mkdtemp(prefix="bench-propagation-"))
    cfg = {
        "database": {"url": db_url, "pool_size": 10},
        "broker": {"url": args.amqp_url, "prefix": prefix},
        "api": {"tokens": [{"token": "bench-token-0123456789", "scopes": ["admin"]}]},
        "logging": {"level": "warning"},
        "monitoring": {"metrics_port": 0},
        "connectors": [
            *connectors(ports),
            {"id": "feed", "type": "webhook", "secret_env": SECRET_ENV},
        ],
    }
    (workdir / "stockkeeper.yaml").write_text(yaml.safe_dump(cfg))
    procs: list[Proc] = []
    os.environ[SECRET_ENV] = SECRET
    c = await build(
        Settings.model_validate(
            {**cfg, "database": {"url": db_url, "pool_size": 16}, "connectors": []}
        )
    )
    try:
        procs.append(
            Proc(
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
                ],
                workdir,
                "sandbox",
                env=ENV,
            )
        )
        await sandboxes_up(ports, procs[0])
        for service in ("dispatcher", "ingest", "propagator"):
            procs.append(
                Proc(
                    ["run", service, "--config", str(workdir / "stockkeeper.yaml")],
                    workdir,
                    service,
                    env=ENV,
                )
            )
        skus = [f"SKU-{i:05d}" for i in range(args.skus)]
        print(f"seeding {len(skus)} SKUs ...", flush=True)
        for i in range(0, len(skus), 32):
            await asyncio.gather(
                *(
                    c.stock.receive(Receipt(s, 50, reference_id=f"seed-{s}"))
                    for s in skus[i : i + 32]
                )
            )
        took = await wait_in_sync(c, skus, ports, args.settle_timeout)
        print(f"initial sync took {took} s", flush=True)
        for p in procs:
            p.check()
        before = await calls(ports)
        load: Load | FeedLoad
        if args.via == "feed":
            load = FeedLoad(c, skus, args.seed, args.per_txn)
        else:
            load = Load(c, skus, args.seed, args.per_txn)
        since = datetime.now(UTC)
        achieved = await load.run(args.rate, args.seconds)
        until = datetime.now(UTC)
        drained = await wait_in_sync(c, skus, ports, args.settle_timeout)
        for p in procs:
            p.check()
        fig = await figures(db_url, since, until)
        counts = await calls(ports)
    finally:
        for p in reversed(procs):
            p.stop()
        await c.close()
        await drop_database(admin, name)
        await rabbitmq.delete_topology(args.amqp_url, prefix)

    floor = fig["floor"]
    print()
    print(
        f"load: {args.rate:.0f} changes/s asked, {achieved:.0f}/s achieved, {args.seconds:.0f} s, "
        f"{len(skus)} SKUs, via {args.via}, {args.per_txn} per transaction; "
        f"{fig['changes']:,} level changes"
    )
    print(
        "floor (commit -> propagator's consumer): "
        f"p50 {ms(percentile(floor, 50))} ms, p99 {ms(percentile(floor, 99))} ms"
    )
    print()
    call_names = {"shopify": "mutations", "amazon": "patches", "hooks": "deliveries"}
    f50, f99 = percentile(floor, 50), percentile(floor, 99)
    rows = []
    for ch in CHANNELS:
        d = fig["channels"][ch]
        p50, p99 = percentile(d["lags"], 50), percentile(d["lags"], 99)
        saved = fig["changes"] - d["pushes"]
        call = call_names[ch]
        rows.append(
            [
                ch,
                ms(p50),
                ms(p99),
                times(p50, f50),
                times(p99, f99),
                f"{d['pushes']:,}",
                f"{saved:,} ({saved / max(1, fig['changes']):.0%})",
                f"{counts[ch].get(call, 0) - before[ch].get(call, 0):,} {call}",
                "no" if drained[ch] is None else f"{drained[ch]:.1f} s",
            ]
        )
    head = (
        "channel",
        "p50 ms",
        "p99 ms",
        "p50 / floor",
        "p99 / floor",
        "SKU pushes",
        "saved by coalescing",
        "calls",
        "in sync after load",
    )
    print(markdown_table(head, rows, "lrrrrrrrr"))
    throttled = {
        ch: counts[ch].get("throttled", 0) - before[ch].get("throttled", 0) for ch in CHANNELS
    }
    print()
    print(
        f"dead letters: {fig['dead_letters']}; "
        f"answered THROTTLED or 429 by the channel: {throttled}"
    )
    return 0


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    ap.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    ap.add_argument("--rate", type=float, default=500.0, help="changes per second")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--skus", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--per-txn", type=int, default=50, help="SKUs changed per transaction")
    ap.add_argument(
        "--via",
        choices=("feed", "use-cases"),
        default="feed",
        help="feed: absolute levels through the ingest worker; use-cases: receipts, "
        "reservations and releases from this process",
    )
    ap.add_argument("--settle-timeout", type=float, default=240.0)
    return ap.parse_args()


if __name__ == "__main__":
    harness.exit_with(main(parse()))
