"""Private servers for the fault tests: a PostgreSQL cluster or a RabbitMQ node of the
test's own, in a temporary directory on free ports, that a test may stop, kill or
restart without touching the machine's shared services."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from stockkeeper.store.embedded import _find_binary
from tests.support import free_port

PG_USER = "postgres"  # PostgreSQL refuses to run as root: its OS user runs it
RABBIT_USER = "rabbitmq"


def _as_postgres(argv: list[str]) -> list[str]:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *argv]
    return argv


class PrivatePostgres:
    """A throwaway PostgreSQL cluster: ``start``, ``stop`` (fast shutdown), again."""

    def __init__(self, max_connections: int = 40) -> None:
        initdb, pg_ctl = _find_binary("initdb"), _find_binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise RuntimeError("the fault tests need PostgreSQL's initdb and pg_ctl")
        self.pg_ctl = pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="sk-fault-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.max_connections = max_connections
        if os.geteuid() == 0:
            shutil.chown(self.root, PG_USER, PG_USER)
        subprocess.run(
            _as_postgres([initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust"]),
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([self.pg_ctl, "-D", str(self.data), "-w", *args]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -h 127.0.0.1 "
            f"-c max_connections={self.max_connections} -c fsync=off"
        )
        self._ctl("-l", str(self.root / "server.log"), "-o", options, "start")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended, as in a failover or a restart."""
        self._ctl("-m", "fast", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRabbit:
    """A throwaway RabbitMQ node with its own node name, ports and data directory."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sk-fault-rmq-"))
        self.port = free_port()
        self.node = f"sk-test-{self.port}@localhost"
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            # Our own config file: the machine's names the shared node's listener.
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
        }
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        if os.geteuid() == 0:  # rabbitmq-server drops to its own OS user
            for path in (self.root, self.root / "enabled_plugins", self.root / "rabbitmq.conf"):
                shutil.chown(path, RABBIT_USER, RABBIT_USER)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout_s: float = 60.0) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"], env=self.env, check=True, capture_output=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready = subprocess.run(
                ["rabbitmqctl", "-n", self.node, "await_startup", "--timeout", "5"],
                env=self.env,
                capture_output=True,
            )
            if ready.returncode == 0:
                return
            time.sleep(0.5)
        raise RuntimeError(f"RabbitMQ node {self.node} did not start in {timeout_s} s")

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], env=self.env, capture_output=True)

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM (a crash, not a shutdown): clients see their
        sockets reset, with no Connection.Close first."""
        pid_file = self.root / "mnesia" / f"{self.node}.pid"
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except FileNotFoundError:
                return
            if "\nState:\tZ" in status:  # dead, not yet reaped by its parent
                return
            time.sleep(0.05)
        raise RuntimeError(f"RabbitMQ node {self.node} (pid {pid}) survived SIGKILL")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
