"""Helpers shared by the test suites: databases cloned from a template, server processes."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import yaml

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUIRE = os.environ.get("CI", "").lower() in {"1", "true", "yes"} or bool(
    os.environ.get("STOCKKEEPER_REQUIRE_SERVICES")
)

SUITE = uuid.uuid4().hex[:8]
"""This run's mark, in the name of every database it creates: several suites may share
one PostgreSQL, and the connection budget counts only this one's."""
SUITE_CONNECTIONS = 40
"""The suite's connection budget: never more connections to its databases at once."""
WORKERS = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1"))
"""How many pytest-xdist workers share this run (1 without xdist)."""
WORKER_CONNECTIONS = SUITE_CONNECTIONS // WORKERS
"""One worker's share of the budget: each worker has its own :data:`SUITE` mark and
counts only its own databases, so the shares add up to :data:`SUITE_CONNECTIONS`."""

ADMIN_TOKEN = "test-admin-token-0123456789"
WRITER_TOKEN = "test-writer-token-0123456789"
READER_TOKEN = "test-reader-token-0123456789"
TOKENS = [
    {
        "name": "admin",
        "token": ADMIN_TOKEN,
        "scopes": ["inventory:read", "inventory:write", "admin"],
    },
    {"name": "writer", "token": WRITER_TOKEN, "scopes": ["inventory:read", "inventory:write"]},
    {"name": "reader", "token": READER_TOKEN, "scopes": ["inventory:read"]},
]


async def rabbit_leftovers(url: str, queues: Iterable[str], exchanges: Iterable[str]) -> list[str]:
    """Which of ``queues`` and ``exchanges`` still exist on the RabbitMQ at ``url``: each
    asked for by a passive declare, which RabbitMQ answers with 404 (closing the channel)
    for a name it does not have. For teardowns that check they left nothing behind."""
    import aio_pika

    left: list[str] = []
    conn = await aio_pika.connect(url, timeout=5)
    try:
        for kind, names in (("queue", queues), ("exchange", exchanges)):
            for name in sorted(set(names)):
                channel = await conn.channel()
                try:
                    if kind == "queue":
                        await channel.declare_queue(name, passive=True)
                    else:
                        await channel.declare_exchange(name, passive=True)
                except aio_pika.exceptions.ChannelNotFoundEntity:
                    continue  # gone, as it should be (the broker closed the channel)
                left.append(f"{kind} {name}")
                await channel.close()
    finally:
        await conn.close()
    return left


def shopify_sandbox_channel(url: str, **extra: Any) -> dict[str, Any]:
    """A connector entry for the sandbox Shopify at ``url`` (its GraphQL endpoint): its
    location 1, no pacing to speak of, no divergence sampling; ``extra`` on top."""
    return {
        "id": "shop",
        "type": "shopify",
        "url": url,
        "location_id": "gid://shopify/Location/1",
        "rate_limit_rps": 1000,
        "divergence_sample_s": 0,
        **extra,
    }


def with_database(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` (socket URLs keep their ?host=)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


@asynccontextmanager
async def scratch_database(
    admin_url: str, prefix: str, template: str | None = None
) -> AsyncIterator[str]:
    """A new database (a copy of ``template``, or empty), dropped afterwards; its URL."""
    name = suite_database_name(prefix)
    admin = await asyncpg.connect(admin_url)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{clause}')
        try:
            yield with_database(admin_url, name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def suite_database_name(prefix: str) -> str:
    """A new database name carrying the suite's mark (:data:`SUITE`)."""
    return f"{prefix}_{SUITE}_{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_config(db_url: str, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        # Small pools keep the suite within SUITE_CONNECTIONS; a test that needs more
        # concurrency says so.
        "database": {"url": db_url, "pool_size": 6},
        "api": {"tokens": TOKENS},
        "logging": {"level": "warning"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def wait_ready(proc: subprocess.Popen[bytes], url: str, timeout: float, log: Path) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout`` s pass (False); raise if
    ``proc`` exits first, with its ``log``. Shared with bench/harness.py."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 15) -> None:
    """SIGTERM ``proc`` if it still runs, SIGKILL after ``grace`` s; reap it either way."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ServerProcess:
    """``stockkeeper run <service>`` (or ``stockkeeper up``) in a real child process."""

    def __init__(
        self,
        config: dict[str, Any],
        workdir: Path,
        service: str = "inventory-api",
        extra_env: dict[str, str] | None = None,
    ):
        self.extra_env = dict(extra_env or {})
        self.port = free_port()
        self.admin_port = free_port()
        cfg = dict(config)
        cfg["api"] = {
            **cfg.get("api", {}),
            "inventory_port": self.port,
            "admin_port": self.admin_port,
        }
        cfg.setdefault("monitoring", {})
        cfg["monitoring"] = {**cfg["monitoring"], "metrics_port": 0}
        cfg["data_dir"] = str(workdir / "data")
        self.config_path = workdir / f"stockkeeper-{uuid.uuid4().hex[:8]}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.service = service
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
        env.update(self.extra_env)
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "stockkeeper",
                    *(["up"] if self.service == "up" else ["run", self.service]),
                    "--config",
                    str(self.config_path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait_ready(self.proc, self.url + "/readyz", timeout, self.log_path):
            return self
        self.stop()
        raise RuntimeError(f"server not ready in {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        stop_process(self.proc)


@contextmanager
def running_server(
    config: dict[str, Any], workdir: Path, service: str = "inventory-api"
) -> Iterator[ServerProcess]:
    server = ServerProcess(config, workdir, service).start()
    try:
        yield server
    finally:
        server.stop()


async def reachable(url: str) -> bool:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), 5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def auth(token: str = ADMIN_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


PGBOUNCER_PATHS = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def pgbouncer_binary() -> str | None:
    """The pgbouncer program (Debian package ``pgbouncer``), or None."""
    import shutil

    found = shutil.which("pgbouncer")
    return found or next((p for p in PGBOUNCER_PATHS if Path(p).exists()), None)


@contextmanager
def running_pgbouncer(
    server_url: str, *, pool_size: int = 2, binary: str | None = None
) -> Iterator[str]:
    """A private PgBouncer in transaction mode on a free port, in front of the server of
    ``server_url`` (any database, trust); yields ``server_url`` pointed at it.

    ``pool_size`` server connections per database and user, few on purpose: every
    transaction of the test lands on whichever is free, as in production."""
    import pwd
    import shutil
    import tempfile

    program = binary or pgbouncer_binary()
    if program is None:
        raise RuntimeError("pgbouncer is not installed (apt-get install -y pgbouncer)")
    server = urlsplit(server_url)
    user = server.username or "postgres"
    port = free_port()
    # Not under pytest's tmp_path: pgbouncer refuses to run as root, and the user it
    # switches to (-u) must be able to read its ini.
    home = Path(tempfile.mkdtemp(prefix="sk-pgbouncer-"))
    home.chmod(0o755)
    (home / "users.txt").write_text(f'"{user}" ""\n')
    (home / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={server.hostname or '127.0.0.1'} port={server.port or 5432}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {home / 'users.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "max_client_conn = 200\n"
        # asyncpg sends it at connect; PgBouncer would refuse the connection otherwise.
        "ignore_startup_parameters = extra_float_digits\n"
    )
    for f in home.iterdir():
        f.chmod(0o644)
    args = [program]
    if os.geteuid() == 0:
        args += ["-u", pwd.getpwnam("postgres").pw_name]
    log_path = home / "pgbouncer.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*args, str(home / "pgbouncer.ini")], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited early:\n{log_path.read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgbouncer not listening:\n{log_path.read_text()}")
            time.sleep(0.05)
        netloc = f"{user}@127.0.0.1:{port}"
        yield urlunsplit(server._replace(netloc=netloc))
    finally:
        # SIGINT: shut down once no transaction is in flight (SIGTERM, from 1.23 on,
        # waits for every client to leave).
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        stop_process(proc, grace=5)
        shutil.rmtree(home, ignore_errors=True)


class ConnectionSampler:
    """Counts, every ``every_s`` from a thread of its own, the server's connections to
    the databases named with :data:`SUITE`; keeps the peak over the run and over the
    current test. A sample every 100 ms misses bursts shorter than that: it is a
    budget check, not a proof."""

    def __init__(self, admin_url: str, every_s: float = 0.1) -> None:
        import threading

        self.admin_url = admin_url
        self.every_s = every_s
        self.peak = 0
        self.peak_test = ""
        self.test = ""
        self.test_peak = 0
        self.samples = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-sampler", daemon=True)

    def start(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def begin(self, test: str) -> None:
        self.test, self.test_peak = test, 0

    def end(self) -> int:
        """The peak seen since :meth:`begin`."""
        peak, self.test = self.test_peak, ""
        return peak

    def _run(self) -> None:
        try:
            asyncio.run(self._sample())
        except BaseException as exc:  # reported by the fixture: no silent budget
            self.error = exc

    async def _sample(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        try:
            while not self._stop.is_set():
                n: int = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE $1",
                    f"%\\_{SUITE}\\_%",
                )
                self.samples += 1
                self.test_peak = max(self.test_peak, n)
                if n > self.peak:
                    self.peak, self.peak_test = n, self.test
                await asyncio.to_thread(self._stop.wait, self.every_s)
        finally:
            await conn.close()


async def until_lock_waits(pool: Any, what: str, *, n: int = 1, timeout: float = 15) -> None:
    """Until ``n`` sessions of ``pool``'s database wait on a lock: a condition, polled
    (``what`` names the wait in the failure)."""
    deadline = time.monotonic() + timeout
    while True:
        async with pool.acquire() as conn:
            waiting = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        if waiting >= n:
            return
        assert time.monotonic() < deadline, f"{what} never waited on a lock"
        await asyncio.sleep(0.01)
