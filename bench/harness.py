"""What every bench script shares: databases, child processes, CPU accounting, a quiet
machine, percentiles, tables and the results file.

The scripts import it as a sibling module (``python bench/<script>.py`` puts ``bench/``
on the path). A child process is started, waited for and stopped by the same helpers the
test suites use (``tests/support.py``), so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
if str(REPO) not in sys.path:  # for tests.support: the checkout, not an installed package
    sys.path.insert(0, str(REPO))

from tests.support import free_port, stop_process, wait_ready, with_database  # noqa: E402

__all__ = ["free_port", "stop_process", "with_database"]

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TOKEN = "bench-token-0123456789abcdef"

T = TypeVar("T")


# -- event loops ---------------------------------------------------------------------


def exit_with(main: Coroutine[Any, Any, int]) -> NoReturn:
    """Run a script's ``main`` (on asyncio) and exit with its code; 130 on Ctrl-C."""
    try:
        sys.exit(asyncio.run(main))
    except KeyboardInterrupt:
        sys.exit(130)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (as ``stockkeeper run`` does)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    result: T = uvloop.run(main)
    return result


def loop_name() -> str:
    """The event loop ``run`` uses here: ``uvloop <version>`` or ``asyncio``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"uvloop {version('uvloop')}"
    except PackageNotFoundError:
        return "asyncio"


# -- databases and RabbitMQ ----------------------------------------------------------


async def admin_execute(admin_url: str, sql: str, retries: int = 20) -> None:
    """Run one admin statement; retried while the template still has sessions."""
    conn = await asyncpg.connect(admin_url)
    try:
        for attempt in range(retries):
            try:
                await conn.execute(sql)
                return
            except asyncpg.ObjectInUseError:
                if attempt == retries - 1:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await conn.close()


async def create_database(admin_url: str, name: str, *, migrated: bool = False) -> str:
    """A new empty database (with stockkeeper's schema when ``migrated``); its URL."""
    await admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(admin_url, name)
    if migrated:
        from stockkeeper.store.migrate import migrate

        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
    return url


async def drop_database(admin_url: str, name: str) -> None:
    await admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Databases:
    """The databases one run creates on the server at ``admin_url``; those still there
    when the block ends (an error, an interrupt) are dropped then."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.names: list[str] = []

    async def __aenter__(self) -> Databases:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for name in reversed(self.names):
            with contextlib.suppress(Exception):
                await drop_database(self.admin_url, name)
        self.names.clear()

    async def create(self, name: str, template: str | None = None) -> str:
        """A new database (a copy of ``template``, or empty); its URL."""
        clause = f' TEMPLATE "{template}"' if template else ""
        await admin_execute(self.admin_url, f'CREATE DATABASE "{name}"{clause}')
        self.names.append(name)
        return with_database(self.admin_url, name)

    async def drop(self, name: str) -> None:
        await admin_execute(self.admin_url, f'DROP DATABASE "{name}" WITH (FORCE)')
        self.names.remove(name)


async def rabbit_ok(url: str) -> bool:
    """Whether RabbitMQ answers at ``url`` (else the scripts use the embedded queue)."""
    import aio_pika

    try:
        conn = await aio_pika.connect(url, timeout=3)
    except Exception:
        return False
    await conn.close()
    return True


# -- child processes -----------------------------------------------------------------


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident memory of ``pid`` in MB (Linux ``VmHWM``)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Proc:
    """``python -m stockkeeper <args>`` as a child process, its output in ``<label>.log``.

    With ``cfg`` the configuration is written to ``<label>.yaml`` and passed as
    ``--config``. The child gets this environment without ``STOCKKEEPER_*`` (a stray
    variable would change its configuration), plus ``env``.
    """

    def __init__(
        self,
        args: list[str],
        workdir: Path,
        label: str,
        *,
        cfg: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.label = label
        self.log = workdir / f"{label}.log"
        if cfg is not None:
            self.config = workdir / f"{label}.yaml"
            self.config.write_text(yaml.safe_dump(cfg))
            args = [*args, "--config", str(self.config)]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
        child_env.update(env or {})
        with self.log.open("wb") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stockkeeper", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env,
            )
        self.peak: float | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, url: str, within: float = 60.0) -> None:
        """Wait until ``url`` answers 200; raise if the child exits or is not ready."""
        if not await asyncio.to_thread(wait_ready, self.proc, url, within, self.log):
            self.stop()
            raise RuntimeError(f"{self.label} not ready in {within}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def sample(self) -> None:
        """Remember the child's peak memory (read it while the child is alive)."""
        peak = vm_hwm_mb(self.proc.pid)
        if peak is not None:
            self.peak = peak

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.label} exited:\n{self.log_tail()}")

    def stop(self) -> None:
        self.sample()
        stop_process(self.proc)


# -- CPU accounting (Linux /proc) ----------------------------------------------------

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# A client backend's title: "postgres: [cluster: ]user database host(port) state".
CLIENT_BACKEND = re.compile(r"^postgres: (?:[^:]+: )?\S+ \S+ (?:\[local\]|\S*\(\d+\))")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cluster_processes(postmaster: int, dbname: str) -> list[int]:
    """The postmaster and its children, minus the client backends of other databases."""
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) != postmaster:
                continue
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            if CLIENT_BACKEND.match(title) and f" {dbname} " not in f" {title} ":
                continue  # another session's backend (tests running beside us, say)
            pids.append(int(entry.name))
    return pids


def rabbit_pids() -> list[int]:
    """RabbitMQ's Erlang VM processes on this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
    return pids


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot; idle and iowait are not busy."""
    try:
        parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = parts[:8]
    return (user + nice + system + irq + softirq) / TICK, steal / TICK


def postmaster_of(backend: int) -> int | None:
    """The local postmaster, to count PostgreSQL's CPU; None when the server is remote."""
    try:
        if Path(f"/proc/{backend}/comm").read_text().strip() != "postgres":
            return None
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


async def postmaster(db_url: str) -> int | None:
    """The postmaster of the server at ``db_url``, when it runs on this machine."""
    conn = await asyncpg.connect(db_url)
    try:
        return postmaster_of(await conn.fetchval("SELECT pg_backend_pid()"))
    finally:
        await conn.close()


async def wait_quiet(below: float, at_most: float) -> tuple[float, float]:
    """Wait (up to ``at_most`` s) until the machine spends under ``below`` cores for 1 s.

    Before each load nothing of ours should be busy, so what is busy then is someone
    else (or PostgreSQL's autovacuum after our previous load). Returns (waited, busy).
    """
    t0 = time.monotonic()
    while True:
        b0 = machine_cpu()[0]
        await asyncio.sleep(1.0)
        busy = round(machine_cpu()[0] - b0, 2)
        waited = time.monotonic() - t0
        if busy < below or waited >= at_most:
            return waited, busy


# -- the machine ---------------------------------------------------------------------


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


async def machine_info(admin_url: str, loop_impl: str) -> dict[str, Any]:
    """The machine, PostgreSQL and its settings, and the commit: for the results file."""
    conn = await asyncpg.connect(admin_url)
    try:
        pg_version = await conn.fetchval("SHOW server_version")
        pm = postmaster_of(await conn.fetchval("SELECT pg_backend_pid()"))
        settings = {
            r["name"]: r["setting"]
            for r in await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name = ANY($1::text[])",
                ["synchronous_commit", "fsync", "shared_buffers", "max_connections"],
            )
        }
    finally:
        await conn.close()
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "postgresql": pg_version,
        "postgresql_settings": settings,
        "loadavg_before": list(os.getloadavg()),
        "postmaster_pid": pm,
        "loadgen_loop": loop_impl,
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "src_modified": bool(_git("status", "--porcelain", "--", "src")),
    }


# -- figures and output --------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100); NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt(x: float | None, spec: str) -> str:
    """``x`` formatted, or ``-`` when there is no figure (None or NaN)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, spec)


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]], align: str) -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r``."""
    assert len(align) == len(head), (align, head)
    rule = "".join("---|" if a == "l" else "---:|" for a in align)
    lines = ["| " + " | ".join(head) + " |", "|" + rule]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def stamp_now() -> str:
    """The UTC time the results files are named by (``20260101T120000Z``)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def warn_if_busy(
    rows: Iterable[dict[str, Any]], key: str, below: float, who: str, during: str
) -> None:
    """Warn when ``cpu_cores[key]`` of a row exceeded ``below``: those rows measured a
    machine that was busy with something else too."""
    most = max((r["cpu_cores"][key] for r in rows), default=0.0)
    if most > below:
        print(
            f"\nWARNING: {who} up to {most:.2f} cores during {during}; "
            "those rows understate what this machine can do."
        )


def write_results(name: str, doc: dict[str, Any], stamp: str | None = None) -> Path:
    """``doc`` as ``bench/results/<name>-<stamp>.json`` (git-ignored); its path."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{stamp or stamp_now()}.json"
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return out
