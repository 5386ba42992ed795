"""Outbox dispatcher and consumer runner throughput, per broker, against raw baselines.

For each broker (RabbitMQ, and the embedded PostgreSQL queue) one run measures, for N
``inventory.level_changed`` events over a few hundred SKUs (routed to the
``channel.propagation`` queue):

- publish: the Dispatcher taking N PENDING outbox rows to the broker (claim, publish
  with confirms, mark SENT), against a raw client publishing the same messages;
- consume: the Consumer runner (envelope parse, ``processed_message`` idempotency
  transaction, trivial handler, ack) draining N queued messages, against a raw client
  that only consumes and acks;
- end to end: the Dispatcher and the Consumer running at once, from the moment the
  dispatcher starts to the last ack, against the raw publisher and raw consumer at once.

Raw baselines: for RabbitMQ, aio-pika (publisher confirms, gather of one batch at a time;
consume with the same prefetch, ack each message); for the embedded queue, asyncpg on
one connection per side issuing the broker's statements (one ``queue_insert`` per batch;
a claim of a prefetch, then one ``queue_ack`` DELETE per message) without the adapter,
the pool, NOTIFY or the runner around them. The claim leases the same rows as
``queue_claim`` but cannot run away (see RAW_CLAIM).

Every run happens in separate processes (asyncio on uvloop, as ``stockkeeper run``), one
for the publishing side and one for the consuming side, started together at an agreed
time. Each run creates its own databases and RabbitMQ exchanges/queues (under a unique
prefix) and deletes them at the end.

    python bench/messaging.py --quick
    python bench/messaging.py --events 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import aio_pika
import asyncpg
import orjson

import harness
from harness import (
    DEFAULT_ADMIN_URL,
    DEFAULT_AMQP_URL,
    Databases,
    cluster_processes,
    fmt,
    machine_cpu,
    machine_info,
    markdown_table,
    proc_cpu,
    rabbit_pids,
    wait_quiet,
    warn_if_busy,
)
from stockkeeper.config import BrokerConfig, DatabaseConfig
from stockkeeper.domain.events import LEVEL_CHANGED, Event
from stockkeeper.messaging import rabbitmq
from stockkeeper.messaging.consumer import Consumer, Incoming
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.messaging.pgqueue import PgQueueBroker
from stockkeeper.messaging.rabbitmq import RabbitMQBroker
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store import outbox
from stockkeeper.store.migrate import migrate
from stockkeeper.store.pool import Conn, Pool, create_pool
from stockkeeper.store.sql import q
from stockkeeper.workers.dispatcher import Dispatcher, to_message

BrokerKind = Literal["rabbitmq", "pgqueue"]
Role = Literal["raw_publish", "raw_consume", "dispatcher", "consumer"]
BROKERS: tuple[BrokerKind, ...] = ("rabbitmq", "pgqueue")

QUEUE = "channel.propagation"  # where inventory.level_changed goes (topology.QUEUES)
CONSUMER = "bench.propagation"
INSERT_CHUNK = 1000  # outbox events per outbox.add transaction while preparing
START_DELAY = 1.0  # s between submitting a run and its agreed start

# (exchange, routing_key, body, message_id, headers): a dispatcher message, picklable.
Msg = tuple[str, str, bytes, str, dict[str, Any]]


def sku_name(i: int) -> str:
    return f"MSG-{i:05d}"


# -- the runs (executed in worker processes) -------------------------------------------


@dataclass(frozen=True)
class Job:
    role: Role
    broker: BrokerKind
    n: int
    db_url: str
    amqp_url: str
    prefix: str
    batch: int
    prefetch: int
    timeout: float
    consumer_batch: int = 1  # the runner's batch_size (1: a transaction per message)
    start_at: float = 0.0  # time.time() at which every process of the run starts
    messages: tuple[Msg, ...] = ()  # raw_publish only
    # (done queue, release event), manager proxies: each process says when its measured
    # part is over, and closes its connections only once the parent has sampled the CPU
    # of their PostgreSQL backends (gone after they close).
    sync: tuple[Any, Any] | None = None


@dataclass
class Outcome:
    role: Role
    pid: int = 0
    count: int = 0
    started: float = 0.0
    done_at: float = 0.0
    cpu_s: float = 0.0
    error: str | None = None
    extra: dict[str, Any] | None = None
    reported: bool = False


async def _report(job: Job, out: Outcome) -> None:
    """Tell the parent the measured part is over; wait until it has sampled the CPU."""
    if out.reported or job.sync is None:
        return
    out.reported = True
    done, release = job.sync
    await asyncio.to_thread(done.put, out.pid)
    await asyncio.to_thread(release.wait, 60)


async def _until(start_at: float) -> float:
    if (delay := start_at - time.time()) > 0:
        await asyncio.sleep(delay)
    return time.time()


class _Clock:
    """Marks the start of the measured part and its end (the N-th message)."""

    def __init__(self, out: Outcome, n: int) -> None:
        self.out = out
        self.n = n
        self.done = asyncio.Event()
        self._cpu0 = 0.0

    async def start(self, start_at: float) -> None:
        self.out.started = await _until(start_at)
        self._cpu0 = time.process_time()

    def add(self, k: int = 1) -> None:
        self.out.count += k
        if self.out.count >= self.n and not self.done.is_set():
            self.out.done_at = time.time()
            self.out.cpu_s = time.process_time() - self._cpu0
            self.done.set()

    async def wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), seconds)
        except TimeoutError:
            self.out.error = f"timed out after {seconds:g} s with {self.out.count}/{self.n}"


async def raw_publish_rabbitmq(job: Job, out: Outcome) -> None:
    clock = _Clock(out, job.n)
    conn = await aio_pika.connect(job.amqp_url)
    try:
        channel = await conn.channel(publisher_confirms=True)
        exchanges = {
            name: await channel.get_exchange(job.prefix + name, ensure=False)
            for name in {m[0] for m in job.messages}
        }
        await clock.start(job.start_at)
        for i in range(0, len(job.messages), job.batch):
            chunk = job.messages[i : i + job.batch]
            await asyncio.gather(
                *(
                    exchanges[ex].publish(
                        aio_pika.Message(
                            body,
                            message_id=mid,
                            headers=headers,
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=rk,
                    )
                    for ex, rk, body, mid, headers in chunk
                )
            )
            clock.add(len(chunk))
    finally:
        await _report(job, out)
        await conn.close()


async def raw_consume_rabbitmq(job: Job, out: Outcome) -> None:
    clock = _Clock(out, job.n)
    conn = await aio_pika.connect(job.amqp_url)
    try:
        channel = await conn.channel()
        await channel.set_qos(prefetch_count=job.prefetch)
        queue = await channel.get_queue(job.prefix + QUEUE, ensure=False)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await message.ack()
            clock.add()

        await clock.start(job.start_at)
        tag = await queue.consume(on_message)
        await clock.wait(job.timeout)
        await queue.cancel(tag)
    finally:
        await _report(job, out)
        await conn.close()


async def raw_publish_pgqueue(job: Job, out: Outcome) -> None:
    clock = _Clock(out, job.n)
    conn = await asyncpg.connect(job.db_url)
    name = job.prefix + QUEUE
    try:
        await clock.start(job.start_at)
        for i in range(0, len(job.messages), job.batch):
            chunk = job.messages[i : i + job.batch]
            await conn.execute(
                q("queue_insert"),
                [name] * len(chunk),
                [uuid.UUID(m[3]) for m in chunk],
                [m[0] for m in chunk],
                [m[1] for m in chunk],
                [m[2] for m in chunk],
                [orjson.dumps(m[4]).decode() for m in chunk],
                [0] * len(chunk),
            )
            clock.add(len(chunk))
    finally:
        await _report(job, out)
        await conn.close()


# The broker's queue_claim, written so that its LIMIT runs once (an InitPlan). The
# broker's own form (UPDATE ... FROM (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)) can be
# planned as a nested loop that re-runs the subquery for every row of the table: on a
# plan that asyncpg's prepared statement cached while the queue was empty, one claim of
# 32 then leases every ready row (20,000 in 35 s here). The floor must not carry that,
# nor a generic plan that sorts the whole queue per claim: custom plans on that connection.
RAW_CLAIM = """
UPDATE queue_message
SET leased_until = now() + make_interval(secs => $3 / 1000.0), deliveries = deliveries + 1
WHERE id = ANY (ARRAY (
    SELECT id FROM queue_message
    WHERE queue = $1 AND available_at <= now()
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING id, message_id, routing_key, body, headers, deliveries
"""


async def raw_consume_pgqueue(job: Job, out: Outcome) -> None:
    clock = _Clock(out, job.n)
    conn = await asyncpg.connect(
        job.db_url, server_settings={"plan_cache_mode": "force_custom_plan"}
    )
    name = job.prefix + QUEUE
    try:
        await clock.start(job.start_at)
        deadline = time.monotonic() + job.timeout
        claims = empty = 0
        claim_s = ack_s = 0.0
        while not clock.done.is_set():
            if time.monotonic() > deadline:
                out.error = f"timed out after {job.timeout:g} s with {out.count}/{job.n}"
                break
            t0 = time.perf_counter()
            rows = await conn.fetch(RAW_CLAIM, name, job.prefetch, 30_000)
            t1 = time.perf_counter()
            claim_s += t1 - t0
            claims += 1
            if not rows:
                empty += 1
                await asyncio.sleep(0.002)  # the floor has no NOTIFY: poll
                continue
            for r in sorted(rows, key=lambda r: r["id"]):
                await conn.execute(q("queue_ack"), r["id"])
                clock.add()
            ack_s += time.perf_counter() - t1
        out.extra = {
            "claims": claims,
            "empty_claims": empty,
            "in_claim_s": round(claim_s, 3),
            "in_ack_s": round(ack_s, 3),
        }
    finally:
        await _report(job, out)
        await conn.close()


class TimedBroker:
    """Delegates to a broker, adding up the time spent in ``publish`` (confirm waits)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.publish_s = 0.0
        self.publishes = 0

    async def publish(self, messages: Any) -> None:
        t0 = time.perf_counter()
        try:
            await self.inner.publish(messages)
        finally:
            self.publish_s += time.perf_counter() - t0
            self.publishes += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class TimedDispatcher(Dispatcher):
    def __init__(self, *args: Any, clock: _Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.batch_s = 0.0

    async def _step(self) -> bool:
        t0 = time.perf_counter()
        try:
            return await super()._step()
        finally:
            self.batch_s += time.perf_counter() - t0

    async def _settle(self, batch: Any, stopped: Any = None) -> tuple[int, dict[str, int]]:
        n, held = await super()._settle(batch, stopped)  # returns after the commit
        if n:
            self.clock.add(n)
        return n, held


class TimedConsumer(Consumer):
    def __init__(self, *args: Any, clock: _Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.delivery_s = 0.0
        self.apply_s = 0.0
        self.redelivered = 0
        self.batches = 0

    async def on_delivery(self, d: Any) -> None:
        t0 = time.perf_counter()
        self.redelivered += bool(d.redelivered)
        await super().on_delivery(d)  # returns after the ack
        self.delivery_s += time.perf_counter() - t0

    async def _done(self, d: Any, outcome: str) -> None:
        await super()._done(d, outcome)  # returns after the ack
        self.clock.add()

    async def _done_many(self, done: list[Any], counts: Any) -> None:
        await super()._done_many(done, counts)  # returns after the acks
        self.batches += 1
        if done:
            self.clock.add(len(done))

    async def _apply(self, env: Envelope) -> str:
        t0 = time.perf_counter()
        try:
            return await super()._apply(env)
        finally:
            self.apply_s += time.perf_counter() - t0

    async def process_batch(self, batch: list[Any]) -> None:
        self.redelivered += sum(bool(d.redelivered) for d in batch)
        await super().process_batch(batch)

    async def _apply_batch(self, items: list[Incoming]) -> list[str | Exception]:
        t0 = time.perf_counter()
        try:
            return await super()._apply_batch(items)
        finally:
            self.apply_s += time.perf_counter() - t0


def _make_broker(job: Job, pool: Pool) -> Any:
    if job.broker == "rabbitmq":
        return RabbitMQBroker(job.amqp_url, prefix=job.prefix, connection_name="bench")
    return PgQueueBroker(pool, prefix=job.prefix)


async def run_dispatcher(job: Job, out: Outcome) -> None:
    clock = _Clock(out, job.n)
    pool = await create_pool(job.db_url, DatabaseConfig(pool_size=20))
    broker = TimedBroker(_make_broker(job, pool))
    try:
        await broker.connect()
        d = TimedDispatcher(pool, broker, Metrics(), batch_size=job.batch, clock=clock)
        stop = asyncio.Event()
        await clock.start(job.start_at)
        task = asyncio.create_task(d.run(stop))
        await clock.wait(job.timeout)
        stop.set()
        await task
        busy = out.done_at - out.started if out.done_at else float("nan")
        out.extra = {
            "batches": broker.publishes,
            "in_step_s": round(d.batch_s, 3),
            "in_broker_publish_s": round(broker.publish_s, 3),
            "publish_share": round(broker.publish_s / busy, 3) if busy == busy else None,
        }
    finally:
        await _report(job, out)
        await broker.close()
        await pool.close()


async def run_consumer(job: Job, out: Outcome) -> None:
    clock = _Clock(out, job.n)
    pool = await create_pool(job.db_url, DatabaseConfig(pool_size=20))
    broker = _make_broker(job, pool)
    applied = 0

    async def handle(_conn: Conn, _env: Envelope) -> None:
        nonlocal applied
        applied += 1

    async def handle_many(_conn: Conn, items: Sequence[Incoming]) -> None:
        nonlocal applied
        applied += len(items)

    try:
        await broker.connect()
        c = TimedConsumer(
            CONSUMER,
            QUEUE,
            handle,
            pool=pool,
            broker=broker,
            metrics=Metrics(),
            clock=clock,
            batch_size=job.consumer_batch,
            # As the propagator's consumer runs (D-322): a set-based effect per batch.
            handle_many=handle_many if job.consumer_batch > 1 else None,
        )
        await clock.start(job.start_at)
        sub = await c.start(job.prefetch)
        await clock.wait(job.timeout)
        await sub.cancel()
        busy = out.done_at - out.started if out.done_at else float("nan")
        out.extra = {
            "applied": applied,
            "redelivered": c.redelivered,
            "batches": c.batches,
            "prefetch": c.prefetch_for(job.prefetch),
            "in_on_delivery_s": round(c.delivery_s, 3),
            "in_idempotency_txn_s": round(c.apply_s, 3),
            "txn_share": round(c.apply_s / busy, 3) if busy == busy else None,
        }
    finally:
        await _report(job, out)
        await broker.close()
        await pool.close()


RUNNERS = {
    ("raw_publish", "rabbitmq"): raw_publish_rabbitmq,
    ("raw_consume", "rabbitmq"): raw_consume_rabbitmq,
    ("raw_publish", "pgqueue"): raw_publish_pgqueue,
    ("raw_consume", "pgqueue"): raw_consume_pgqueue,
    ("dispatcher", "rabbitmq"): run_dispatcher,
    ("dispatcher", "pgqueue"): run_dispatcher,
    ("consumer", "rabbitmq"): run_consumer,
    ("consumer", "pgqueue"): run_consumer,
}


async def _run_job(job: Job) -> Outcome:
    out = Outcome(job.role, pid=os.getpid())
    try:
        await RUNNERS[(job.role, job.broker)](job, out)
    except Exception as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    finally:
        await _report(job, out)
    return out


def run_job(job: Job) -> Outcome:
    """Entry point of a worker process: one job on a fresh uvloop (as stockkeeper runs)."""
    return harness.run(_run_job(job))


def _warm_child() -> tuple[int, str]:
    from stockkeeper.observability.logging import configure

    configure("warning")  # as the bench runs stockkeeper: no per-batch info lines
    time.sleep(1.0)  # hold this worker so that the other warm-up goes to the other one
    return os.getpid(), harness.loop_name()


# -- CPU accounting ----------------------------------------------------------------------


# The cluster's own processes, by title ("postgres: [cluster: ]checkpointer", ...).
PG_BACKGROUND = re.compile(
    r"^postgres: (?:[^:]+: )?(?:checkpointer|background writer|walwriter|"
    r"autovacuum launcher|logical replication launcher|stats collector|archiver)\b"
)


def _our_pg_processes(postmaster: int, dbname: str) -> list[int]:
    """Children of the postmaster that are ours: backends (and autovacuum workers) of our
    database by their title, and the cluster's background processes. Not the backends,
    autovacuum or parallel workers of other databases (a test suite running beside us),
    nor a fresh fork that has not set its title yet (it is counted once it has)."""
    pids = []
    for pid in cluster_processes(postmaster, dbname):
        with contextlib.suppress(OSError):
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if f" {dbname} " in f" {title.strip()} " or PG_BACKGROUND.match(title):
                pids.append(pid)
    return pids


class PgCpu:
    """CPU of our database's backends and of the cluster's background processes.

    Polled through the run, not only at its ends: asyncpg's pool replaces a connection
    after 50,000 queries, and a backend that exits mid-run would take its CPU with it.
    What a backend used between its last poll and its exit is lost (under 0.2 s).
    """

    def __init__(self, postmaster: int | None, dbname: str) -> None:
        self.postmaster = postmaster
        self.dbname = dbname
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.polls = 0

    def poll(self) -> None:
        if not self.postmaster:
            return
        for pid in _our_pg_processes(self.postmaster, self.dbname):
            cpu = proc_cpu(pid)
            if cpu <= 0.0 and pid in self.last:
                continue  # gone between the listing and the read
            # Seen at the first poll: counted from there; appeared later: its whole life.
            self.first.setdefault(pid, cpu if self.polls == 0 else 0.0)
            self.last[pid] = cpu
        self.polls += 1

    async def follow(self, every: float = 0.2) -> None:
        while True:
            await asyncio.sleep(every)
            self.poll()

    def by_pid(self) -> dict[int, float]:
        return {pid: v - self.first[pid] for pid, v in self.last.items()}


@dataclass
class Sample:
    t: float
    postgres: float  # PgCpu total so far
    rabbit: dict[int, float]
    busy: float
    steal: float
    me: float

    @classmethod
    def take(cls, pg: PgCpu, rabbit: list[int]) -> Sample:
        busy, steal = machine_cpu()
        pg.poll()
        return cls(
            time.time(),
            sum(pg.by_pid().values()),
            {p: proc_cpu(p) for p in rabbit},
            busy,
            steal,
            time.process_time(),
        )


def _delta(a: dict[int, float], b: dict[int, float]) -> float:
    return sum(v - a.get(pid, 0.0) for pid, v in b.items())


def cpu_cores(a: Sample, b: Sample, outs: list[Outcome]) -> dict[str, float]:
    """In cores over the window between the samples (which includes the runs' teardown).

    ``publisher``/``consumer`` are the worker processes' own CPU over their measured
    part; ``other`` is what the machine spent beyond them, PostgreSQL, RabbitMQ and us.
    """
    secs = max(1e-6, b.t - a.t)
    pg, rabbit, busy = b.postgres - a.postgres, _delta(a.rabbit, b.rabbit), b.busy - a.busy
    cores: dict[str, float] = {"publisher": 0.0, "consumer": 0.0}
    workers = 0.0
    for o in outs:
        side = "publisher" if o.role in ("raw_publish", "dispatcher") else "consumer"
        span = o.done_at - o.started
        if span > 0:
            cores[side] = round(o.cpu_s / span, 2)
            workers += o.cpu_s
    other = busy - pg - rabbit - workers - (b.me - a.me)
    cores.update(
        postgres=round(pg / secs, 2),
        rabbitmq=round(rabbit / secs, 2),
        other=round(max(0.0, other) / secs, 2),
        machine_busy=round(busy / secs, 2),
        steal=round((b.steal - a.steal) / secs, 2),
    )
    return cores


# -- the parent: databases, broker topology, the sequence of runs --------------------------

LABELS = {
    "raw_publish": "raw publish",
    "raw_consume": "raw consume+ack",
    "raw_pipeline": "raw publish ‖ raw consume",
    "dispatcher": "Dispatcher",
    "consumer": "Consumer runner",
    "e2e": "Dispatcher ‖ Consumer",
}
MEASUREMENTS = {
    "raw_publish": "publish",
    "dispatcher": "publish",
    "raw_consume": "consume",
    "consumer": "consume",
    "raw_pipeline": "end to end",
    "e2e": "end to end",
}
BASELINE_OF = {"dispatcher": "raw_publish", "consumer": "raw_consume", "e2e": "raw_pipeline"}


class PySpy:
    """``py-spy record`` of every worker process for one run (when --py-spy DIR).

    Stopped when the measured part is over, before the workers tear down; raw (collapsed
    stack) files, one per process, renamed after the role the process had.
    """

    def __init__(self, out_dir: Path | None, pids: list[int], label: str) -> None:
        self.procs: list[tuple[int, Path, subprocess.Popen[bytes]]] = []
        if out_dir is None:
            return
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        out_dir.mkdir(parents=True, exist_ok=True)
        for pid in pids:
            path = out_dir / f"{label}-{pid}.txt"
            cmd = [exe, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(path)]
            with path.with_suffix(".log").open("wb") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append((pid, path, proc))

    def stop(self) -> None:
        for _, _, proc in self.procs:
            proc.send_signal(signal.SIGINT)
        for _, _, proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)

    def files(self, outs: list[Outcome]) -> dict[str, str]:
        roles = {o.pid: o.role for o in outs}
        files: dict[str, str] = {}
        for pid, path, _ in self.procs:
            if pid in roles and path.exists():
                target = path.with_name(path.name.replace(f"-{pid}.", f"-{roles[pid]}."))
                path.rename(target)
                files[roles[pid]] = str(target)
            else:
                path.unlink(missing_ok=True)
        return files


@dataclass
class Bench:
    args: argparse.Namespace
    pool: ProcessPoolExecutor
    manager: Any  # a multiprocessing Manager: queues and events shared with the workers
    worker_pids: list[int]
    run_id: str
    postmaster: int | None
    rabbit: list[int]

    def job(self, role: Role, broker: BrokerKind, db_url: str, prefix: str) -> Job:
        a = self.args
        return Job(
            role=role,
            broker=broker,
            n=a.events,
            db_url=db_url,
            amqp_url=a.amqp_url,
            prefix=prefix,
            batch=a.batch,
            prefetch=a.prefetch,
            timeout=max(120.0, a.events / 50),
            consumer_batch=a.consumer_batch,
        )

    async def settle(self, conn: Conn) -> None:
        """Same starting point for every run: vacuumed tables, a checkpoint, a quiet box."""
        await conn.execute("VACUUM ANALYZE domain_event, queue_message, processed_message")
        with contextlib.suppress(asyncpg.PostgresError):
            await conn.execute("CHECKPOINT")
        await wait_quiet(self.args.quiet_below, self.args.quiet_wait)

    async def run(
        self, broker: BrokerKind, name: str, jobs: list[Job], dbname: str, checks: Checks
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        start_at = time.time() + START_DELAY
        spy = PySpy(
            self.args.py_spy if name in BASELINE_OF else None,
            self.worker_pids,
            f"{broker}-{name}",
        )
        done, release = self.manager.Queue(), self.manager.Event()
        futures = [
            loop.run_in_executor(
                self.pool, run_job, replace(j, start_at=start_at, sync=(done, release))
            )
            for j in jobs
        ]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        pg = PgCpu(self.postmaster, dbname)
        before = Sample.take(pg, self.rabbit)
        watchers = [asyncio.create_task(pg.follow())]
        leased = [0]
        if broker == "pgqueue" and any(j.role in ("raw_consume", "consumer") for j in jobs):
            watchers.append(asyncio.create_task(checks.watch_leases(leased)))
        try:
            for _ in jobs:  # every process past its measured part, connections still open
                await asyncio.to_thread(done.get, True, max(j.timeout for j in jobs) + 60)
        finally:
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            after = Sample.take(pg, self.rabbit)
            spy.stop()
            release.set()
        outs: list[Outcome] = await asyncio.gather(*futures)
        profiles = spy.files(outs)
        errors = [f"{o.role}: {o.error}" for o in outs if o.error]
        if errors:
            raise RuntimeError(f"{broker} {name}: " + "; ".join(errors))
        end = max(o.done_at for o in outs)
        seconds = end - start_at
        row = {
            "broker": broker,
            "run": name,
            "measurement": MEASUREMENTS[name],
            "label": LABELS[name],
            "events": self.args.events,
            "seconds": round(seconds, 3),
            "events_per_s": self.args.events / seconds,
            "late_start_ms": max(round((o.started - start_at) * 1000, 1) for o in outs),
            "cpu_cores": cpu_cores(before, after, outs),
            "postgres_cpu_s_by_pid": {
                pid: round(v, 3) for pid, v in pg.by_pid().items() if v >= 0.01
            },
            "processes": {
                o.role: {
                    "pid": o.pid,
                    "seconds": round(o.done_at - start_at, 3),
                    "cpu_s": round(o.cpu_s, 3),
                    **(o.extra or {}),
                }
                for o in outs
            },
        }
        if len(watchers) > 1:
            row["max_leased"] = leased[0]
        if profiles:
            row["py_spy"] = profiles
        print(
            f"  {broker:8} {LABELS[name]:28} {row['events_per_s']:>9,.0f} events/s "
            f"({seconds:.2f} s)",
            flush=True,
        )
        return row

    async def broker_runs(
        self, broker: BrokerKind, db_url: str, rows: list[dict[str, Any]]
    ) -> None:
        """The six runs of one broker, in its own database and under its own prefix;
        rows are appended as they complete (a failure keeps the earlier ones)."""
        a = self.args
        prefix = f"bench{self.run_id}{broker[0]}."
        dbname = db_url.rsplit("/", 1)[1]
        checks = Checks(broker, db_url, a.amqp_url, prefix, a.events)
        pool = await create_pool(db_url, DatabaseConfig(pool_size=2))
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
                await conn.execute(
                    "INSERT INTO sku (sku) SELECT format('MSG-%s', lpad(i::text, 5, '0')) "
                    "FROM generate_series(0, $1 - 1) AS i",
                    a.skus,
                )
            if broker == "rabbitmq":
                declarer = RabbitMQBroker(a.amqp_url, prefix=prefix, connection_name="bench")
                await declarer.connect()  # exchanges, quorum queues, bindings
                await declarer.close()
            await checks.open()
            # Set 1: the raw runs publish these rows' messages; then the Dispatcher does.
            await insert_events(pool, a.events, a.skus, 0)
            messages = await pending_messages(pool)
            assert len(messages) == a.events

            def job(role: Role, **kw: Any) -> Job:
                return replace(self.job(role, broker, db_url, prefix), **kw)

            publisher = job("raw_publish", messages=messages)
            async with pool.acquire() as conn:

                async def run(name: str, *jobs: Job) -> None:
                    await self.settle(conn)
                    rows.append(await self.run(broker, name, list(jobs), dbname, checks))

                await run("raw_publish", publisher)
                await checks.expect(depth=a.events)
                await run("raw_consume", job("raw_consume"))
                await checks.expect(depth=0)
                await run("raw_pipeline", publisher, job("raw_consume"))
                await checks.expect(depth=0)
                await run("dispatcher", job("dispatcher"))
                await checks.expect(depth=a.events, pending=0)
                await run("consumer", job("consumer"))
                await checks.expect(depth=0, processed=a.events)
                # Set 2: fresh event ids, so the consumer applies them rather than skipping.
                await insert_events(pool, a.events, a.skus, a.events)
                await run("e2e", job("dispatcher"), job("consumer"))
                await checks.expect(depth=0, pending=0, processed=2 * a.events)
        finally:
            await checks.close()
            await pool.close()
            if broker == "rabbitmq":
                await delete_topology(a.amqp_url, prefix)


def add_ratios(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        base = next(
            (
                b
                for b in rows
                if b["broker"] == r["broker"] and b["run"] == BASELINE_OF.get(r["run"])
            ),
            None,
        )
        r["baseline"] = base["run"] if base else None
        r["vs_baseline"] = r["events_per_s"] / base["events_per_s"] if base else None


def level_payload(i: int, n_skus: int) -> dict[str, Any]:
    version = i // n_skus + 1
    on_hand = 1000 + version
    return {
        "sku": sku_name(i % n_skus),
        "version": version,
        "on_hand": on_hand,
        "unavailable": 0,
        "reserved": version % 7,
        "committed": 0,
        "available": on_hand - version % 7,
        "shortfall": 0,
        "cause": "reservation",
    }


async def insert_events(pool: Pool, n: int, n_skus: int, first: int) -> None:
    """N level_changed events through outbox.add, a transaction per INSERT_CHUNK."""
    events = [
        Event(
            LEVEL_CHANGED,
            level_payload(i, n_skus),
            sku=sku_name(i % n_skus),
            source=f"bench-{i}",
        )
        for i in range(first, first + n)
    ]
    for i in range(0, n, INSERT_CHUNK):
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, events[i : i + INSERT_CHUNK])


async def pending_messages(pool: Pool) -> tuple[Msg, ...]:
    """The messages the Dispatcher will publish for the PENDING rows (same bodies, ids)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT id, event_id, event_type, sku, sequence, source, payload, occurred_at, "
            "attempts, ordering_key, trace_context FROM domain_event WHERE status = 'PENDING' "
            "ORDER BY id"
        )
    out = []
    for r in rows:
        m = to_message(outbox.PendingEvent.from_row(r))
        out.append((m.exchange, m.routing_key, m.body, m.message_id, m.headers))
    return tuple(out)


class Checks:
    """After each run: queue depth, outbox backlog, processed_message rows as expected."""

    def __init__(self, broker: BrokerKind, db_url: str, amqp_url: str, prefix: str, n: int):
        self.broker = broker
        self.db_url = db_url
        self.amqp_url = amqp_url
        self.queue = prefix + QUEUE
        self.n = n
        self.db: asyncpg.Connection[asyncpg.Record] | None = None
        self.amqp: aio_pika.abc.AbstractConnection | None = None

    async def open(self) -> None:
        self.db = await asyncpg.connect(self.db_url)
        if self.broker == "rabbitmq":
            self.amqp = await aio_pika.connect(self.amqp_url)

    async def close(self) -> None:
        if self.db is not None:
            await self.db.close()
        if self.amqp is not None:
            await self.amqp.close()

    async def watch_leases(self, most: list[int]) -> None:
        """pgqueue: the most messages leased at once (sane claims: at most the prefetch)."""
        assert self.db is not None
        while True:
            n = await self.db.fetchval(
                "SELECT count(*) FROM queue_message WHERE queue = $1 AND leased_until > now()",
                self.queue,
            )
            most[0] = max(most[0], int(n))
            await asyncio.sleep(0.5)

    async def depth(self) -> int:
        assert self.db is not None
        if self.amqp is None:
            return int(
                await self.db.fetchval(
                    "SELECT count(*) FROM queue_message WHERE queue = $1", self.queue
                )
            )
        channel = await self.amqp.channel()
        try:
            queue = await channel.declare_queue(self.queue, passive=True)
            return int(queue.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def expect(
        self, *, depth: int, pending: int | None = None, processed: int | None = None
    ) -> None:
        assert self.db is not None
        problems = []
        # A quorum queue reports acks a moment late: give it a second.
        for _ in range(20):
            got = await self.depth()
            if got == depth:
                break
            await asyncio.sleep(0.1)
        if got != depth:
            problems.append(f"queue depth {got}, expected {depth}")
        if pending is not None:
            n = await self.db.fetchval("SELECT count(*) FROM domain_event WHERE status <> 'SENT'")
            if n != pending:
                problems.append(f"{n} outbox rows not SENT, expected {pending}")
        if processed is not None:
            n = await self.db.fetchval(
                "SELECT count(*) FROM processed_message WHERE consumer = $1", CONSUMER
            )
            if n != processed:
                problems.append(f"{n} processed_message rows, expected {processed}")
        if problems:
            raise RuntimeError("check failed: " + "; ".join(problems))


async def delete_topology(amqp_url: str, prefix: str) -> None:
    """Delete our queues (with any retry queues the consumer made) and exchanges."""
    delays = {min(30_000, 1000 * 2**k) for k in range(10)}  # RetryPolicy() delays
    await rabbitmq.delete_topology(amqp_url, prefix, sorted(delays))


# -- output ------------------------------------------------------------------------------


HEAD = (
    "broker",
    "measurement",
    "run",
    "events/s",
    "vs baseline",
    "s",
    "CPU cores: publisher / consumer / PG / RabbitMQ / other / steal",
)


def table_row(r: dict[str, Any]) -> list[str]:
    c = r["cpu_cores"]
    vs = "baseline" if r["run"] not in BASELINE_OF else fmt(r["vs_baseline"], ".2f")
    return [
        r["broker"],
        r["measurement"],
        r["label"],
        fmt(r["events_per_s"], ",.0f"),
        vs,
        f"{r['seconds']:.2f}",
        f"{c['publisher']:.2f} / {c['consumer']:.2f} / {c['postgres']:.2f} "
        f"/ {c['rabbitmq']:.2f} / {c['other']:.2f} / {c['steal']:.2f}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=None, help="events per run (default 20,000)")
    p.add_argument("--quick", action="store_true", help="2,000 events: a smoke run")
    p.add_argument("--skus", type=int, default=200, help="SKUs the events spread over")
    p.add_argument(
        "--brokers", default=",".join(BROKERS), help="comma-separated subset of rabbitmq,pgqueue"
    )
    p.add_argument("--batch", type=int, default=500, help="dispatcher batch / raw publish batch")
    p.add_argument(
        "--prefetch",
        type=int,
        default=BrokerConfig().prefetch,
        help="consumer prefetch (both sides; the runner in batch mode widens it to two\n"
        "batches, as in production: Consumer.prefetch_for)",
    )
    p.add_argument(
        "--consumer-batch",
        type=int,
        default=BrokerConfig().consumer_batch_size,
        help="the Consumer runner's batch_size, default broker.consumer_batch_size, with a\n"
        "set-based batch effect as the propagator's (1: one transaction per message)",
    )
    p.add_argument("--database-url", default=DEFAULT_ADMIN_URL, help="an admin connection URL")
    p.add_argument("--amqp-url", default=DEFAULT_AMQP_URL, help="RabbitMQ")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each run, wait up to this many seconds for the machine to be idle\n"
        "(default 30, 5 with --quick)",
    )
    p.add_argument(
        "--quiet-below", type=float, default=0.3, help="idle means under this many busy cores"
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="record py-spy raw profiles of the worker processes during the stockkeeper\n"
        "runs into DIR (slows them down: figures are then not comparable)",
    )
    p.add_argument("--no-json", action="store_true", help="do not write bench/results/*.json")
    args = p.parse_args(argv)
    if args.events is None:
        args.events = 2_000 if args.quick else 20_000
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if args.quick else 30.0
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for b in args.brokers:
        if b not in BROKERS:
            p.error(f"unknown broker {b!r}")
    if args.events < 1 or args.skus < 1 or args.batch < 1 or args.prefetch < 1:
        p.error("events, skus, batch and prefetch must be positive")
    return args


async def rabbit_version(url: str) -> str | None:
    try:
        conn = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        raise SystemExit(f"RabbitMQ not reachable at {url}: {exc}") from None
    try:
        props = conn.transport.connection.server_properties if conn.transport else {}
        v = props.get("version")
        return v.decode() if isinstance(v, bytes) else str(v)
    finally:
        await conn.close()


async def amain(args: argparse.Namespace) -> int:
    run_id = secrets.token_hex(4)
    admin = args.database_url
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    ctx = get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool, ctx.Manager() as manager:
        loop = asyncio.get_running_loop()
        # Two slow warm-ups at once: one in each worker (imports paid before any run).
        warm = await asyncio.gather(*(loop.run_in_executor(pool, _warm_child) for _ in range(2)))
        worker_pids = sorted({pid for pid, _ in warm})
        info = await machine_info(admin, warm[0][1])
        info["worker_loop"] = info.pop("loadgen_loop")
        info["rabbitmq"] = (
            await rabbit_version(args.amqp_url) if "rabbitmq" in args.brokers else None
        )
        info["rabbitmq_pids"] = rabbit_pids()
        conn = await asyncpg.connect(admin)
        try:
            for name in ("autovacuum", "wal_sync_method", "commit_delay"):
                info["postgresql_settings"][name] = await conn.fetchval(f"SHOW {name}")
        finally:
            await conn.close()
        print(
            f"stockkeeper messaging bench {run_id}: {info['nproc']} CPUs, Python "
            f"{info['python']}, PostgreSQL {info['postgresql']}, RabbitMQ {info['rabbitmq']}; "
            f"{args.events:,} events over {args.skus} SKUs, batch {args.batch}, "
            f"prefetch {args.prefetch}, worker processes on {info['worker_loop']}",
            flush=True,
        )
        bench = Bench(
            args,
            pool,
            manager,
            worker_pids,
            run_id,
            info["postmaster_pid"],
            info["rabbitmq_pids"],
        )
        async with Databases(admin) as dbs:
            for broker in args.brokers:
                db = f"bench_{run_id}_msg_{broker}"
                db_url = await dbs.create(db)
                try:
                    await bench.broker_runs(broker, db_url, rows)
                except Exception as exc:  # one broker failing should not lose the other
                    failures[broker] = f"{type(exc).__name__}: {str(exc)[-1500:]}"
                    print(f"  {broker}: FAILED: {failures[broker]}", flush=True)
                await dbs.drop(db)

    add_ratios(rows)
    table = markdown_table(HEAD, map(table_row, rows), "lllrrrl")
    s = info["postgresql_settings"]
    print()
    print(
        f"Machine: nproc {info['nproc']} ({info['cpu_model']}), Python {info['python']}, "
        f"PostgreSQL {info['postgresql']} (synchronous_commit={s.get('synchronous_commit')}, "
        f"fsync={s.get('fsync')}), RabbitMQ {info['rabbitmq']} (quorum queues, persistent "
        "messages); the worker processes, PostgreSQL and RabbitMQ share these CPUs."
    )
    print(
        f"Work: {args.events:,} inventory.level_changed events over {args.skus} SKUs, routed to "
        f"channel.propagation; dispatcher batch / raw publish batch {args.batch}, consumer "
        f"prefetch {args.prefetch}. Publisher and consumer each run in their own process "
        f"({info['worker_loop']})."
    )
    print()
    print(table)
    print()
    print(
        "events/s: events over the time from the agreed start of the run to the last\n"
        "confirm (publish) or ack (consume, end to end). vs baseline: over the raw run of the\n"
        "same broker and measurement. Baselines: rabbitmq = aio-pika (confirms, gather of one\n"
        "batch; consume with the same prefetch, ack each); pgqueue = asyncpg, one connection\n"
        "per side: queue_insert per batch; a claim of the same rows as queue_claim (but one\n"
        "that cannot run away, see bench/README.md) + one DELETE per message; no adapter,\n"
        "pool, NOTIFY or runner. CPU in cores: publisher/consumer = the two worker processes\n"
        "over their measured part; PG = this database's backends and the cluster's\n"
        "background processes; other = everything else on the machine; steal = CPU the\n"
        "hypervisor gave to other guests while we wanted it."
    )
    warn_if_busy(rows, "other", args.quiet_below, "other processes used", "a run")
    warn_if_busy(rows, "steal", args.quiet_below, "the hypervisor stole", "a run")
    if args.py_spy:
        print("\nNOTE: --py-spy was on: the stockkeeper rows ran under a sampling profiler.")
    if not args.no_json:
        stamp = harness.stamp_now()
        doc = {
            "run_id": run_id,
            "timestamp": stamp,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": info,
            "settings": {
                "events": args.events,
                "skus": args.skus,
                "batch": args.batch,
                "prefetch": args.prefetch,
                "consumer_batch": args.consumer_batch,
                "brokers": args.brokers,
                "processes": "publisher and consumer in separate worker processes",
                "py_spy": str(args.py_spy) if args.py_spy else None,
            },
            "results": rows,
            "failures": failures,
            "markdown": table,
        }
        out = harness.write_results("messaging", doc, stamp)
        print(f"\nwrote {out.relative_to(harness.REPO)}")
    for broker, error in failures.items():
        print(f"{broker} failed: {error}", file=sys.stderr)
    return 0 if not failures else 1


def main() -> None:
    harness.exit_with(amain(parse_args()))


if __name__ == "__main__":
    main()
