"""Propagation end to end: ``stockkeeper run dispatcher`` and ``run propagator`` as real
processes on PostgreSQL and RabbitMQ, pushing to the sandbox channels over HTTP.

Changes are made by the real use cases (receipts, reservations, releases, each its own
transaction with its ledger rows and outbox events) from the test process, on the same
database the children use.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.connectors.signatures import generic_headers
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.errors import InsufficientStock
from stockkeeper.domain.events import LEVEL_CHANGED
from stockkeeper.messaging.broker import OutgoingMessage
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, Envelope
from stockkeeper.messaging.rabbitmq import RabbitMQBroker
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from stockkeeper.store import stock
from stockkeeper.store.pool import Conn
from stockkeeper_sandbox.channel_book import ChannelBook
from stockkeeper_sandbox.channel_webhook import WebhookReceiverState
from stockkeeper_sandbox.channel_webhook import create_app as create_receiver_app
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.support import base_config, free_port

pytestmark = pytest.mark.slow

SECRET_ENV = "SK_E2E_CHANNEL_SECRET"
SECRET = "e2e-channel-secret-0123456789"
LOCATION = "gid://shopify/Location/1"


# -- the rig ---------------------------------------------------------------------------


def webhook_cfg(channel_id: str, server: SandboxServer, **extra: Any) -> dict[str, Any]:
    return {
        "id": channel_id,
        "type": "outbound_webhook",
        "url": f"{server.url}/levels",
        "secret_env": SECRET_ENV,
        "batch_size": 20,
        "concurrency": 4,
        "rate_limit_rps": 200,
        "timeout_ms": 2000,
        "max_attempts": 2,
        "backoff_base_ms": 50,
        "backoff_max_ms": 500,
        **extra,
    }


def shopify_cfg(server: SandboxServer, **extra: Any) -> dict[str, Any]:
    return {
        "id": "shopify-main",
        "type": "shopify",
        "url": graphql_url(server.url),
        "location_id": LOCATION,
        "batch_size": 50,
        "concurrency": 4,
        "rate_limit_rps": 100,
        "timeout_ms": 3000,
        **extra,
    }


def settings_for(
    db_url: str,
    rabbit_url: str,
    prefix: str,
    connectors: list[Any],
    *,
    lag_alert_ms: int = 5000,
) -> dict[str, Any]:
    return base_config(
        db_url,
        broker={"url": rabbit_url, "prefix": prefix, "retry_base_ms": 100, "retry_max_ms": 1000},
        connectors=connectors,
        propagation={"backoff_base_ms": 200, "backoff_max_ms": 2000, "max_attempts": 1000},
        monitoring={
            "lag_check_interval_s": 1,
            "lag_window_s": 20,
            "p99_lag_alert_ms": lag_alert_ms,
        },
    )


def start(children: Children, cfg: dict[str, Any], service: str) -> Child:
    """``stockkeeper run <service>`` with the channels' secret in its environment."""
    child = Child(
        ["run", service], cfg, children.workdir, label=service, extra_env={SECRET_ENV: SECRET}
    )
    children.all.append(child)
    return child.start()


def start_pipeline(children: Children, cfg: dict[str, Any]) -> Child:
    """The dispatcher and the propagator, as production runs them; the propagator."""
    start(children, cfg, "dispatcher")
    return start(children, cfg, "propagator")


@dataclass
class Shop:
    """Our side: the real use cases on the test database, and our levels."""

    c: Container

    # Orders held, by SKU: a release gives back one of them.
    held: dict[str, list[str]] = field(default_factory=dict)

    async def receive(self, sku: str, quantity: int, conn: Conn | None = None) -> None:
        receipt = Receipt(sku, quantity, reference_id=f"r-{uuid.uuid4().hex}")
        await self.c.stock.receive(receipt, conn)

    async def reserve(self, sku: str, quantity: int = 1, conn: Conn | None = None) -> str | None:
        order = f"o-{uuid.uuid4().hex}"
        try:
            await self.c.reservations.reserve(
                ReserveRequest(order, (OrderLine(sku, quantity),), ttl_seconds=3600), conn
            )
        except InsufficientStock:
            return None
        return order

    async def change_many(self, skus: Sequence[str], rng: random.Random) -> int:
        """One change to each of ``skus`` (a receipt, a reservation or a release), all in
        one transaction: as many level changes, fewer commits. The SKUs go in name order,
        the global lock order, so concurrent calls cannot deadlock."""
        done = 0
        reserved: list[tuple[str, str]] = []
        async with self.c.pool.acquire() as conn, conn.transaction():
            for sku in sorted(set(skus)):
                roll = rng.random()
                if roll < 0.55:
                    await self.receive(sku, rng.randint(1, 3), conn)
                    done += 1
                elif roll < 0.8 or not self.held.get(sku):
                    order = await self.reserve(sku, 1, conn)
                    if order is not None:
                        reserved.append((sku, order))
                        done += 1
                else:
                    orders = self.held[sku]
                    await self.c.reservations.release(
                        orders.pop(rng.randrange(len(orders))), conn=conn
                    )
                    done += 1
        for sku, order in reserved:  # committed: others may release them now
            self.held.setdefault(sku, []).append(order)
        return done

    async def available(self, skus: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(available, version) per SKU, as it stands."""
        async with self.c.pool.acquire() as conn:
            levels = await stock.sku_levels(conn, skus, datetime.now(UTC))
        return {s: (lv.level.available, lv.version) for s, lv in levels.items()}


@pytest.fixture
async def shop(db_url: str) -> AsyncIterator[Shop]:
    c = await build(Settings.model_validate(base_config(db_url)))
    yield Shop(c)
    await c.close()


@pytest.fixture
def receivers() -> Iterator[list[tuple[WebhookReceiverState, SandboxServer]]]:
    """Two webhook receivers (two channels), verifying our signature."""
    states = [WebhookReceiverState(secret=SECRET) for _ in range(2)]
    with (
        SandboxServer(create_receiver_app(states[0])) as first,
        SandboxServer(create_receiver_app(states[1])) as second,
    ):
        yield [(states[0], first), (states[1], second)]


def in_sync(book: ChannelBook, ours: dict[str, tuple[int, int]]) -> Callable[[], Awaitable[bool]]:
    """A check for ``wait_until``: the channel shows our availability of every SKU."""

    async def check() -> bool:
        shown = book.levels()
        return all(shown.get(sku) == qty for sku, (qty, _) in ours.items())

    return check


def diff(book: ChannelBook, ours: dict[str, tuple[int, int]]) -> Callable[[], Awaitable[str]]:
    """What ``wait_until`` reports when a channel never got there."""

    async def detail() -> str:
        shown = book.levels()
        wrong = {s: (q, shown.get(s)) for s, (q, _) in ours.items() if shown.get(s) != q}
        return f"{len(wrong)} SKUs differ (ours, channel), e.g. {dict(list(wrong.items())[:5])}"

    return detail


def shows(book: ChannelBook, sku: str, quantity: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return book.level(sku) == quantity

    return check


async def lag_rows(db_url: str, channel: str, since: datetime, until: datetime) -> list[float]:
    """The lag of every push of ``channel`` acknowledged between ``since`` and ``until``."""
    conn = await asyncpg.connect(db_url)
    try:
        rows = await conn.fetch(
            "SELECT lag_ms FROM channel_push WHERE channel = $1 AND acked_at BETWEEN $2 AND $3",
            channel,
            since,
            until,
        )
    finally:
        await conn.close()
    return [r["lag_ms"] for r in rows]


def p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.99 + 0.999999) - 1)]


# -- the tests -------------------------------------------------------------------------


async def test_ten_thousand_changes_reach_three_channels_exactly_one_throttling_hard(
    db_url: str,
    rabbit_url: str,
    broker_prefix: str,
    tmp_path: Path,
    shop: Shop,
    shopify_channel: tuple[ShopifyState, SandboxServer],
    receivers: list[tuple[WebhookReceiverState, SandboxServer]],
) -> None:
    shopify_state, shopify_server = shopify_channel
    # Hard throttling: a tenth of Shopify's bucket. Every look-up of 50 items costs 52
    # points, every mutation 10; the bucket refills 50 points a second.
    shopify_state.configure_bucket(200, 50)
    (hooks_a, server_a), (hooks_b, server_b) = receivers
    connectors = [
        shopify_cfg(shopify_server),
        webhook_cfg("hooks-a", server_a),
        webhook_cfg("hooks-b", server_b),
    ]
    cfg = settings_for(db_url, rabbit_url, broker_prefix, connectors)
    skus = [f"SKU-{i:04d}" for i in range(500)]
    rng = random.Random(6)
    with Children(tmp_path) as children:
        start_pipeline(children, cfg)
        changes = 0
        for sku in skus:
            await shop.receive(sku, rng.randint(5, 20))
            changes += 1
        while changes < 10_000:
            # Four transactions at a time, each changing up to ten SKUs.
            picks = [rng.sample(skus, min(10, 10_000 - changes)) for _ in range(4)]
            done = await asyncio.gather(*(shop.change_many(p, rng) for p in picks))
            changes += sum(done)
        ours = await shop.available(skus)
        books = {"shopify-main": shopify_state, "hooks-a": hooks_a, "hooks-b": hooks_b}
        for name, book in books.items():
            await wait_until(
                in_sync(book, ours),
                timeout=180,
                what=f"{name} to show every SKU's final availability",
                children=children,
                interval=0.5,
                detail=diff(book, ours),
            )
    # The bucket was the limit: at some point less than two mutations' worth was left.
    # (We pace ourselves on it, so Shopify rarely has to answer THROTTLED.)
    assert shopify_state.low_water() < 20, shopify_state.low_water()
    # The webhook wire carries versions: on no SKU did an older one follow a newer one.
    # (The last one told may be older than our final version: changes after it that
    # left the figure as it was needed no push.)
    for book in (hooks_a, hooks_b):
        for sku, (_, version) in ours.items():
            told = [c.version for c in book.history(sku) if c.source == "push"]
            assert told == sorted(set(told)), (sku, told)
            assert told[-1] is not None
            assert told[-1] <= version, (sku, told[-1], version)
    conn = await asyncpg.connect(db_url)
    try:
        dead = await conn.fetchval("SELECT count(*) FROM dead_letter")
        pushes, carried = await conn.fetchrow(
            "SELECT count(*), sum(changes) FROM channel_push WHERE channel = 'hooks-a'"
        )
    finally:
        await conn.close()
    assert dead == 0
    assert carried > pushes, "no change was coalesced"


async def test_a_channel_down_for_a_minute_holds_back_no_other_and_then_catches_up(
    db_url: str,
    rabbit_url: str,
    broker_prefix: str,
    tmp_path: Path,
    shop: Shop,
    shopify_channel: tuple[ShopifyState, SandboxServer],
    receivers: list[tuple[WebhookReceiverState, SandboxServer]],
) -> None:
    shopify_state, shopify_server = shopify_channel
    (up, up_server), (down, down_server) = receivers
    connectors = [
        shopify_cfg(shopify_server),
        webhook_cfg("hooks-up", up_server),
        webhook_cfg("hooks-down", down_server),
    ]
    # The alert threshold and the others' bound are a third of the outage: a channel held
    # up by the one that is down would wait for all of it (60 s), while one that is not
    # stays far under it however loaded the machine running the suite is.
    outage_s = 60.0
    bound_ms = int(outage_s * 1000 / 3)
    cfg = settings_for(db_url, rabbit_url, broker_prefix, connectors, lag_alert_ms=bound_ms)
    skus = [f"SKU-{i:02d}" for i in range(40)]
    rng = random.Random(60)
    with Children(tmp_path) as children:
        propagator = start_pipeline(children, cfg)
        for sku in skus:
            await shop.receive(sku, 50)
        ours = await shop.available(skus)
        await wait_until(in_sync(down, ours), timeout=60, what="the first sync")

        async def trickle(seconds: float) -> None:
            """About 20 changes a second, spread over the SKUs."""
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                sku = rng.choice(skus)
                if rng.random() < 0.5:
                    await shop.receive(sku, 1)
                else:
                    await shop.reserve(sku)
                await asyncio.sleep(0.05)

        down_server.stop()
        outage_start = datetime.now(UTC)
        await trickle(outage_s)
        outage_end = datetime.now(UTC)
        down_server.start()
        ours = await shop.available(skus)
        for name, book in (("shopify-main", shopify_state), ("hooks-up", up)):
            await wait_until(in_sync(book, ours), timeout=30, what=name, detail=diff(book, ours))
        await wait_until(
            in_sync(down, ours),
            timeout=60,
            what="the channel that was down to catch up",
            children=children,
            interval=0.5,
            detail=diff(down, ours),
        )
        assert propagator.logged("sync.lag_alert"), "the down channel's lag raised no alert"
        metrics = propagator.metrics()
    alerts = {
        dict(labels)["channel"]: value
        for (name, labels), value in metrics.items()
        if name == "stockkeeper_sync_lag_alerts_total"
    }
    assert alerts.get("hooks-down", 0) >= 1
    # The others kept up while it was down: no alert, and their p99 lag over the outage
    # stayed under the bound.
    assert alerts.get("hooks-up", 0) == 0, alerts
    assert alerts.get("shopify-main", 0) == 0, alerts
    for channel in ("hooks-up", "shopify-main"):
        during = await lag_rows(db_url, channel, outage_start, outage_end)
        assert len(during) > 100, (channel, len(during))
        assert p99(during) < bound_ms, (channel, p99(during))


async def test_a_change_from_a_channel_is_not_pushed_back_to_it(
    db_url: str,
    rabbit_url: str,
    broker_prefix: str,
    tmp_path: Path,
    shop: Shop,
    shopify_channel: tuple[ShopifyState, SandboxServer],
    receivers: list[tuple[WebhookReceiverState, SandboxServer]],
) -> None:
    """A sale on Shopify arrives through its order webhook; every other channel hears of
    it, Shopify is not told what it already knows."""
    shopify_state, shopify_server = shopify_channel
    (hooks_a, server_a), (hooks_b, server_b) = receivers
    connectors = [
        {"id": "shopify-orders", "type": "webhook", "secret_env": SECRET_ENV},
        shopify_cfg(shopify_server, echo_sources=["shopify-orders"]),
        webhook_cfg("hooks-a", server_a),
        webhook_cfg("hooks-b", server_b),
    ]
    cfg = settings_for(db_url, rabbit_url, broker_prefix, connectors)
    port = free_port()
    cfg["api"] = {**cfg["api"], "inventory_port": port, "admin_port": free_port()}
    with Children(tmp_path) as children:
        start_pipeline(children, cfg)
        for name in ("ingest", "inventory-api"):
            child = Child(["run", name], cfg, tmp_path, label=name, extra_env={SECRET_ENV: SECRET})
            children.all.append(child)
            child.start()
        for sku in ("TEE-1", "TEE-2"):
            await shop.receive(sku, 10)
        ours = await shop.available(["TEE-1", "TEE-2"])
        for book in (shopify_state, hooks_a, hooks_b):
            await wait_until(in_sync(book, ours), timeout=30, what="sync", children=children)
        told_before = len(shopify_state.pushed("TEE-1"))
        # Shopify sells 3: its own level drops, and its order webhook tells us.
        shopify_state.sell("TEE-1", 3)
        body = orjson.dumps(
            {
                "event_id": "evt-1",
                "levels": [],
                "sales": [{"transaction_id": "shopify-order-1", "sku": "TEE-1", "delta": -3}],
            }
        )
        await wait_until(api_ready(port), timeout=30, what="inventory-api", children=children)
        resp = httpx.post(
            f"http://127.0.0.1:{port}/webhooks/shopify-orders",
            content=body,
            headers={
                **generic_headers(SECRET.encode(), body, int(time.time())),
                "Content-Type": "application/json",
            },
        )
        assert resp.status_code == 202, resp.text

        async def sale_booked() -> bool:
            return (await shop.available(["TEE-1"]))["TEE-1"][0] == 7

        await wait_until(sale_booked, timeout=30, what="the sale to be booked", children=children)
        ours = await shop.available(["TEE-1", "TEE-2"])
        for book in (hooks_a, hooks_b):
            await wait_until(in_sync(book, ours), timeout=30, what="others", children=children)
        # Then a change of ours (a receipt) reaches Shopify too: the pipeline to it works,
        # and nothing about the sale was sent to it in between.
        await shop.receive("TEE-2", 1)
        ours = await shop.available(["TEE-1", "TEE-2"])
        await wait_until(in_sync(shopify_state, ours), timeout=30, what="shopify")
    assert len(shopify_state.pushed("TEE-1")) == told_before
    assert shopify_state.level("TEE-1") == 7


def api_ready(port: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        async with httpx.AsyncClient() as http:
            try:
                return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

    return check


async def test_a_stale_version_never_overwrites_a_newer_one_on_a_channel(
    db_url: str,
    rabbit_url: str,
    broker_prefix: str,
    tmp_path: Path,
    shop: Shop,
    receivers: list[tuple[WebhookReceiverState, SandboxServer]],
) -> None:
    """Level changes delivered out of order (a retry or a replay of an old message after
    a newer one) leave the channel at the newest version."""
    (hooks, server), _ = receivers
    cfg = settings_for(db_url, rabbit_url, broker_prefix, [webhook_cfg("hooks", server)])
    await shop.receive("MUG-1", 10)
    ours = await shop.available(["MUG-1"])
    qty, version = ours["MUG-1"]
    broker = RabbitMQBroker(rabbit_url, prefix=broker_prefix)
    with Children(tmp_path) as children:
        start_pipeline(children, cfg)
        await wait_until(in_sync(hooks, ours), timeout=30, what="the first push", children=children)
        await broker.connect()
        try:

            def level(v: int, available: int) -> OutgoingMessage:
                env = Envelope.new(
                    LEVEL_CHANGED,
                    {"sku": "MUG-1", "version": v, "available": available},
                    occurred_at=datetime.now(UTC),
                    sku="MUG-1",
                    source="test",
                )
                return OutgoingMessage(
                    "", LEVEL_CHANGED, env.to_bytes(), str(env.id), {ATTEMPT_HEADER: 1}
                )

            # Version +2 (4 units) first, then the late version +1 (99 units).
            await broker.send_to_queue("channel.propagation", level(version + 2, 4))
            await wait_until(shows(hooks, "MUG-1", 4), timeout=30, what="version +2")
            await broker.send_to_queue("channel.propagation", level(version + 1, 99))
            await broker.send_to_queue("channel.propagation", level(version, qty))
            # A newer one after them shows the stale ones were consumed (in order).
            await broker.send_to_queue("channel.propagation", level(version + 3, 5))
            await wait_until(shows(hooks, "MUG-1", 5), timeout=30, what="version +3")
        finally:
            await broker.close()
    told = [(c.version, c.quantity) for c in hooks.history("MUG-1") if c.source == "push"]
    assert told == [(version, qty), (version + 2, 4), (version + 3, 5)]
