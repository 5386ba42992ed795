"""Reservation throughput of inventory-api, per concurrency strategy, against its ceiling.

For each strategy (conditional, row_lock, optimistic) one real server process
(``python -m stockkeeper run inventory-api``; ``--server-procs 2``: two, each on its own
port, the connections dealt to them in turn) is started on a copy of a seeded database,
and three closed-loop loads are measured, each for a fixed time at a fixed number of
keep-alive connections:

- ``noop``: POST /noop with a reserve body: auth and validation, no database. The
  ceiling of the HTTP stack on this machine.
- ``hot``: POST /inventory/reserve of 1 unit of ONE SKU (every request contends).
- ``random``: POST /inventory/reserve of 1 unit of a random SKU out of 10,000.

The load generator runs in separate processes (asyncio, uvloop when installed) with a
minimal HTTP/1.1 client over ``asyncio.open_connection``; ``--client httpx`` swaps in
httpx.AsyncClient to compare. Every run creates its own databases and drops them.

    python bench/reserve.py --quick
    python bench/reserve.py --duration 10 --concurrency 64
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import secrets
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson

import harness
from harness import (
    DEFAULT_ADMIN_URL,
    TOKEN,
    Databases,
    Proc,
    admin_execute,
    cluster_processes,
    fmt,
    free_port,
    machine_cpu,
    machine_info,
    markdown_table,
    percentile,
    proc_cpu,
    wait_quiet,
    warn_if_busy,
)

STRATEGIES = ("conditional", "row_lock", "optimistic", "naive")
# ``naive`` is not a stockkeeper strategy: bench/naive_reserve.py, the same reservation as a
# plain FastAPI service would do it (one transaction of SELECT ... FOR UPDATE, UPDATE,
# inserts), on the same schema and seeded copy, as the baseline row.
SCENARIOS = ("noop", "hot", "random")
Scenario = Literal["noop", "hot", "random"]
ClientKind = Literal["raw", "httpx"]

HOT_SKU = "HOT-0001"
N_SKUS = 10_000
HOT_STOCK = 2**31 - 1  # MAX_QUANTITY of one receipt
SKU_STOCK = 1_000_000
SEED_CONCURRENCY = 32


def sku_name(i: int) -> str:
    return f"SKU-{i:05d}"


# -- load generator (runs in child processes) ----------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    host: str
    ports: tuple[int, ...]  # one per server process; connections are dealt round robin
    scenario: Scenario
    connections: int
    warmup: float
    duration: float
    start_at: float  # time.time() at which every load process starts sending
    order_prefix: str
    client: ClientKind = "raw"
    n_skus: int = N_SKUS
    seed: int = 0
    first_connection: int = 0  # this process's first connection number over all processes

    def port_of(self, no: int) -> int:
        """The server port of this process's connection ``no``: connections over all load
        processes are dealt to the server processes in turn, so each gets an equal share."""
        return self.ports[(self.first_connection + no) % len(self.ports)]

    @property
    def path(self) -> str:
        return "/noop" if self.scenario == "noop" else "/inventory/reserve"


@dataclass
class LoadResult:
    """What one load process saw; ``latencies`` are of requests completed in the window."""

    window_ok: int = 0
    window_errors: int = 0
    transport_errors: int = 0
    total_ok: int = 0  # over warmup, window and the tail: what the database must show
    total_sent: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    per_second: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0
    window_seconds: float = 0.0


class ProtocolError(Exception):
    pass


class RawHttp:
    """One keep-alive HTTP/1.1 connection: write a request, read one Content-Length answer."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, request: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        i = lower.find(b"\r\ncontent-length:")
        if i < 0:
            raise ProtocolError("answer without Content-Length")
        n = int(head[i + 17 : lower.index(b"\r\n", i + 2)])
        body = await self.reader.readexactly(n) if n else b""
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, body


def request_bytes(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def reserve_body(order_id: str, sku: str) -> bytes:
    return b'{"order_id":"%s","lines":[{"sku":"%s","quantity":1}]}' % (
        order_id.encode(),
        sku.encode(),
    )


def problem_slug(body: bytes) -> str:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "?"
    return str(doc.get("type", "?")) if isinstance(doc, dict) else "?"


Sender = Callable[[bytes], Awaitable[tuple[int, bytes]]]


async def _load(spec: LoadSpec) -> LoadResult:
    res = LoadResult()
    statuses: Counter[str] = Counter()
    rng = random.Random(spec.seed)
    skus = [sku_name(i) for i in range(spec.n_skus)]
    n_buckets = max(1, math.ceil(spec.duration))
    buckets = [0] * n_buckets

    clients: dict[int, httpx.AsyncClient] = {}
    if spec.client == "httpx":
        for port in spec.ports:
            limits = httpx.Limits(
                max_connections=spec.connections, max_keepalive_connections=spec.connections
            )
            clients[port] = httpx.AsyncClient(
                base_url=f"http://{spec.host}:{port}",
                limits=limits,
                timeout=60,
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
            )
    raws = [RawHttp(spec.host, spec.port_of(i)) for i in range(spec.connections)]
    if not clients:
        await asyncio.gather(*(r.open() for r in raws))

    # perf_counter deadlines aligned on the shared wall-clock start.
    offset = time.perf_counter() - time.time()
    t_start = spec.start_at + offset
    t_window = t_start + spec.warmup
    t_end = t_window + spec.duration
    if (delay := t_start - time.perf_counter()) > 0:
        await asyncio.sleep(delay)

    def httpx_sender(client: httpx.AsyncClient) -> Sender:
        async def send(body: bytes) -> tuple[int, bytes]:
            r = await client.post(spec.path, content=body)
            return r.status_code, r.content

        return send

    async def worker(no: int) -> None:
        raw = raws[no]
        port = spec.port_of(no)
        send: Sender = httpx_sender(clients[port]) if clients else raw.send
        seq = 0
        while (t0 := time.perf_counter()) < t_end:
            seq += 1
            oid = f"{spec.order_prefix}-{no}-{seq}"
            sku = skus[rng.randrange(spec.n_skus)] if spec.scenario == "random" else HOT_SKU
            body = reserve_body(oid, sku)
            if not clients:
                body = request_bytes(spec.host, port, spec.path, body)
            res.total_sent += 1
            try:
                status, answer = await send(body)
            except (OSError, asyncio.IncompleteReadError, ProtocolError, httpx.HTTPError):
                res.transport_errors += 1
                raw.close()
                await asyncio.sleep(0.01)
                continue
            t1 = time.perf_counter()
            ok = 200 <= status < 300
            res.total_ok += ok
            if t_window <= t1 < t_end:
                res.latencies.append(t1 - t0)
                buckets[min(n_buckets - 1, int(t1 - t_window))] += 1
                if ok:
                    res.window_ok += 1
                else:
                    res.window_errors += 1
                    statuses[f"{status} {problem_slug(answer)}"] += 1

    async def cpu_probe() -> None:
        await asyncio.sleep(max(0.0, t_window - time.perf_counter()))
        c0, w0 = time.process_time(), time.perf_counter()
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        res.cpu_seconds = time.process_time() - c0
        res.window_seconds = time.perf_counter() - w0

    probe = asyncio.ensure_future(cpu_probe())
    workers = [asyncio.ensure_future(worker(i)) for i in range(spec.connections)]
    _, pending = await asyncio.wait(workers, timeout=spec.warmup + spec.duration + 60)
    for task in pending:  # a request stuck for a minute: count it and give up
        task.cancel()
        res.transport_errors += 1
    await asyncio.gather(*pending, return_exceptions=True)
    await probe
    for r in raws:
        r.close()
    for client in clients.values():
        await client.aclose()
    res.statuses = dict(statuses)
    res.per_second = buckets
    return res


def run_load(spec: LoadSpec) -> LoadResult:
    """Entry point of a load process."""
    return harness.run(_load(spec))


# -- CPU accounting ------------------------------------------------------------------


@dataclass
class CpuSample:
    server: float
    postgres: dict[int, float]
    busy: float
    steal: float
    me: float

    @classmethod
    def take(cls, server_pids: list[int], postmaster: int | None, dbname: str) -> CpuSample:
        """``server``: summed over the server processes."""
        busy, steal = machine_cpu()
        pids = cluster_processes(postmaster, dbname) if postmaster else []
        pg = {pid: proc_cpu(pid) for pid in pids}
        server = sum(proc_cpu(pid) for pid in server_pids)
        return cls(server, pg, busy, steal, time.process_time())


def cpu_cores(a: CpuSample, b: CpuSample, seconds: float, loadgen: float) -> dict[str, float]:
    """CPU used between two samples, in cores (1.0 = one core busy all the time).

    ``other`` is what the machine spent beyond the server, our PostgreSQL processes, the
    load generator and this process: anything else running on the box at the time.
    """
    server = b.server - a.server
    pg = sum(v - a.postgres.get(pid, 0.0) for pid, v in b.postgres.items())
    busy = b.busy - a.busy
    other = busy - server - pg - loadgen - (b.me - a.me)
    return {
        "server": round(server / seconds, 2),
        "postgres": round(pg / seconds, 2),
        "loadgen": round(loadgen / seconds, 2),
        "other": round(max(0.0, other) / seconds, 2),
        "machine_busy": round(busy / seconds, 2),
        "steal": round((b.steal - a.steal) / seconds, 2),
    }


async def batch_counts(ports: list[int]) -> tuple[float, float] | None:
    """The coalescers' ``stockkeeper_reserve_batch_size`` histograms: (requests, batches)
    so far, summed over the server processes, or None when a server does not export it
    (the naive one)."""
    requests = batches = 0.0
    async with httpx.AsyncClient(timeout=5) as client:
        for port in ports:
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                return None
            found: dict[str, float] = {}
            for line in text.splitlines():
                name, _, value = line.partition(" ")
                if name in (
                    "stockkeeper_reserve_batch_size_sum",
                    "stockkeeper_reserve_batch_size_count",
                ):
                    found[name.rpartition("_")[2]] = float(value)
            if len(found) != 2:
                return None
            requests += found["sum"]
            batches += found["count"]
    return requests, batches


def mean_batch(a: tuple[float, float] | None, b: tuple[float, float] | None) -> float | None:
    """Requests per coalesced batch between two ``batch_counts``."""
    if a is None or b is None or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


# -- databases and server processes --------------------------------------------------


class Server:
    """``python -m stockkeeper run inventory-api`` as a child process."""

    def __init__(
        self,
        db_url: str,
        strategy: str,
        workdir: Path,
        tracing: bool = False,
        db_spans: bool = True,
        no: int = 0,
    ) -> None:
        self.dbname = urlsplit(db_url).path.lstrip("/")
        self.port = free_port()
        self.cfg = {
            "data_dir": str(workdir / "data"),
            "database": {"url": db_url, "pool_size": 20},
            "api": {
                "inventory_port": self.port,
                "admin_port": free_port(),
                "expose_noop": True,
                "tokens": [
                    {
                        "name": "bench",
                        "token": TOKEN,
                        "scopes": ["inventory:read", "inventory:write", "admin"],
                    }
                ],
            },
            # "<strategy>-direct": the same strategy with coalescing off (one transaction
            # per request), to compare with the coalesced default.
            "concurrency": (
                {"strategy": strategy.removesuffix("-direct"), "coalesce_max_batch": 1}
                if strategy.endswith("-direct")
                else {"strategy": strategy}
            ),
            "monitoring": {"metrics_port": 0},
            "logging": {"level": "warning"},
        }
        if tracing:
            # The SDK records every span (FastAPI, asyncpg) and drops it: its whole cost
            # without a collector's.
            self.cfg["tracing"] = {"exporter": "discard", "database_spans": db_spans}
        self.workdir = workdir
        self.label = f"server-{strategy}{'+tracing' if tracing else ''}-{no}"
        self.proc: Proc | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, ready_within: float = 60.0) -> None:
        self.proc = Proc(["run", "inventory-api"], self.workdir, self.label, cfg=self.cfg)
        await self.proc.ready(f"http://127.0.0.1:{self.port}/readyz", ready_within)

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class NaiveServer(Server):
    """bench/naive_reserve.py as a child process: the hand-written baseline."""

    def __init__(self, db_url: str, workdir: Path, no: int = 0) -> None:
        super().__init__(db_url, "conditional", workdir, no=no)
        self.db_url = db_url
        self.label = f"server-naive-{no}"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def spawn(self, log: Path) -> subprocess.Popen[bytes]:
        script = Path(__file__).with_name("naive_reserve.py")
        args = ["--port", str(self.port), "--database-url", self.db_url, "--token", TOKEN]
        with log.open("wb") as out:  # the child keeps its own copy of the fd
            return subprocess.Popen(
                [sys.executable, str(script), *args, "--pool-size", "20"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    async def start(self, ready_within: float = 60.0) -> None:
        log = self.workdir / f"{self.label}.log"
        self.popen = self.spawn(log)
        url = f"http://127.0.0.1:{self.port}/readyz"
        if not await asyncio.to_thread(harness.wait_ready, self.popen, url, ready_within, log):
            await self.stop()
            raise RuntimeError(f"{self.label} not ready in {ready_within}s")

    async def stop(self) -> None:
        harness.stop_process(self.popen)


class Servers:
    """``n`` server processes of one strategy on one database, each on its own port
    (``--server-procs``): what two replicas behind a load balancer would be. Each has
    its own pool, coalescer and event loop; they meet only in PostgreSQL."""

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.dbname = servers[0].dbname

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    async def start(self) -> None:
        try:
            await asyncio.gather(*(s.start() for s in self.servers))
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for s in self.servers:
            await s.stop()


async def seed(port: int, n_skus: int) -> float:
    """Receive stock for the hot SKU and ``n_skus`` others through POST /inventory/receipts."""
    todo: Iterator[tuple[str, int]] = iter(
        [(HOT_SKU, HOT_STOCK)] + [(sku_name(i), SKU_STOCK) for i in range(n_skus)]
    )
    failures: list[str] = []

    async def worker() -> None:
        conn = RawHttp("127.0.0.1", port)
        for sku, qty in todo:
            body = orjson.dumps({"sku": sku, "quantity": qty, "reference_id": f"seed-{sku}"})
            status, answer = await conn.send(
                request_bytes("127.0.0.1", port, "/inventory/receipts", body)
            )
            if status != 201:
                failures.append(f"{sku}: {status} {answer[:200]!r}")
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(SEED_CONCURRENCY)))
    if failures:
        raise RuntimeError(f"{len(failures)} receipts failed, first: {failures[0]}")
    return time.perf_counter() - t0


async def check_database(db_url: str, ok_hot: int, ok_random: int) -> dict[str, Any]:
    """The stock invariant after the load, and every 2xx reservation accounted for."""
    from stockkeeper.services.audit import audit

    conn = await asyncpg.connect(db_url)
    try:
        report = await audit(conn)
        reservations = await conn.fetchval("SELECT count(*) FROM reservation")
        hot_reserved = await conn.fetchval(
            "SELECT coalesce(sum(reserved), 0) FROM sku_batch WHERE sku = $1", HOT_SKU
        )
        all_reserved = await conn.fetchval("SELECT coalesce(sum(reserved), 0) FROM sku_batch")
    finally:
        await conn.close()
    problems = list(report.problems)
    if reservations != ok_hot + ok_random:
        problems.append(f"{reservations} reservations, but {ok_hot + ok_random} answered 2xx")
    if hot_reserved != ok_hot:
        problems.append(f"hot SKU reserved {hot_reserved}, but {ok_hot} answered 2xx")
    if all_reserved != ok_hot + ok_random:
        problems.append(f"reserved {all_reserved} in all, but {ok_hot + ok_random} answered 2xx")
    return {
        "clean": not problems,
        "reservations": reservations,
        "ledger_entries": report.ledger_entries,
        "problems": problems[:20],
    }


# -- measuring -----------------------------------------------------------------------


@dataclass
class Bench:
    args: argparse.Namespace
    pool: ProcessPoolExecutor
    run_id: str
    postmaster: int | None

    def cpu_sample(self, servers: Servers) -> CpuSample:
        return CpuSample.take(servers.pids, self.postmaster, servers.dbname)

    async def measure(
        self, servers: Servers, strategy: str, scenario: Scenario, procs: int
    ) -> dict[str, Any]:
        a = self.args
        start_at = time.time() + 1.0
        shares = [a.concurrency // procs + (i < a.concurrency % procs) for i in range(procs)]
        specs = [
            LoadSpec(
                host="127.0.0.1",
                ports=tuple(servers.ports),
                scenario=scenario,
                connections=n,
                warmup=a.warmup,
                duration=a.duration,
                start_at=start_at,
                order_prefix=f"{self.run_id}-{strategy}-{scenario}-l{procs}-{i}",
                client=a.client,
                n_skus=a.skus,
                seed=random.randrange(2**32),
                first_connection=sum(shares[:i]),
            )
            for i, n in enumerate(shares)
            if n
        ]
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self.pool, run_load, s) for s in specs]

        # Sample CPU over the same window the load processes count in.
        await asyncio.sleep(max(0.0, start_at + a.warmup - time.time()))
        before, w0 = self.cpu_sample(servers), time.perf_counter()
        batches0 = await batch_counts(servers.ports)
        await asyncio.sleep(max(0.0, start_at + a.warmup + a.duration - time.time()))
        after, w1 = self.cpu_sample(servers), time.perf_counter()
        batches1 = await batch_counts(servers.ports)
        results: list[LoadResult] = await asyncio.gather(*futures)

        lat = sorted(x for r in results for x in r.latencies)
        ok = sum(r.window_ok for r in results)
        errors = sum(r.window_errors for r in results)
        statuses: Counter[str] = Counter()
        per_second = [0] * len(results[0].per_second)
        for r in results:
            statuses.update(r.statuses)
            per_second = [x + y for x, y in zip(per_second, r.per_second, strict=True)]
        cpu = cpu_cores(before, after, w1 - w0, sum(r.cpu_seconds for r in results))
        return {
            "strategy": strategy,
            "scenario": scenario,
            "server_procs": len(servers.servers),
            "loadgen_procs": procs,
            "requests": ok + errors,
            "rps": (ok + errors) / a.duration,
            "ok_rps": ok / a.duration,
            "p50_ms": 1000 * percentile(lat, 50),
            "p90_ms": 1000 * percentile(lat, 90),
            "p99_ms": 1000 * percentile(lat, 99),
            "max_ms": 1000 * lat[-1] if lat else float("nan"),
            "errors": errors,
            "transport_errors": sum(r.transport_errors for r in results),
            "statuses": dict(statuses),
            "total_ok": sum(r.total_ok for r in results),
            "per_second": per_second,
            "cpu_cores": cpu,
            "server_ms_per_2xx": 1000 * cpu["server"] / (ok / a.duration) if ok else None,
            "requests_per_batch": mean_batch(batches0, batches1),
        }

    async def strategy_run(
        self,
        strategy: str,
        db_url: str,
        workdir: Path,
        tracing: bool = False,
        server_procs: int = 1,
    ) -> list[dict[str, Any]]:
        db_spans = self.args.tracing_db_spans == "on"
        servers = Servers(
            [
                NaiveServer(db_url, workdir, no)
                if strategy == "naive"
                else Server(db_url, strategy, workdir, tracing, db_spans, no)
                for no in range(server_procs)
            ]
        )
        label = f"{strategy}+tracing" if tracing else strategy
        await servers.start()
        rows: list[dict[str, Any]] = []
        loads = [(lp, sc) for lp in self.args.loadgen_procs for sc in self.args.scenarios]
        try:
            for procs, scenario in loads:
                if self.args.vacuum:
                    # What autovacuum does within a minute on a running system: the
                    # previous load's row versions go, the tables' statistics and with
                    # them every connection's cached plans are renewed. Without it a
                    # load measures the leftovers of the one before (D-380).
                    await admin_execute(db_url, "VACUUM ANALYZE")
                waited, busy = await wait_quiet(self.args.quiet_below, self.args.quiet_wait)
                row = await self.measure(servers, label, scenario, procs)
                row["tracing"] = tracing
                row["quiet_wait"] = {"waited_s": round(waited, 1), "busy_cores_before": busy}
                rows.append(row)
                print(
                    f"  {label:<11} {scenario:<6} server x{server_procs} loadgen x{procs} "
                    f"{row['rps']:8.0f} req/s  "
                    f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                    f"non-2xx {row['errors']}  server ms/2xx {fmt(row['server_ms_per_2xx'], '.3f')}"
                    f"  req/batch {fmt(row['requests_per_batch'], '.1f')}  cpu {row['cpu_cores']}",
                    flush=True,
                )
        finally:
            await servers.stop()
        # The ceiling of the same server processes under the same load generator.
        noops = {r["loadgen_procs"]: r["rps"] for r in rows if r["scenario"] == "noop"}
        for r in rows:
            noop = noops.get(r["loadgen_procs"])
            r["vs_noop"] = r["ok_rps"] / noop if noop else None
        by: Counter[str] = Counter()
        for r in rows:
            by[r["scenario"]] += r["total_ok"]
        check = await check_database(db_url, by["hot"], by["random"])
        for r in rows:
            r["db_check"] = check["clean"]
        if not check["clean"]:
            print(f"  {label}: DATABASE CHECK FAILED: {check['problems']}", flush=True)
        else:
            print(
                f"  {label}: audit clean, {check['reservations']} reservations = every 2xx answer",
                flush=True,
            )
        return rows


# -- reporting -----------------------------------------------------------------------


HEAD = (
    "strategy",
    "scenario",
    "procs server / loadgen",
    "req/s",
    "2xx/s",
    "p50 ms",
    "p99 ms",
    "non-2xx",
    "2xx/s vs noop",
    "server CPU ms/2xx",
    "req/batch",
    "CPU cores: server / PG / loadgen / other",
)


def table_row(r: dict[str, Any]) -> list[str]:
    c = r["cpu_cores"]
    errs = str(r["errors"])
    if r["statuses"]:
        errs += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items())) + ")"
    if r["transport_errors"]:
        errs += f" +{r['transport_errors']} transport"
    return [
        r["strategy"],
        r["scenario"],
        f"{r.get('server_procs', 1)} / {r.get('loadgen_procs', 1)}",
        fmt(r["rps"], ",.0f"),
        fmt(r["ok_rps"], ",.0f"),
        fmt(r["p50_ms"], ".1f"),
        fmt(r["p99_ms"], ".1f"),
        errs,
        fmt(r["vs_noop"], ".3f"),
        fmt(r.get("server_ms_per_2xx"), ".3f"),
        fmt(r.get("requests_per_batch"), ".1f"),
        f"{c['server']:.2f} / {c['postgres']:.2f} / {c['loadgen']:.2f} / {c['other']:.2f}",
    ]


def cpu_ms_per_ok(r: dict[str, Any]) -> float:
    """Server CPU milliseconds per successful request over the measured window."""
    return 1000 * r["cpu_cores"]["server"] / r["ok_rps"] if r["ok_rps"] else float("nan")


def print_tracing_overhead(rows: list[dict[str, Any]]) -> None:
    """2xx/s and p50 with tracing on over the same strategy and scenario with it off."""
    off = {(r["strategy"], r["scenario"]): r for r in rows if not r.get("tracing")}
    for r in rows:
        if not r.get("tracing"):
            continue
        base = off.get((r["strategy"].removesuffix("+tracing"), r["scenario"]))
        if base is None or not base["ok_rps"]:
            continue
        # Server CPU per successful request: steadier than req/s on a busy machine.
        on, off_ = cpu_ms_per_ok(r), cpu_ms_per_ok(base)
        print(
            f"tracing overhead, {r['strategy']} {r['scenario']}: 2xx/s {r['ok_rps']:.0f} vs "
            f"{base['ok_rps']:.0f} off (ratio {r['ok_rps'] / base['ok_rps']:.3f}), "
            f"p50 {r['p50_ms']:.1f} vs {base['p50_ms']:.1f} ms, server CPU per 2xx "
            f"{on:.2f} vs {off_:.2f} ms (ratio {on / off_ if off_ else float('nan'):.2f})",
            flush=True,
        )
    print()


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=None, help="seconds measured (default 10)")
    p.add_argument("--warmup", type=float, default=None, help="seconds before (default 1)")
    p.add_argument("--concurrency", type=int, default=64, help="connections (default 64)")
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help=f"comma-separated subset of {','.join(STRATEGIES)}; '<strategy>-direct' runs it "
        "with coalescing off",
    )
    p.add_argument(
        "--no-vacuum",
        dest="vacuum",
        action="store_false",
        help="no VACUUM ANALYZE of the database before each load (the default runs one)",
    )
    p.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {','.join(SCENARIOS)}",
    )
    p.add_argument("--quick", action="store_true", help="2 s per load, 0.5 s warmup: a smoke run")
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL, help="an admin connection URL")
    p.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load client")
    p.add_argument(
        "--loadgen-procs",
        default="1",
        help="load generator processes (default 1); a comma-separated list (1,2) measures\n"
        "every scenario, noop included, once per count",
    )
    p.add_argument(
        "--server-procs",
        default="1",
        help="server processes per strategy, each on its own port, one database (default 1);\n"
        "connections are dealt to them in turn, and their CPU is summed. A list (1,2)\n"
        "runs each strategy once per count, on its own copy of the database",
    )
    p.add_argument("--skus", type=int, default=N_SKUS, help=argparse.SUPPRESS)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each load, wait up to this many seconds for the machine to be idle\n"
        "(default 60, 10 with --quick)",
    )
    p.add_argument(
        "--quiet-below", type=float, default=0.3, help="idle means under this many busy cores"
    )
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    p.add_argument(
        "--tracing",
        action="store_true",
        help="run each strategy twice, tracing off then on (tracing.exporter: discard),\n"
        "and print the traced/untraced ratio per scenario",
    )
    p.add_argument(
        "--tracing-db-spans",
        choices=["on", "off"],
        default="on",
        help="with --tracing: tracing.database_spans (a span per SQL statement)",
    )
    args = p.parse_args(argv)
    if args.duration is None:
        args.duration = 2.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 0.5 if args.quick else 1.0
    if args.quiet_wait is None:
        args.quiet_wait = 10.0 if args.quick else 60.0
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    for s in args.strategies:
        if s.removesuffix("-direct") not in STRATEGIES or s == "naive-direct":
            p.error(f"unknown strategy {s!r}")
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    try:
        args.loadgen_procs = [int(x) for x in args.loadgen_procs.split(",") if x.strip()]
        args.server_procs = [int(x) for x in args.server_procs.split(",") if x.strip()]
    except ValueError:
        p.error("loadgen-procs and server-procs take numbers: 2 or 1,2")
    counts = [*args.loadgen_procs, *args.server_procs]
    if args.duration <= 0 or args.concurrency < 1 or not counts or min(counts) < 1:
        p.error("duration, concurrency, loadgen-procs and server-procs must be positive")
    return args


async def amain(args: argparse.Namespace) -> int:
    run_id = secrets.token_hex(4)
    base = f"bench_{run_id}"
    seed_db = f"{base}_seed"
    admin = args.database_url
    ctx = get_context("spawn")
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    with (
        ProcessPoolExecutor(max_workers=max(args.loadgen_procs), mp_context=ctx) as pool,
        tempfile.TemporaryDirectory(prefix="stockkeeper-bench-") as tmp,
    ):
        dbs = Databases(admin)
        workdir = Path(tmp)
        loop = asyncio.get_running_loop()
        loop_impl = (
            await asyncio.gather(
                *(
                    loop.run_in_executor(pool, harness.loop_name)
                    for _ in range(max(args.loadgen_procs))
                )
            )
        )[0]
        info = await machine_info(admin, loop_impl)
        print(
            f"stockkeeper reserve bench {run_id}: {info['nproc']} CPUs, Python {info['python']}, "
            f"PostgreSQL {info['postgresql']}; {args.duration:g} s per load after "
            f"{args.warmup:g} s warmup, {args.concurrency} connections, "
            f"client {args.client} x{'/'.join(map(str, args.loadgen_procs))} ({loop_impl}), "
            f"server processes {'/'.join(map(str, args.server_procs))}",
            flush=True,
        )
        bench = Bench(args, pool, run_id, info["postmaster_pid"])
        async with dbs:
            # Seed once through the API, then give every strategy an identical copy.
            seed_url = await dbs.create(seed_db)
            seeder = Server(seed_url, "conditional", workdir)
            await seeder.start()
            try:
                seed_s = await seed(seeder.port, args.skus)
            finally:
                await seeder.stop()
            conn = await asyncpg.connect(seed_url)
            try:
                await conn.execute("VACUUM ANALYZE")
            finally:
                await conn.close()
            print(
                f"  seeded {args.skus + 1} SKUs with POST /inventory/receipts in {seed_s:.1f} s "
                f"({(args.skus + 1) / seed_s:.0f}/s)",
                flush=True,
            )
            # --tracing: each strategy twice, tracing off then on, each on its own copy.
            runs = [
                (s, n, t)
                for s in args.strategies
                for n in args.server_procs
                for t in ((False, True) if args.tracing else (False,))
            ]
            for strategy, n, tracing in runs:
                name = f"{strategy}{'+tracing' if tracing else ''} x{n}"
                db = f"{base}_{strategy}_s{n}{'_traced' if tracing else ''}"
                db_url = await dbs.create(db, template=seed_db)
                with contextlib.suppress(asyncpg.PostgresError):
                    await admin_execute(admin, "CHECKPOINT")
                try:
                    rows.extend(await bench.strategy_run(strategy, db_url, workdir, tracing, n))
                except Exception as exc:  # one strategy failing should not lose the others
                    failures[name] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                    print(f"  {name}: FAILED: {failures[name]}", flush=True)
                await dbs.drop(db)

    table = markdown_table(HEAD, map(table_row, rows), "llcrrrrlrrrl")
    print()
    print(
        f"Machine: nproc {info['nproc']} ({info['cpu_model']}), Python {info['python']}, "
        f"PostgreSQL {info['postgresql']} (synchronous_commit="
        f"{info['postgresql_settings'].get('synchronous_commit')}, fsync="
        f"{info['postgresql_settings'].get('fsync')}); server, PostgreSQL and load "
        "generator share these CPUs."
    )
    print(
        f"Load: {args.concurrency} keep-alive connections, closed loop, {args.duration:g} s "
        f"measured after {args.warmup:g} s warmup, client {args.client} in "
        f"{'/'.join(map(str, args.loadgen_procs))} process(es), dealt to "
        f"{'/'.join(map(str, args.server_procs))} server process(es) (pool_size 20 each); "
        f"stock seeded in {seed_s:.1f} s."
    )
    print()
    print(table)
    print()
    if args.tracing:
        print_tracing_overhead(rows)
    print(
        "2xx/s vs noop: successful requests/s over the /noop requests/s of the same server\n"
        "process(es) under the same load generator processes. p50/p99: over every answer in\n"
        "the window. server CPU ms/2xx: the server processes' CPU over the window per\n"
        "successful request. req/batch: requests per coalesced transaction (the servers'\n"
        "stockkeeper_reserve_batch_size histograms). CPU in cores (1.00 = one core\n"
        "busy) over the window: the server processes (summed); PostgreSQL (this database's\n"
        "backends and the cluster's background processes); the load generator; other =\n"
        "everything else on the machine at the time."
    )
    warn_if_busy(rows, "other", args.quiet_below, "other processes used", "a measurement")
    all_clean = all(r.get("db_check", True) for r in rows)
    if not args.no_json:
        stamp = harness.stamp_now()
        doc = {
            "run_id": run_id,
            "timestamp": stamp,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "settings": {
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "concurrency": args.concurrency,
                "client": args.client,
                "loadgen_procs": args.loadgen_procs,
                "server_procs": args.server_procs,
                "skus": args.skus,
                "pool_size": 20,
                "seed_seconds": seed_s,
            },
            "results": rows,
            "failures": failures,
            "markdown": table,
        }
        out = harness.write_results("reserve", doc, stamp)
        print(f"\nwrote {out.relative_to(harness.REPO)}")
    if not all_clean:
        print("database check failed: see above", file=sys.stderr)
    for strategy, error in failures.items():
        print(f"{strategy} failed: {error}", file=sys.stderr)
    return 0 if all_clean and not failures else 1


def main() -> None:
    harness.exit_with(amain(parse_args()))


if __name__ == "__main__":
    main()
