"""``stockkeeper status``: the running instance's /admin/status as tables, asked over
HTTP; it never starts a database of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import run_cli
from tests.support import ServerProcess, base_config


class AdminServer(ServerProcess):
    """``stockkeeper run admin-api``: ready when the admin port answers /readyz."""

    @property
    def url(self) -> str:
        return self.admin_url


@pytest.fixture
def admin_server(db_url: str, tmp_path: Path) -> Any:
    server = AdminServer(base_config(db_url), tmp_path, "admin-api").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_status_prints_the_running_instances_figures_as_tables(admin_server: AdminServer) -> None:
    done = run_cli(
        "status", "--config", str(admin_server.config_path), cwd=admin_server.config_path.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for title in ("Pipes", "Queues", "Open dead letters", "Channels", "outbox pending"):
        assert title in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_status_json_is_the_admin_status_document(admin_server: AdminServer) -> None:
    done = run_cli(
        "status",
        "--json",
        "--config",
        str(admin_server.config_path),
        cwd=admin_server.config_path.parent,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(done.stdout)
    assert doc["outbox"]["pending"] == 0
    assert doc["broker"]["kind"] == "pgqueue"


def test_status_with_nothing_running_says_so_and_creates_nothing(tmp_path: Path) -> None:
    done = run_cli("status", "--url", "http://127.0.0.1:9", "--token", "x", cwd=tmp_path)
    assert done.returncode == 1
    assert "no stockkeeper admin-api answers at http://127.0.0.1:9" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_status_without_a_token_names_where_it_looked(tmp_path: Path) -> None:
    done = run_cli("status", cwd=tmp_path)
    assert done.returncode == 1
    assert "no admin token" in done.stderr
    assert ".stockkeeper" in done.stderr
    assert list(tmp_path.iterdir()) == []
