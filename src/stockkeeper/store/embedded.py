"""The embedded PostgreSQL used when no ``database.url`` is configured.

First choice is the ``pgserver`` package (PostgreSQL binaries in a wheel). Without it,
the machine's own ``initdb``/``pg_ctl`` run a private cluster in the data directory.
Otherwise a clear message says what to install.
"""

from __future__ import annotations

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


@dataclass
class EmbeddedPostgres:
    url: str
    handle: Any = None  # keeps pgserver's server alive while referenced

    def stop(self) -> None:
        """Drop our handle; pgserver stops the server when its last user exits."""
        self.handle = None


def _from_pgserver(pgdata: Path) -> EmbeddedPostgres | None:
    # pgserver narrates every command at INFO; its warnings and errors still show.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (any headless server).
        warnings.simplefilter("ignore")
        try:
            import pgserver  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            return None
        server = pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined,unused-ignore]
    return EmbeddedPostgres(str(server.get_uri()), server)


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
            "database.url is not set and the embedded server needs the pgserver package "
            "(PostgreSQL refuses to run as root from system binaries). "
            "Install pgserver or set database.url."
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
    return EmbeddedPostgres(f"postgresql://postgres@127.0.0.1:{port}/postgres")


def start_embedded(data_dir: Path) -> EmbeddedPostgres:
    """Start (or join) the embedded server in ``data_dir/pg`` and return its URL."""
    pgdata = (data_dir / "pg").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    for start in (_from_pgserver, _from_system_binaries):
        server = start(pgdata)
        if server is not None:
            return server
    raise ConfigError(
        "database.url is not set and no embedded PostgreSQL is available: "
        "pip install pgserver (Linux/macOS, Python 3.9-3.12), or install PostgreSQL's "
        "initdb and pg_ctl, or set database.url to a PostgreSQL 14+ server."
    )
