"""The database briefly unavailable under load: every answer is a success or a 503
``unavailable`` problem+json with Retry-After, never a bare 500 (issue 13, point 10);
any other unexpected error is a 500 problem+json whose request id is in the log. The
workers through the same outage: one warning line per failed round (D-387), and a
poller that takes its lock again (D-388).

The outage is real: a private PostgreSQL cluster of this module (initdb in a temp dir,
on a free port) is stopped and started again. The machine's shared server is never
touched.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from glob import glob
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from stockkeeper.api.admin import create_admin_app
from stockkeeper.api.inventory import create_inventory_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import MarketplaceConnectorConfig, Settings
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.pollers import MarketplacePoller
from stockkeeper_sandbox.marketplace import MarketplaceState
from stockkeeper_sandbox.server import SandboxServer
from tests.e2e.messaging_helpers import wait_until
from tests.support import ADMIN_TOKEN, WRITER_TOKEN, auth, base_config, free_port

PROBLEM = "application/problem+json"
W = auth(WRITER_TOKEN)


class PrivateCluster:
    """A PostgreSQL cluster of our own, run as the postgres OS user when we are root
    (PostgreSQL refuses to run as root)."""

    def __init__(self, root: Path) -> None:
        found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not found:
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = Path(found[-1]).parent
        self.pgdata = root / "pgdata"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(root, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.pgdata), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / tool), *args], check=True, capture_output=True
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        options = f"-p {self.port} -k {self.pgdata} -h 127.0.0.1 -c max_connections=20"
        log = str(self.pgdata / "server.log")
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-l", log, "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", mode, "stop")


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    root = Path(tempfile.mkdtemp(prefix="sk-outage-"))
    try:
        pg = PrivateCluster(root)
        pg.start()
        try:
            yield pg
        finally:
            subprocess.run(
                [
                    *pg.as_user,
                    str(pg.bin / "pg_ctl"),
                    "-D",
                    str(pg.pgdata),
                    "-m",
                    "immediate",
                    "stop",
                ],
                capture_output=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def app_on_cluster(
    cluster: PrivateCluster, tmp_path: Path
) -> AsyncIterator[tuple[Container, httpx.AsyncClient]]:
    cfg: dict[str, Any] = base_config(cluster.url)
    cfg["database"]["pool_size"] = 4
    cfg["data_dir"] = str(tmp_path / "data")
    container = await build(Settings.model_validate(cfg))
    try:
        await container.stock.receive(Receipt("TEA", 10_000, f"seed-{uuid.uuid4().hex}"))
        transport = httpx.ASGITransport(
            app=create_inventory_app(container), raise_app_exceptions=False
        )
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            yield container, http
    finally:
        await container.close()


def assert_unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, (r.status_code, r.headers, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    assert int(r.headers["retry-after"]) >= 1
    doc = r.json()
    assert (doc["type"], doc["status"]) == ("unavailable", 503), doc
    assert doc["request_id"], doc


async def one_request(http: httpx.AsyncClient, n: int) -> httpx.Response:
    if n % 2:
        return await http.get("/inventory/TEA", headers=W)
    body = {"order_id": f"o-{uuid.uuid4().hex}", "lines": [{"sku": "TEA", "quantity": 1}]}
    # Every other reserve under an Idempotency-Key: the key's transaction fails the same way.
    headers = {**W, "Idempotency-Key": uuid.uuid4().hex} if n % 4 == 0 else W
    return await http.post("/inventory/reserve", json=body, headers=headers)


async def load(http: httpx.AsyncClient, count: int) -> list[httpx.Response]:
    return list(await asyncio.gather(*(one_request(http, n) for n in range(count))))


async def test_a_database_outage_under_load_is_503_unavailable_never_a_bare_500(
    cluster: PrivateCluster, app_on_cluster: tuple[Container, httpx.AsyncClient]
) -> None:
    _, http = app_on_cluster
    before = await load(http, 20)
    assert {r.status_code for r in before} <= {200, 201}, [r.text for r in before]

    # The database goes away while requests are in flight, and stays away for a while.
    in_flight = asyncio.ensure_future(load(http, 40))
    await asyncio.to_thread(cluster.stop)
    during = [*(await in_flight), *(await load(http, 40))]
    try:
        for r in during:
            if r.status_code not in (200, 201):
                assert_unavailable(r)
        assert any(r.status_code == 503 for r in during)
        # Not ready says so the same way: 503 unavailable with Retry-After (D-393).
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()["type"]) == (503, "unavailable"), ready.text
        assert ready.headers["content-type"].startswith(PROBLEM)
        assert int(ready.headers["retry-after"]) >= 1
    finally:
        await asyncio.to_thread(cluster.start)

    # Back: the pool replaces its dead connections; until it has, still only 503s.
    for _ in range(50):
        after = await load(http, 10)
        for r in after:
            if r.status_code not in (200, 201):
                assert_unavailable(r)
        if all(r.status_code in (200, 201) for r in after):
            break
    else:
        pytest.fail("requests did not succeed again after the database came back")


async def test_an_unexpected_error_is_500_problem_json_with_the_request_id_in_the_log(
    app_on_cluster: tuple[Container, httpx.AsyncClient],
) -> None:
    container, http = app_on_cluster
    container.failpoints.points["api.use_case"] = "raise"
    body = {"order_id": "o-unexpected", "lines": [{"sku": "TEA", "quantity": 1}]}
    with structlog.testing.capture_logs() as logs:
        r = await http.post("/inventory/reserve", json=body, headers=W)
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    doc = r.json()
    assert (doc["type"], doc["status"]) == ("internal", 500), doc
    lines = [e for e in logs if e.get("request_id") == doc["request_id"]]
    assert len(lines) == 1, logs
    assert lines[0]["event"] == "http.unexpected_error"
    assert lines[0]["log_level"] == "error"
    assert "FailpointError" in repr(lines[0]["exc_info"])
    # One id per request: the header the client sees is the body's id (README, "Logs").
    assert r.headers["x-request-id"] == doc["request_id"], (r.headers, doc)


async def test_a_problem_keeps_the_callers_own_request_id(
    app_on_cluster: tuple[Container, httpx.AsyncClient],
) -> None:
    container, http = app_on_cluster
    container.failpoints.points["api.use_case"] = "raise"
    body = {"order_id": "o-mine", "lines": [{"sku": "TEA", "quantity": 1}]}
    with structlog.testing.capture_logs() as logs:
        r = await http.post(
            "/inventory/reserve", json=body, headers={**W, "X-Request-ID": "mine-123"}
        )
    assert r.status_code == 500, r.text
    assert r.json()["request_id"] == "mine-123"
    assert r.headers["x-request-id"] == "mine-123"
    assert [e["event"] for e in logs if e.get("request_id") == "mine-123"] == [
        "http.unexpected_error"
    ]


async def test_a_poller_takes_its_lock_and_poll_now_again_after_the_database_restarts(
    cluster: PrivateCluster, tmp_path: Path, market: tuple[MarketplaceState, SandboxServer]
) -> None:
    """The connector's advisory lock and the LISTEN of "poll now" live on the poller's own
    session, which a restart of the database ends: the poller takes both again, so
    "poll now" still reaches it, and it stops cleanly afterwards (D-388)."""
    state, server = market
    cfg: dict[str, Any] = base_config(cluster.url)
    cfg["database"]["pool_size"] = 4
    cfg["data_dir"] = str(tmp_path / "data")
    # An interval far beyond the test: only a poll request makes it poll again.
    cfg["connectors"] = [{"id": "mp", "type": "marketplace", "url": server.url, "interval_s": 3600}]
    c = await build(Settings.model_validate(cfg))
    poller = MarketplacePoller(c, c.settings.connectors_of(MarketplaceConnectorConfig)[0])
    stop = asyncio.Event()
    task = asyncio.ensure_future(poller.run(stop))

    async def lock_held() -> bool:
        try:
            async with c.pool.acquire() as conn:
                n = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        except Exception:  # the database still starting
            return False
        return bool(n == 1)

    async def sales_queued() -> bool:
        async with c.pool.acquire() as conn:
            n = await conn.fetchval(
                "SELECT count(*) FROM domain_event WHERE event_type = 'ingest.mp'"
            )
        return bool(n >= 1)

    transport = httpx.ASGITransport(app=create_admin_app(c))
    try:
        await wait_until(lock_held, timeout=30, what="the poller's lock")
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(cluster.start)
        await wait_until(lock_held, timeout=30, what="the poller's lock, taken again")
        state.sell("t-1", "A", 2)  # news the poller would not look for within the hour
        async with httpx.AsyncClient(
            transport=transport, base_url="http://admin", headers=auth(ADMIN_TOKEN)
        ) as admin:
            for _ in range(50):  # the pool may still hand out a connection of before
                r = await admin.post("/admin/connectors/mp/poll")
                if r.status_code == 202:
                    break
                await asyncio.sleep(0.1)
            assert r.status_code == 202, r.text
        await wait_until(sales_queued, timeout=30, what="the requested poll")
        assert not task.done(), task
    finally:
        stop.set()
        done = await asyncio.gather(task, return_exceptions=True)
        await c.close()
    assert done == [None], done  # stopped without an error from the lost session


async def test_the_ops_page_during_an_outage_is_503_unavailable(
    cluster: PrivateCluster, app_on_cluster: tuple[Container, httpx.AsyncClient]
) -> None:
    # The page reads through the admin API in process: the API's 503 stays a 503 (with
    # Retry-After) for the page's reader, not the page's own 500 "internal".
    container, _ = app_on_cluster
    transport = httpx.ASGITransport(app=create_admin_app(container), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as page:
        form = await page.get("/admin/ui/login")
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        r = await page.post("/admin/ui/login", data={"token": ADMIN_TOKEN, "csrf": csrf})
        assert r.status_code == 303, r.text
        assert (await page.get("/admin/ui")).status_code == 200
        await asyncio.to_thread(cluster.stop)
        try:
            for path in ("/admin/ui", "/admin/ui/syncs"):
                assert_unavailable(await page.get(path))
        finally:
            await asyncio.to_thread(cluster.start)
