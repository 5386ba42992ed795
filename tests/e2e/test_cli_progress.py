"""Long commands report their progress: off a terminal, one plain line every N items
(issue 16.7). The child's stderr is a pipe here, so these are the lines a log gets."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from stockkeeper.bootstrap import Container
from stockkeeper.services.propagation import RECONCILE_PAGE
from stockkeeper.services.stock import Receipt
from stockkeeper.store.migrate import available
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from tests.e2e.helpers import run_cli
from tests.support import base_config

LINE = re.compile(r"^(?P<label>[\w -]+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\) [\d.]+/s")


def progress_lines(stderr: str, label: str) -> list[tuple[int, int]]:
    found = []
    for line in stderr.splitlines():
        m = LINE.match(line)
        if m and m["label"] == label:
            found.append((int(m["done"]), int(m["total"])))
    return found


def write(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    cfg["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "stockkeeper.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


async def test_reconcile_audit_and_migrate_write_progress_lines_when_not_on_a_terminal(
    container: Container,
    db_url: str,
    tmp_path: Path,
    shopify_channel: tuple[ShopifyState, SandboxServer],
) -> None:
    # Two pages of the drift repair's walk: a full one and 50 more.
    n = RECONCILE_PAGE + 50
    for i in range(n):
        await container.stock.receive(Receipt(f"PRG-{i:04d}", 1, f"prg-{i}"))
    cfg = base_config(db_url)
    cfg["connectors"] = [
        {
            "id": "shop",
            "type": "shopify",
            "url": graphql_url(shopify_channel[1].url),
            "location_id": "gid://shopify/Location/1",
        }
    ]
    path = write(tmp_path, cfg)

    r = run_cli("reconcile-channels", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"shop: {n} SKUs checked" in r.stdout  # the summary stays on stdout
    assert progress_lines(r.stderr, "reconcile shop") == [(RECONCILE_PAGE, n), (n, n)], r.stderr
    assert "done in" in r.stderr.splitlines()[-1]

    r = run_cli("audit", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert progress_lines(r.stderr, "audit") == [(1, 4), (2, 4), (3, 4), (4, 4)], r.stderr

    r = run_cli("migrate", "--config", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = progress_lines(r.stderr, "migrate")
    assert lines, r.stderr
    assert lines[-1][0] == lines[-1][1], r.stderr  # every migration in place
    assert "migrations applied: none (" in r.stdout
    assert f"({len(available())} in place)" in r.stdout


async def test_reconcile_with_no_channels_says_so(
    container: Container, db_url: str, tmp_path: Path
) -> None:
    path = write(tmp_path, base_config(db_url))  # no connectors at all

    r = run_cli("reconcile-channels", "--config", str(path), cwd=tmp_path)

    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "no channels configured: nothing to reconcile", r.stdout
