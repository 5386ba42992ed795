"""Order saga latency: PENDING to decided, as a short-polling storefront sees it.

The real processes (``stockkeeper run inventory-api``, ``run dispatcher``, ``run saga``)
on a fresh database, RabbitMQ if ``--amqp-url`` answers (else the embedded queue). An
open-loop client places ``--rate`` orders a second for ``--duration`` seconds: each
order is a ``POST /orders`` (202), then ``GET /orders/{id}`` every ``--poll-ms``
(the first one that long after the 202) until its status is no longer PENDING
(AWAITING_PAYMENT or FAILED, the saga's decision). Its figure is the time from sending
the POST to receiving the first answer that is not PENDING. About one order in ten
(``--scarce-share``) asks for a SKU that runs out early, so the FAILED path (with its
shortages) is measured too.

Baselines, measured in the same run at the same rate and on the same server:

- one poll: ``GET /orders/{id}`` of an order already decided (the round trip every
  poll costs; the client-side figure can never beat POST + one poll);
- the bare inventory step: ``POST /inventory/reserve`` of one unit, synchronous (what
  the saga does for each order, plus HTTP).

Also reported, from the database: ``decided_at - created_at`` of each measured order
(the saga's own latency, without the polling's granularity), and the decisions per
second from the first order placed to the last decided (at a rate the saga cannot keep
up with, its capacity); and the CPU per order of each process (the API's share includes
the order's polls).

    python bench/orders.py --quick                 # 5 s of orders
    python bench/orders.py                         # 200 orders/s for 20 s
    python bench/orders.py --rate 300 --duration 30 --strategy optimistic
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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
    cluster_processes,
    create_database,
    drop_database,
    free_port,
    machine_cpu,
    markdown_table,
    percentile,
    proc_cpu,
    rabbit_ok,
    rabbit_pids,
    wait_quiet,
)

# The raw HTTP/1.1 client that keeps the load generator from being the bottleneck.
from reserve import RawHttp
from stockkeeper.messaging import rabbitmq

N_SKUS = 200
SCARCE = "SCARCE-1"
SHIP_TO = {"name": "Bench", "line1": "1 Main St", "city": "Berlin", "country": "DE"}
# Not in the CPU per order: the load generator; RabbitMQ apart (on a shared machine its
# figure holds other users' traffic too).
SIDE = ("client", "rabbitmq")
CARRIERS = [{"id": "post", "cost": "4.00", "reliability": "0.9", "transit_days": 3}]


class Client:
    """A pool of keep-alive raw HTTP connections, one request at a time on each."""

    def __init__(self, port: int, connections: int) -> None:
        self.port = port
        self.idle: asyncio.Queue[RawHttp] = asyncio.Queue()
        for _ in range(connections):
            self.idle.put_nowait(RawHttp("127.0.0.1", port))
        self.errors = 0

    def _bytes(self, method: str, path: str, body: bytes | None) -> bytes:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Authorization: Bearer {TOKEN}\r\n"
        )
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        return (head + "\r\n").encode() + (body or b"")

    async def send(self, method: str, path: str, doc: Any = None) -> tuple[int, Any]:
        body = None if doc is None else orjson.dumps(doc)
        conn = await self.idle.get()
        try:
            status, answer = await conn.send(self._bytes(method, path, body))
        except (OSError, asyncio.IncompleteReadError):
            conn.close()
            self.errors += 1
            raise
        finally:
            self.idle.put_nowait(conn)
        return status, orjson.loads(answer) if answer else None

    def close(self) -> None:
        """Close every connection; the next request on each opens a fresh one (after a
        pause longer than the server's keep-alive the old ones would be gone)."""
        for _ in range(self.idle.qsize()):
            conn = self.idle.get_nowait()
            conn.close()
            self.idle.put_nowait(conn)


@dataclass
class Phase:
    """Latencies (s) of one open-loop phase, and what went wrong."""

    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    late_starts: int = 0  # requests the generator could not start on time (>10 ms late)
    polls: int = 0  # GET /orders/{id} sent while waiting for decisions
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {
            "n": len(lat),
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
            "max_ms": (lat[-1] if lat else 0.0) * 1000,
            "outcomes": dict(self.outcomes),
            "late_starts": self.late_starts,
            "rate_per_s": len(lat) / self.wall_s if self.wall_s else 0.0,
        }


async def open_loop(
    rate: float, seconds: float, one: Callable[[int, Phase], Awaitable[None]]
) -> Phase:
    """Start ``one(i, phase)`` ``rate`` times a second for ``seconds``, whatever the
    answers' pace (a storefront's customers do not wait for each other)."""
    phase = Phase()
    n = int(rate * seconds)
    start = time.perf_counter()
    tasks = []
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            phase.late_starts += 1
        tasks.append(asyncio.ensure_future(one(i, phase)))
    await asyncio.gather(*tasks)
    phase.wall_s = time.perf_counter() - start
    return phase


def order_doc(order_id: str, rng: random.Random, scarce_share: float) -> dict[str, Any]:
    sku = SCARCE if rng.random() < scarce_share else f"SKU-{rng.randrange(N_SKUS):04d}"
    return {
        "order_id": order_id,
        "lines": [{"sku": sku, "quantity": 1}],
        "ship_to": SHIP_TO,
    }


def placing(
    http: Client, run: str, args: argparse.Namespace, tag: str, decided: list[str]
) -> Callable[[int, Phase], Awaitable[None]]:
    rng = random.Random(hash(tag))
    poll = args.poll_ms / 1000

    async def one(i: int, phase: Phase) -> None:
        oid = f"{run}-{tag}-{i}"
        doc = order_doc(oid, rng, args.scarce_share)
        t0 = time.perf_counter()
        status, _ = await http.send("POST", "/orders", doc)
        if status != 202:
            phase.outcomes[f"POST {status}"] += 1
            return
        while True:
            await asyncio.sleep(poll)
            status, body = await http.send("GET", f"/orders/{oid}")
            phase.polls += 1
            if status != 200:
                phase.outcomes[f"GET {status}"] += 1
                return
            if body["status"] != "PENDING":
                break
            if time.perf_counter() - t0 > 60:
                phase.outcomes["still PENDING after 60 s"] += 1
                return
        phase.latencies.append(time.perf_counter() - t0)
        phase.outcomes[body["status"]] += 1
        decided.append(oid)

    return one


def polling(http: Client, ids: list[str]) -> Callable[[int, Phase], Awaitable[None]]:
    async def one(i: int, phase: Phase) -> None:
        t0 = time.perf_counter()
        status, _ = await http.send("GET", f"/orders/{ids[i % len(ids)]}")
        phase.latencies.append(time.perf_counter() - t0)
        phase.outcomes[str(status)] += 1

    return one


def reserving(http: Client, run: str) -> Callable[[int, Phase], Awaitable[None]]:
    rng = random.Random(7)

    async def one(i: int, phase: Phase) -> None:
        doc = {
            "order_id": f"{run}-reserve-{i}",
            "lines": [{"sku": f"SKU-{rng.randrange(N_SKUS):04d}", "quantity": 1}],
        }
        t0 = time.perf_counter()
        status, _ = await http.send("POST", "/inventory/reserve", doc)
        phase.latencies.append(time.perf_counter() - t0)
        phase.outcomes[str(status)] += 1

    return one


async def seed(port: int, scarce: int) -> None:
    """Stock through the API (the real path): plenty of N_SKUS, a little of SCARCE."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as h:
        sem = asyncio.Semaphore(16)

        async def receive(sku: str, qty: int) -> None:
            async with sem:
                r = await h.post(
                    "/inventory/receipts",
                    json={"sku": sku, "quantity": qty, "reference_id": f"seed-{sku}"},
                )
                r.raise_for_status()

        await asyncio.gather(
            *(receive(f"SKU-{i:04d}", 1_000_000) for i in range(N_SKUS)), receive(SCARCE, scarce)
        )


async def wait_ready(procs: list[Proc], port: int) -> None:
    """The API answers /readyz and every other process has logged that it started."""
    await procs[0].ready(f"http://127.0.0.1:{port}/readyz")
    for _ in range(600):
        for p in procs:
            p.check()
        logs = [p.log.read_text(errors="replace") for p in procs[1:]]
        if all('"started"' in t or ".started" in t for t in logs):
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("the processes did not start")


def cpu_seconds(procs: list[Proc], postmaster: int | None, dbname: str) -> dict[str, float]:
    """CPU seconds so far: each of our processes, PostgreSQL (this database's backends
    and the cluster's own processes, not other databases' sessions), RabbitMQ, this
    load generator, and the whole machine."""
    out = {p.label: proc_cpu(p.pid) for p in procs}
    pg = cluster_processes(postmaster, dbname) if postmaster else []
    out["postgres"] = sum(proc_cpu(pid) for pid in pg)
    out["rabbitmq"] = sum(proc_cpu(pid) for pid in rabbit_pids())
    out["client"] = time.process_time()
    out["machine"] = machine_cpu()[0]
    return out


async def server_side(db_url: str, ids: list[str]) -> dict[str, Any]:
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT extract(epoch FROM decided_at - created_at) AS s FROM orders "
            "WHERE order_id = ANY($1::text[]) AND decided_at IS NOT NULL",
            ids,
        )
        span = await conn.fetchval(
            "SELECT extract(epoch FROM max(decided_at) - min(created_at))::float8 FROM orders "
            "WHERE order_id = ANY($1::text[]) AND decided_at IS NOT NULL",
            ids,
        )
        by_status = await conn.fetch(
            "SELECT status, count(*) AS n FROM orders WHERE order_id = ANY($1::text[]) GROUP BY 1",
            ids,
        )
    finally:
        await conn.close()
    lat = sorted(float(r["s"]) for r in rows)
    return {
        "n": len(lat),
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "max_ms": (lat[-1] if lat else 0.0) * 1000,
        "outcomes": {r["status"]: r["n"] for r in by_status},
        # Decisions per second, from the first order placed to the last one decided: the
        # offered rate while the saga keeps up, its capacity when it does not.
        "rate_per_s": len(lat) / span if span else 0.0,
    }


async def amain(args: argparse.Namespace) -> int:
    run = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="bench-orders-"))
    name = f"bench_orders_{run}"
    db_url = await create_database(args.database_url, name, migrated=True)
    broker: dict[str, Any] = {"prefix": f"b{run}."}
    if await rabbit_ok(args.amqp_url):
        broker["url"] = args.amqp_url
    port = free_port()
    cfg = {
        "data_dir": str(workdir / "data"),
        "database": {"url": db_url, "pool_size": 20},
        "broker": broker,
        "concurrency": {"strategy": args.strategy},
        "orders": {"carriers": CARRIERS, "consumers": args.consumers},
        "logging": {"level": "info"},
        "monitoring": {"metrics_port": 0},
        "api": {
            "inventory_port": port,
            "admin_port": free_port(),
            "tokens": [
                {"name": "b", "token": TOKEN, "scopes": ["inventory:read", "inventory:write"]}
            ],
        },
    }
    procs = [Proc(["run", s], workdir, s, cfg=cfg) for s in ("inventory-api", "dispatcher", "saga")]
    http = Client(port, args.connections)
    try:
        await wait_ready(procs, port)
        await seed(port, args.scarce)
        load0 = os.getloadavg()
        await wait_quiet(args.quiet_below, args.quiet_wait)
        http.close()
        warm: list[str] = []
        await open_loop(args.rate, args.warmup, placing(http, run, args, "warmup", warm))
        poll = await open_loop(args.rate, args.baseline, polling(http, warm))
        reserve = await open_loop(args.rate, args.baseline, reserving(http, run))
        measured: list[str] = []
        postmaster = await harness.postmaster(db_url)
        # Other programs on a shared machine skew everything: start when it is idle.
        waited, busy = await wait_quiet(args.quiet_below, args.quiet_wait)
        http.close()
        cpu0, t0 = cpu_seconds(procs, postmaster, name), time.perf_counter()
        orders = await open_loop(
            args.rate, args.duration, placing(http, run, args, "measured", measured)
        )
        cpu1, wall = cpu_seconds(procs, postmaster, name), time.perf_counter() - t0
        cores = {k: (cpu1[k] - cpu0[k]) / wall for k in cpu0}
        # CPU per order placed while measured (its POST, its polls, its saga step, its
        # events), per process and for the processes that serve orders together.
        n_orders = max(1, int(args.rate * args.duration))
        per_order = {
            k: (cpu1[k] - cpu0[k]) / n_orders * 1000 for k in cpu0 if k not in ("machine",)
        }
        per_order["total"] = sum(v for k, v in per_order.items() if k not in SIDE)
        per_order["total with rabbitmq"] = per_order["total"] + per_order["rabbitmq"]
        cores["other"] = cores["machine"] - sum(v for k, v in cores.items() if k != "machine")
        for p in procs:
            p.check()
        saga = await server_side(db_url, measured)
        load1 = os.getloadavg()
    finally:
        http.close()
        for p in procs:
            p.stop()
        if "url" in broker:
            await rabbitmq.delete_topology(args.amqp_url, broker["prefix"])
        await drop_database(args.database_url, name)

    rows = [
        ("baseline: one poll, GET /orders/{id} of a decided order", poll.summary()),
        ("baseline: POST /inventory/reserve, 1 unit", reserve.summary()),
        ("saga only: decided_at - created_at (database)", saga),
        (f"PENDING → decided, polling every {args.poll_ms} ms (client)", orders.summary()),
    ]
    where = "RabbitMQ" if "url" in broker else "embedded queue"
    print(
        f"\n{args.rate:g} orders/s for {args.duration:g} s, {where}, strategy {args.strategy}, "
        f"{args.consumers} saga consumers, {os.cpu_count()} cores, "
        f"load average {load0[0]:.1f} before, {load1[0]:.1f} after; waited {waited:.0f} s "
        f"for a quiet machine ({busy:.2f} cores busy at the start)\n"
    )
    head = ("measurement", "n", "p50 ms", "p99 ms", "max ms", "rate/s")
    lines = [
        [
            label,
            str(r["n"]),
            f"{r['p50_ms']:.1f}",
            f"{r['p99_ms']:.1f}",
            f"{r['max_ms']:.1f}",
            f"{r['rate_per_s']:.0f}" if "rate_per_s" in r else "",
        ]
        for label, r in rows
    ]
    print(markdown_table(head, lines, "lrrrrr"))
    print(
        f"\noutcomes: {dict(orders.outcomes)}; late starts: {orders.late_starts}; "
        f"polls per order: {orders.polls / max(1, len(orders.latencies)):.1f}"
    )
    print("CPU (cores) while measured: " + ", ".join(f"{k} {v:.2f}" for k, v in cores.items()))
    print(
        "CPU ms per order: "
        + ", ".join(f"{k} {v:.2f}" for k, v in per_order.items())
        + f" (total: all but {', '.join(SIDE)}; PostgreSQL's and RabbitMQ's figures include"
        " their shared processes)"
    )
    if http.errors:
        print(f"transport errors: {http.errors}", file=sys.stderr)
    out = harness.write_results(
        "orders",
        {
            "args": vars(args),
            "broker": where,
            "load": [load0, load1],
            "quiet_wait": {"waited_s": waited, "busy_cores": busy},
            "cpu_cores": cores,
            "cpu_ms_per_order": per_order,
            "rows": dict(rows),
        },
    )
    print(f"kept in {out}")
    bad = {k: v for k, v in orders.outcomes.items() if k not in ("AWAITING_PAYMENT", "FAILED")}
    return 1 if bad or http.errors else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="orders (and baseline calls) per s")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of measured orders")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of orders not counted")
    p.add_argument("--baseline", type=float, default=5.0, help="seconds of each baseline")
    p.add_argument("--poll-ms", type=int, default=50, help="the storefront's poll interval")
    p.add_argument("--scarce-share", type=float, default=0.1)
    p.add_argument("--scarce", type=int, default=50, help="units of the scarce SKU")
    p.add_argument(
        "--strategy", default="conditional", choices=["conditional", "row_lock", "optimistic"]
    )
    p.add_argument("--consumers", type=int, default=4, help="saga consumers in the process")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--quiet-wait", type=float, default=60.0, help="wait for an idle machine")
    p.add_argument("--quiet-below", type=float, default=0.3, help="idle: under this many cores")
    p.add_argument("--quick", action="store_true", help="5 s of orders, 2 s baselines")
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL)
    p.add_argument("--amqp-url", default=DEFAULT_AMQP_URL)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.baseline, args.warmup = 5.0, 2.0, 1.0
    return args


def main() -> int:
    return harness.run(amain(parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
