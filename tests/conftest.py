"""Fixtures: a real PostgreSQL per test (a clone of a migrated template), services built
from real config. Locally, with no PostgreSQL on 127.0.0.1:5432, the embedded server is
used; in CI (CI=true) a missing service fails the run instead of skipping."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.store.migrate import migrate
from stockkeeper_sandbox.amazon import AmazonState
from stockkeeper_sandbox.amazon import create_app as create_amazon_app
from stockkeeper_sandbox.channel_webhook import WebhookReceiverState
from stockkeeper_sandbox.channel_webhook import create_app as create_receiver_app
from stockkeeper_sandbox.erp import ErpSandbox, create_erp, drop_erp
from stockkeeper_sandbox.marketplace import MarketplaceState
from stockkeeper_sandbox.marketplace import create_app as create_marketplace_app
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState
from stockkeeper_sandbox.shopify import create_app as create_shopify_app
from stockkeeper_sandbox.wms import WmsState
from stockkeeper_sandbox.wms import create_app as create_wms_app
from tests.support import (
    DEFAULT_ADMIN_URL,
    REQUIRE,
    SUITE,
    SUITE_CONNECTIONS,
    WORKER_CONNECTIONS,
    ConnectionSampler,
    base_config,
    reachable,
    scratch_database,
    with_database,
)


class FakeClock:
    """A clock the test moves by hand (expiry without sleeping)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2030, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="session")
async def admin_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    url = os.environ.get("STOCKKEEPER_TEST_DATABASE_URL", DEFAULT_ADMIN_URL)
    if await reachable(url):
        yield url
        return
    if REQUIRE:
        pytest.fail(f"PostgreSQL is required in CI and not reachable at {url}")
    from stockkeeper.store.embedded import start_embedded

    server = start_embedded(tmp_path_factory.mktemp("embedded-pg"))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
async def template_db(admin_url: str) -> AsyncIterator[str]:
    """A database migrated once; every test gets a copy of it."""
    name = f"sk_template_{SUITE}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(admin_url, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
def connection_budget(admin_url: str) -> Iterator[ConnectionSampler]:
    """The suite's connection budget (SUITE_CONNECTIONS, stated in the README), sampled
    from pg_stat_activity for the whole run; the run fails past it."""
    sampler = ConnectionSampler(admin_url).start()
    yield sampler
    sampler.stop()
    if sampler.error is not None:
        pytest.fail(f"the connection sampler failed: {sampler.error!r}")
    if sampler.peak > WORKER_CONNECTIONS:
        pytest.fail(
            f"this worker held {sampler.peak} connections at once (during {sampler.peak_test}), "
            f"over its share of {WORKER_CONNECTIONS} of the suite's {SUITE_CONNECTIONS}"
        )


@pytest.fixture(autouse=True)
def _within_connection_budget(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that touches PostgreSQL stays within the suite's connection budget;
    one that goes over fails, named, with the number it reached."""
    if "admin_url" not in request.fixturenames:
        yield
        return
    sampler: ConnectionSampler = request.getfixturevalue("connection_budget")
    sampler.begin(request.node.nodeid)
    yield
    peak = sampler.end()
    if log := os.environ.get("SUITE_PEAKS_LOG"):  # a developer's record of peaks
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{peak}\t{request.node.nodeid}\n")
    if peak > WORKER_CONNECTIONS:
        pytest.fail(
            f"held {peak} connections at once, over this worker's share of "
            f"{WORKER_CONNECTIONS} of the suite's {SUITE_CONNECTIONS}"
        )


@pytest.fixture
async def db_url(admin_url: str, template_db: str) -> AsyncIterator[str]:
    async with scratch_database(admin_url, "sk_test", template_db) as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(db_url: str, tmp_path: Path) -> dict[str, Any]:
    cfg = base_config(db_url)
    cfg["data_dir"] = str(tmp_path / "data")
    return cfg


@pytest.fixture
async def container(config: dict[str, Any], clock: FakeClock) -> AsyncIterator[Container]:
    c = await build(Settings.model_validate(config), clock=clock)
    yield c
    await c.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    return tmp_path


DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture(scope="session")
async def rabbit_url() -> str:
    """A reachable RabbitMQ, or a skip on a laptop without one (a failure in CI)."""
    import aio_pika

    url = os.environ.get("STOCKKEEPER_TEST_BROKER_URL", DEFAULT_BROKER_URL)
    try:
        conn = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        if REQUIRE:
            pytest.fail(f"RabbitMQ is required in CI and not reachable at {url}: {exc}")
        pytest.skip(f"RabbitMQ not reachable at {url}")
    await conn.close()
    return url


@pytest.fixture
async def broker_prefix() -> AsyncIterator[str]:
    """Exchange and queue names unique to one test, so tests never share a queue.

    Afterwards the test's queues and exchanges are deleted from RabbitMQ (if it runs),
    so repeated runs do not pile up durable quorum queues on the machine's broker.
    """
    prefix = f"t{uuid.uuid4().hex[:10]}."
    yield prefix
    await _delete_topology(
        os.environ.get("STOCKKEEPER_TEST_BROKER_URL", DEFAULT_BROKER_URL), prefix
    )


async def _delete_topology(url: str, prefix: str) -> None:
    from stockkeeper.messaging.rabbitmq import delete_topology

    try:
        await delete_topology(url, prefix)
    except Exception:
        return  # no RabbitMQ here (the embedded queue was used): nothing to delete


# -- the sandboxes (outside systems over real TCP or a real database) ------------------


@pytest.fixture
def wms() -> Iterator[tuple[WmsState, SandboxServer]]:
    """A sandbox WMS listening on a free port (its state, its server)."""
    state = WmsState()
    with SandboxServer(create_wms_app(state)) as server:
        yield state, server


@pytest.fixture
def market() -> Iterator[tuple[MarketplaceState, SandboxServer]]:
    """A sandbox marketplace listening on a free port (its state, its server)."""
    state = MarketplaceState()
    with SandboxServer(create_marketplace_app(state)) as server:
        yield state, server


# The sales channels (client side in connectors/, stand-ins in sandbox/). Each fixture
# yields the channel's state and its server; point an adapter at server.url (Shopify:
# sandbox.shopify.graphql_url(server.url)); faults go through PUT /_sandbox/faults.
CHANNEL_WEBHOOK_SECRET = "sandbox-channel-webhook-secret"


@pytest.fixture
def shopify_channel() -> Iterator[tuple[ShopifyState, SandboxServer]]:
    """A sandbox Shopify (no access token required, location gid://shopify/Location/1,
    a standard plan's cost bucket; SKUs listed on first use)."""
    state = ShopifyState()
    with SandboxServer(create_shopify_app(state)) as server:
        yield state, server


@pytest.fixture
def amazon_channel() -> Iterator[tuple[AmazonState, SandboxServer]]:
    """A sandbox Amazon Listings Items API (any seller and marketplace, no access token
    required, patch 5 requests/s burst 5; SKUs listed on first use)."""
    state = AmazonState()
    with SandboxServer(create_amazon_app(state)) as server:
        yield state, server


@pytest.fixture
def webhook_channel() -> Iterator[tuple[WebhookReceiverState, SandboxServer]]:
    """A sandbox webhook receiver checking signatures with CHANNEL_WEBHOOK_SECRET
    (``state.secret``); it takes POSTs on any path."""
    state = WebhookReceiverState(CHANNEL_WEBHOOK_SECRET)
    with SandboxServer(create_receiver_app(state)) as server:
        yield state, server


@pytest.fixture
async def erp(admin_url: str) -> AsyncIterator[ErpSandbox]:
    """A sandbox ERP: a database of its own on the test PostgreSQL, dropped afterwards."""
    url = await create_erp(admin_url, f"sk_erp_{SUITE}_{uuid.uuid4().hex[:8]}")
    try:
        yield ErpSandbox(url)
    finally:
        await drop_erp(admin_url, url)
