"""Helpers for the messaging crash tests: dispatcher and consumer child processes, polls
with deadlines, RabbitMQ inspection (which connection belongs to which child, queue
depths) and a fast outbox writer."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import httpx
import yaml
from prometheus_client.parser import text_string_to_metric_families

from stockkeeper.config import BrokerConfig
from stockkeeper.domain.events import LEVEL_CHANGED, Event
from stockkeeper.messaging.consumer import RetryPolicy
from stockkeeper.messaging.rabbitmq import delete_topology
from stockkeeper.store import outbox
from tests.e2e.effects import CREATE_TABLE
from tests.support import free_port

# The repository root, so a child can import tests.e2e.effects.
REPO_ROOT = Path(__file__).resolve().parents[2]
PROPAGATION = "channel.propagation"


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without STOCKKEEPER_ settings, the repository on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


class Child:
    """``python -m stockkeeper <args> --config F`` in a real child process."""

    def __init__(
        self,
        args: list[str],
        config: dict[str, Any],
        workdir: Path,
        *,
        label: str,
        failpoints: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.args = args
        self.label = label
        self.metrics_port = free_port()
        cfg = dict(config)
        cfg["monitoring"] = {**cfg.get("monitoring", {}), "metrics_port": self.metrics_port}
        cfg["data_dir"] = str(workdir / "data")
        tag = f"{label}-{uuid.uuid4().hex[:6]}"
        self.config_path = workdir / f"{tag}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.log_path = workdir / f"{tag}.log"
        env = dict(extra_env or {})
        if failpoints:
            env["STOCKKEEPER_FAILPOINTS"] = failpoints
        self.env = child_env(**env)
        # A child set up to kill itself is allowed to die; any other death fails the test.
        self.may_die = bool(failpoints)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stockkeeper",
                    *self.args,
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.config_path.parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return f"--- {self.label} (pid {self.pid}, rc {self.returncode}) ---\n{text[-chars:]}"

    def logged(self, event: str) -> bool:
        try:
            return f'"{event}"' in self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return False

    async def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while (rc := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.label} still running after {timeout}s\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)
        return rc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        resp = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5)
        resp.raise_for_status()
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(resp.text)
            for s in family.samples
        }

    def consumer_outcomes(self) -> dict[str, int]:
        """This consumer's messages by outcome (applied, duplicate, stale)."""
        out: dict[str, int] = {}
        for (name, labels), value in self.metrics().items():
            if name == "stockkeeper_consumer_messages_total":
                out[dict(labels)["outcome"]] = int(value)
        return out

    def published(self) -> int:
        """Events this dispatcher published and marked SENT."""
        return int(self.metrics().get(("stockkeeper_outbox_published_total", frozenset()), 0))


class Children:
    """Every child of one test, stopped on the way out whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.all: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for child in reversed(self.all):
            child.stop()

    def _start(self, child: Child) -> Child:
        self.all.append(child)
        return child.start()

    def dispatcher(
        self, config: dict[str, Any], *, failpoints: str | None = None, label: str = "dispatcher"
    ) -> Child:
        return self._start(
            Child(["run", "dispatcher"], config, self.workdir, label=label, failpoints=failpoints)
        )

    def consumer(
        self,
        config: dict[str, Any],
        *,
        name: str,
        handler: str = "tests.e2e.effects:record",
        queue: str = PROPAGATION,
        failpoints: str | None = None,
        extra_env: dict[str, str] | None = None,
        label: str = "consumer",
    ) -> Child:
        args = ["consume", queue, handler, "--name", name]
        return self._start(
            Child(
                args,
                config,
                self.workdir,
                label=label,
                failpoints=failpoints,
                extra_env=extra_env,
            )
        )

    def check_alive(self) -> None:
        """Fail at once, with its log, if a child that should be running has exited."""
        for child in self.all:
            if not child.may_die and child.returncode is not None:
                raise AssertionError(f"{child.label} exited unexpectedly\n{child.log_tail()}")

    def logs(self) -> str:
        return "\n".join(c.log_tail() for c in self.all)


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    what: str,
    children: Children | None = None,
    interval: float = 0.1,
    detail: Callable[[], Awaitable[str]] | None = None,
) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds (or when a child dies)."""
    deadline = time.monotonic() + timeout
    while True:
        if children is not None:
            children.check_alive()
        if await check():
            return
        if time.monotonic() > deadline:
            info = await detail() if detail else ""
            logs = children.logs() if children else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}. {info}\n{logs}")
        await asyncio.sleep(interval)


# -- the database --------------------------------------------------------------------


async def create_effect_table(conn: asyncpg.Connection) -> None:
    await conn.execute(CREATE_TABLE)


async def effect_count(conn: asyncpg.Connection) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM test_effect")
    return n


async def outbox_status(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT status, count(*) AS n FROM domain_event GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def level_changed_ids(conn: asyncpg.Connection) -> set[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT event_id FROM domain_event WHERE event_type = $1", LEVEL_CHANGED
    )
    return {r["event_id"] for r in rows}


async def assert_exactly_once(conn: asyncpg.Connection, expected: set[uuid.UUID]) -> None:
    """Every expected message took effect once: no double, none missing, nothing else."""
    doubled = await conn.fetch(
        "SELECT message_id, count(*) AS n FROM test_effect GROUP BY message_id HAVING count(*) > 1"
    )
    assert not doubled, f"{len(doubled)} messages took effect more than once: {doubled[:5]}"
    applied = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM test_effect")}
    assert applied == expected, (
        f"missing {len(expected - applied)}, unexpected {len(applied - expected)}"
    )


async def create_skus(conn: asyncpg.Connection, skus: Iterable[str]) -> None:
    await conn.execute("INSERT INTO sku (sku) SELECT unnest($1::text[])", list(skus))


async def add_level_changes(conn: asyncpg.Connection, skus: list[str], rng: random.Random) -> int:
    """One transaction of ``inventory.level_changed`` events, one per SKU in ``skus`` (a
    SKU may repeat); each takes the next number of its SKU's sequence."""
    events = [
        Event(LEVEL_CHANGED, {"sku": s, "version": 0, "nonce": rng.random()}, sku=s, source="test")
        for s in skus
    ]
    async with conn.transaction():
        await outbox.add(conn, events)
    return len(events)


# -- RabbitMQ --------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def amqp_ports(pid: int, amqp_port: int) -> set[int]:
    """Local ports of ``pid``'s TCP connections to ``amqp_port`` (from /proc)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            local, remote, inode = cols[1], cols[2], cols[9]
            if inode in inodes and int(remote.rsplit(":", 1)[1], 16) == amqp_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def close_rabbit_connections(url: str, pids: Iterable[int], reason: str = "test") -> int:
    """Close, from the server side, every connection of the processes ``pids`` to the
    RabbitMQ at ``url`` (not the whole node, as ``close_all_connections`` would: other
    test runs may share the broker). Returns how many were closed."""
    amqp_port = urlsplit(url).port or 5672
    ports: set[int] = set()
    for pid in pids:
        ports |= amqp_ports(pid, amqp_port)
    closed = 0
    for line in _rabbitmqctl("list_connections", "pid", "peer_port").splitlines():
        cols = line.split("\t")
        if len(cols) == 2 and cols[1].isdigit() and int(cols[1]) in ports:
            _rabbitmqctl("close_connection", cols[0], reason)
            closed += 1
    return closed


def have_rabbitmqctl() -> bool:
    return shutil.which("rabbitmqctl") is not None


async def rabbit_ready(url: str, queue: str) -> int:
    """Messages waiting on ``queue``, as the queue itself counts them (a passive declare;
    ``rabbitmqctl list_queues`` reports statistics up to seconds old)."""
    conn = await aio_pika.connect(url, timeout=10)
    try:
        channel = await conn.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await conn.close()


def retry_delays_ms(broker: Mapping[str, Any] | None = None) -> list[int]:
    """Every delay a consumer of the broker section ``broker`` (None: the defaults) can
    retry a message after, each the name of a retry queue ``<queue>.retry.<ms>``."""
    b = BrokerConfig.model_validate(dict(broker or {}))
    policy = RetryPolicy(b.retry_base_ms, b.retry_max_ms, b.max_attempts)
    return sorted({policy.delay_ms(a) for a in range(1, b.max_attempts + 1)})


async def drop_rabbit_topology(
    url: str, prefix: str, broker: Mapping[str, Any] | None = None
) -> None:
    """Delete what a test's children declared under its own prefix: the queues, the
    retry queues of every delay of ``broker``'s retry policy (the test's broker section),
    the dead-letter queue and the exchanges."""
    await delete_topology(url, prefix, retry_delays_ms(broker))


SIGKILLED = -signal.SIGKILL
