"""What the end-to-end suites share: HTTP clients, problem+json checks, table counts, CLI runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.support import ADMIN_TOKEN, ServerProcess, auth

PROBLEM_CONTENT_TYPE = "application/problem+json"
# Every table a request can write to; "nothing written" means none of these moved.
WRITTEN_TABLES = (
    "sku",
    "sku_batch",
    "inventory_ledger",
    "reservation",
    "reservation_line",
    "domain_event",
    "applied_reference",
    "idempotency_key",
)


def client(
    server: ServerProcess, *, connections: int = 20, timeout: float = 60.0
) -> httpx.AsyncClient:
    """An AsyncClient on ``server`` that can hold ``connections`` requests in flight.

    Idle connections are dropped after 2 s, before the server's keep-alive timeout
    (uvicorn's 5 s, the same as httpx's default): with both at 5 s, a request sent on a
    connection just as the server closes it fails with ``httpx.ReadError``, which a
    loaded machine made happen in the 300- and 500-client tests."""
    return httpx.AsyncClient(
        base_url=server.url,
        timeout=timeout,
        limits=httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=2.0
        ),
    )


def assert_problem(resp: httpx.Response, status: int, slug: str | set[str]) -> dict[str, Any]:
    """``resp`` is an RFC 9457 problem document with ``status`` and type ``slug``."""
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith(PROBLEM_CONTENT_TYPE), resp.headers
    doc: dict[str, Any] = resp.json()
    for member in ("type", "title", "status", "detail"):
        assert member in doc, (member, doc)
    assert doc["status"] == status, doc
    slugs = {slug} if isinstance(slug, str) else slug
    assert doc["type"] in slugs, doc
    return doc


async def receive(
    http: httpx.AsyncClient, sku: str, quantity: int, reference_id: str | None = None
) -> dict[str, Any]:
    resp = await http.post(
        "/inventory/receipts",
        json={"sku": sku, "quantity": quantity, "reference_id": reference_id or f"rcpt-{sku}"},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def stock_of(http: httpx.AsyncClient, sku: str) -> dict[str, Any]:
    resp = await http.get(f"/inventory/{sku}", headers=auth(ADMIN_TOKEN))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


async def table_counts(db_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(db_url)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in WRITTEN_TABLES}
    finally:
        await conn.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any STOCKKEEPER_ setting of ours, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m stockkeeper <args>`` in a child process; its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "stockkeeper", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def audit(server: ServerProcess) -> subprocess.CompletedProcess[str]:
    """``stockkeeper audit`` against the server's own configuration file."""
    return run_cli("audit", "--config", str(server.config_path), cwd=server.config_path.parent)
