"""Propagation on a real database: per channel sync state written by the consumer's
effect, claims, acknowledgements, coalescing, echo suppression, stale versions,
retries, dead letters and their replay, and the lag alert."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from stockkeeper.api.admin import create_admin_app
from stockkeeper.bootstrap import Container, build
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.connectors.channel_registry import make_channel
from stockkeeper.connectors.channels import ChannelAdapter, Fence, Push, PushOutcome
from stockkeeper.domain.events import LEVEL_CHANGED
from stockkeeper.domain.propagation import AlertChange, Verdict
from stockkeeper.messaging.consumer import PermanentError
from stockkeeper.messaging.envelope import Envelope
from stockkeeper.services.propagation import LAG_ALERT, REARM, Propagation
from stockkeeper.services.stock import Receipt
from stockkeeper.store.channel_sync import Claimed
from stockkeeper.workers.propagator import Propagator
from stockkeeper_sandbox.amazon import AmazonState
from stockkeeper_sandbox.server import SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from tests.conftest import FakeClock
from tests.support import ADMIN_TOKEN, auth, shopify_sandbox_channel

A, B = "shop-a", "shop-b"
SECRET_ENV = "SK_TEST_CHANNEL_SECRET"


@pytest.fixture
async def c(
    config: dict[str, Any], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Container]:
    monkeypatch.setenv(SECRET_ENV, "s3cret-for-tests")
    config["connectors"] = [
        {"id": "a-orders", "type": "webhook", "secret_env": SECRET_ENV},
        {
            "id": A,
            "type": "outbound_webhook",
            "url": "http://127.0.0.1:9/a",
            "secret_env": SECRET_ENV,
            "echo_sources": ["a-orders"],
        },
        {
            "id": B,
            "type": "outbound_webhook",
            "url": "http://127.0.0.1:9/b",
            "secret_env": SECRET_ENV,
        },
    ]
    config["propagation"] = {"max_attempts": 3, "backoff_base_ms": 1000, "backoff_max_ms": 4000}
    config["monitoring"] = {"p99_lag_alert_ms": 1000, "lag_window_s": 60}
    container = await build(Settings.model_validate(config), clock=clock)
    yield container
    await container.close()


def at(seconds: float = 0.0) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


async def record(
    p: Propagation, sku: str, version: int, available: int, source: str | None = "api"
) -> dict[str, Verdict]:
    async with p.pool.acquire() as conn, conn.transaction():
        return await p.record(conn, sku, version, available, at(), source)


async def state(c: Container, channel: str, sku: str) -> dict[str, Any]:
    async with c.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT * FROM channel_sync_state WHERE channel = $1 AND sku = $2", channel, sku
        )
    assert row is not None
    return dict(row)


def put_faults(server: SandboxServer, **faults: Any) -> None:
    httpx.put(f"{server.url}/_sandbox/faults", json=faults, timeout=5).raise_for_status()


def ok(claimed: list[Claimed]) -> list[PushOutcome]:
    return [PushOutcome(x.sku, "ok", x.quantity) for x in claimed]


async def test_a_new_level_is_due_on_every_channel_and_settles_with_its_lag(c: Container) -> None:
    p = c.propagation
    assert await record(p, "SKU-1", 1, 7) == {A: Verdict.PUSH, B: Verdict.PUSH}
    for ch in (A, B):
        claimed = await p.claim(ch, 10)
        assert [(x.sku, x.version, x.quantity, x.previous) for x in claimed] == [
            ("SKU-1", 1, 7, None)
        ]
        assert await p.claim(ch, 10) == []  # leased: no second sender gets it
        done = await p.settle(ch, claimed, ok(claimed))
        assert done.pushed == 1
        assert done.lags_ms[0] >= 0
    row = await state(c, A, "SKU-1")
    assert (row["status"], row["pushed_version"], row["pushed_quantity"]) == ("SYNCED", 1, 7)
    async with c.pool.acquire() as conn:
        pushes = await conn.fetch("SELECT channel, version, quantity, changes FROM channel_push")
    assert sorted(tuple(r) for r in pushes) == [(A, 1, 7, 1), (B, 1, 7, 1)]


async def test_changes_waiting_for_a_push_travel_as_one(c: Container) -> None:
    p = c.propagation
    for version, qty in [(1, 9), (2, 8), (3, 6)]:
        await record(p, "SKU-1", version, qty)
    claimed = await p.claim(A, 10)
    assert [(x.version, x.quantity) for x in claimed] == [(3, 6)]
    await p.settle(A, claimed, ok(claimed))
    async with c.pool.acquire() as conn:
        changes = await conn.fetchval("SELECT changes FROM channel_push WHERE channel = $1", A)
    assert changes == 3
    assert c.metrics.channel_coalesced.labels(channel=A)._value.get() == 2


async def test_an_older_version_never_replaces_a_newer_one(c: Container) -> None:
    p = c.propagation
    await record(p, "SKU-1", 5, 3)
    assert await record(p, "SKU-1", 4, 10) == {A: Verdict.STALE, B: Verdict.STALE}
    assert await record(p, "SKU-1", 5, 10) == {A: Verdict.STALE, B: Verdict.STALE}
    claimed = await p.claim(A, 10)
    assert [(x.version, x.quantity) for x in claimed] == [(5, 3)]


async def test_a_change_arriving_during_a_push_is_pushed_after_it(c: Container) -> None:
    p = c.propagation
    await record(p, "SKU-1", 1, 9)
    first = await p.claim(A, 10)
    await record(p, "SKU-1", 2, 4)  # while version 1 is on its way
    assert await p.claim(A, 10) == []
    await p.settle(A, first, ok(first))
    row = await state(c, A, "SKU-1")
    assert (row["status"], row["pushed_version"], row["desired_version"]) == ("PENDING", 1, 2)
    assert row["pending_since"] is not None
    second = await p.claim(A, 10)
    assert [(x.version, x.quantity, x.previous) for x in second] == [(2, 4, 9)]


async def test_the_channels_own_change_is_not_pushed_back_to_it(c: Container) -> None:
    p = c.propagation
    await record(p, "SKU-1", 1, 10)
    for ch in (A, B):
        claimed = await p.claim(ch, 10)
        await p.settle(ch, claimed, ok(claimed))
    # A sale on channel A arrives through its webhook connector "a-orders".
    verdicts = await record(p, "SKU-1", 2, 9, source="a-orders")
    assert verdicts == {A: Verdict.ECHO, B: Verdict.PUSH}
    assert await p.claim(A, 10) == []
    row = await state(c, A, "SKU-1")
    assert (row["status"], row["pushed_version"], row["pushed_quantity"]) == ("SYNCED", 2, 9)
    assert [(x.version, x.quantity) for x in await p.claim(B, 10)] == [(2, 9)]


async def test_a_change_that_leaves_availability_alone_needs_no_push(c: Container) -> None:
    p = c.propagation
    await record(p, "SKU-1", 1, 10)
    claimed = await p.claim(A, 10)
    await p.settle(A, claimed, ok(claimed))
    assert (await record(p, "SKU-1", 2, 10))[A] is Verdict.NOOP
    assert await p.claim(A, 10) == []
    assert (await state(c, A, "SKU-1"))["pushed_version"] == 2


async def test_a_failing_channel_backs_off_then_dead_letters_and_a_replay_rearms(
    c: Container,
) -> None:
    p = c.propagation
    await record(p, "SKU-1", 1, 5)
    for attempt in (1, 2):
        claimed = await p.claim(A, 10)
        assert [x.attempts for x in claimed] == [attempt]
        done = await p.failed(A, claimed, "503 from the channel")
        assert done.retried == 1
        row = await state(c, A, "SKU-1")
        wait = (row["next_attempt_at"] - datetime.now(UTC)).total_seconds()
        assert 0.5 * attempt < wait <= 1.0 * 2 ** (attempt - 1) + 0.5
        assert await p.claim(A, 10) == []  # backing off
        async with c.pool.acquire() as conn:
            await conn.execute("UPDATE channel_sync_state SET next_attempt_at = now()")
    claimed = await p.claim(A, 10)
    done = await p.failed(A, claimed, "503 from the channel")
    assert done.dead == 1
    assert (await state(c, A, "SKU-1"))["status"] == "DEAD"
    assert await p.claim(A, 10) == []
    async with c.pool.acquire() as conn:
        dl = await conn.fetchrow("SELECT * FROM dead_letter WHERE queue = 'channel.propagation'")
    assert dl is not None
    assert dl["routing_key"] == REARM
    assert "after 3 attempts" in dl["error"]
    assert dl["body"]["payload"] == {"channel": A, "skus": ["SKU-1"]}
    # The replay comes back through the consumer as the rearm message.
    handle = Propagator(p, {}, c.pool).handler()
    async with c.pool.acquire() as conn, conn.transaction():
        await handle(conn, Envelope.model_validate(dl["body"]))
    again = await p.claim(A, 10)
    assert [(x.sku, x.attempts) for x in again] == [("SKU-1", 1)]
    # B never failed: it was never held up.
    assert [x.sku for x in await p.claim(B, 10)] == ["SKU-1"]


async def test_a_last_failure_booked_twice_is_one_dead_letter(c: Container) -> None:
    """A booking tried again (its connection was lost after the commit, D-438) finds the
    claim no longer held and dead-letters nothing more."""
    p = c.propagation
    await record(p, "SKU-1", 1, 5)
    async with c.pool.acquire() as conn:
        await conn.execute("UPDATE channel_sync_state SET attempts = 2 WHERE channel = $1", A)
    claimed = await p.claim(A, 10)
    assert [x.attempts for x in claimed] == [3]
    for _ in range(2):
        await p.failed(A, claimed, "503 from the channel")
    assert (await state(c, A, "SKU-1"))["status"] == "DEAD"
    async with c.pool.acquire() as conn:
        letters = await conn.fetchval(
            "SELECT count(*) FROM dead_letter WHERE queue = 'channel.propagation'"
        )
    assert letters == 1


async def test_a_refused_item_is_dead_lettered_and_an_unlisted_one_waits(c: Container) -> None:
    p = c.propagation
    await record(p, "SKU-1", 1, 5)
    await record(p, "SKU-2", 1, 6)
    claimed = await p.claim(A, 10)
    outcomes = [
        PushOutcome("SKU-1", "rejected", error="quantity too large"),
        PushOutcome("SKU-2", "unlisted"),
    ]
    done = await p.settle(A, claimed, outcomes)
    assert (done.dead, done.unlisted) == (1, 1)
    assert (await state(c, A, "SKU-1"))["status"] == "DEAD"
    assert (await state(c, A, "SKU-2"))["status"] == "UNLISTED"
    assert (await record(p, "SKU-2", 2, 3))[A] is Verdict.HELD
    assert await p.claim(A, 10) == []


async def test_a_bad_level_message_is_a_permanent_error(c: Container) -> None:
    handle = Propagator(c.propagation, {}, c.pool).handler()
    bad = Envelope.new(
        LEVEL_CHANGED, {"sku": "SKU-1", "version": 0, "available": -1}, occurred_at=at()
    )
    async with c.pool.acquire() as conn, conn.transaction():
        with pytest.raises(PermanentError, match="version"):
            await handle(conn, bad)
    rearm = Envelope.new(REARM, {"channel": "nowhere", "skus": ["X"]}, occurred_at=at())
    async with c.pool.acquire() as conn, conn.transaction():
        with pytest.raises(PermanentError, match="no channel"):
            await handle(conn, rearm)


async def test_the_lag_alert_fires_once_with_an_event_and_recovers(c: Container) -> None:
    p = c.propagation
    # A change committed 3 s ago that channel A has not acknowledged: its lag so far
    # counts, so a channel that is down shows its lag growing.
    async with c.pool.acquire() as conn, conn.transaction():
        await p.record(conn, "SKU-1", 1, 4, at(3.0), "api")
    changes = await p.check_lag()
    assert changes == {A: AlertChange.FIRE, B: AlertChange.FIRE}
    assert await p.check_lag() == {A: None, B: None}  # one episode, one alert
    async with c.pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT payload FROM domain_event WHERE event_type = $1 ORDER BY id", LAG_ALERT
        )
    assert [e["payload"]["channel"] for e in events] == [A, B]
    assert events[0]["payload"]["p99_ms"] > 1000
    assert c.metrics.sync_lag_alerts.labels(channel=A)._value.get() == 1
    status = await p.status()
    assert status[A].alerting is True
    assert status[A].pending == 1
    # The channels catch up; the window keeps the late push, then it ages out.
    for ch in (A, B):
        claimed = await p.claim(ch, 10)
        await p.settle(ch, claimed, ok(claimed))
    async with c.pool.acquire() as conn:
        await conn.execute("UPDATE channel_push SET acked_at = now() - interval '2 minutes'")
    assert await p.check_lag() == {A: AlertChange.RECOVER, B: AlertChange.RECOVER}
    assert (await p.status())[A].alerting is False


# -- against the sandbox channels over TCP ---------------------------------------------


@pytest.fixture
async def rig(
    config: dict[str, Any],
    clock: FakeClock,
    shopify_channel: tuple[ShopifyState, SandboxServer],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> AsyncIterator[tuple[Container, Propagator]]:
    """Shopify and Amazon channels on their sandboxes, and the propagator's adapters."""
    config["connectors"] = [
        {
            "id": "shopify-main",
            "type": "shopify",
            "url": graphql_url(shopify_channel[1].url),
            "location_id": "gid://shopify/Location/1",
        },
        {
            "id": "amazon-eu",
            "type": "amazon",
            "url": amazon_channel[1].url,
            "seller_id": "A1SELLER",
            "marketplace_ids": ["A1PA6795UKMFR9"],
        },
    ]
    c = await build(Settings.model_validate(config), clock=clock)
    adapters = {
        cfg.id: make_channel(cfg, token=None) for cfg in c.settings.connectors_of(ChannelConfig)
    }
    yield c, Propagator(c.propagation, adapters, c.pool)
    for adapter in adapters.values():
        await adapter.aclose()
    await c.close()


async def sync_all(c: Container, worker: Propagator) -> None:
    """Record every level change in the outbox and push until nothing is due."""
    await record_all(c, worker)
    for channel in worker.adapters:
        while await worker.push_once(channel):
            pass


async def record_all(c: Container, worker: Propagator) -> None:
    """Record every level change in the outbox, as the consumer does."""
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT payload, occurred_at, source FROM domain_event WHERE event_type = $1 "
            "ORDER BY id",
            LEVEL_CHANGED,
        )
    handle = worker.handler()
    for r in rows:
        env = Envelope.new(
            LEVEL_CHANGED, r["payload"], occurred_at=r["occurred_at"], source=r["source"]
        )
        async with c.pool.acquire() as conn, conn.transaction():
            await handle(conn, env)


async def test_a_refused_batch_is_split_and_a_channel_that_is_down_backs_off(
    rig: tuple[Container, Propagator],
    shopify_channel: tuple[ShopifyState, SandboxServer],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> None:
    c, worker = rig
    p = c.propagation
    for sku in ("TEE-1", "TEE-2"):
        await c.stock.receive(Receipt(sku, 3, f"r-{sku}"))
    await record_all(c, worker)
    # Shopify refuses every call: the batch of two is tried one by one, each dead-lettered.
    put_faults(shopify_channel[1], error_rate=1.0, error_status=400)
    claimed = await p.claim("shopify-main", 10)
    assert len(claimed) == 2
    done = await p.push_claimed(worker.adapters["shopify-main"], claimed)
    assert (done.pushed, done.dead, done.retried) == (0, 2, 0)
    assert shopify_channel[0].counters().get("mutations", 0) == 0
    # Amazon is down: the pushes are due again after the backoff, not at once.
    amazon_channel[1].stop()
    claimed = await p.claim("amazon-eu", 10)
    done = await p.push_claimed(worker.adapters["amazon-eu"], claimed)
    assert (done.pushed, done.dead, done.retried) == (0, 0, 2)
    assert await p.claim("amazon-eu", 10) == []  # backing off
    status = await p.status()
    assert status["amazon-eu"].pending == 2
    assert status["shopify-main"].dead == 2


async def test_drift_repair_finds_what_a_channel_shows_wrongly_and_pushes_ours(
    rig: tuple[Container, Propagator],
    shopify_channel: tuple[ShopifyState, SandboxServer],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> None:
    c, worker = rig
    shopify, amazon = shopify_channel[0], amazon_channel[0]
    for sku, qty in [("TEE-1", 10), ("TEE-2", 4), ("TEE-3", 6)]:
        await c.stock.receive(Receipt(sku, qty, f"r-{sku}"))
    await sync_all(c, worker)
    for book in (shopify, amazon):
        assert book.levels() == {"TEE-1": 10, "TEE-2": 4, "TEE-3": 6}
    # Someone edits the channels behind our back; Amazon also stops listing TEE-3.
    shopify.set_level("TEE-1", 25)
    amazon.set_level("TEE-2", 0)
    amazon.unlist_skus(["TEE-3"])
    repaired = {
        ch: await c.propagation.reconcile(adapter) for ch, adapter in worker.adapters.items()
    }
    assert (repaired["shopify-main"].checked, repaired["shopify-main"].drifted) == (3, 1)
    amz = repaired["amazon-eu"]
    assert (amz.checked, amz.drifted, amz.unlisted) == (3, 1, 1)
    # The repair only marks the pushes due (with what the channel really shows as the
    # starting point); the senders push them.
    assert shopify.level("TEE-1") == 25
    for channel in worker.adapters:
        while await worker.push_once(channel):
            pass
    assert shopify.levels() == {"TEE-1": 10, "TEE-2": 4, "TEE-3": 6}
    assert amazon.levels() == {"TEE-1": 10, "TEE-2": 4}
    status = await c.propagation.status()
    assert status["shopify-main"].drift_repaired == 1
    assert status["amazon-eu"].unlisted == 1
    # Listed again: the next repair finds it and pushes it.
    amazon.list_skus(["TEE-3"], quantity=0)
    assert (await c.propagation.reconcile(worker.adapters["amazon-eu"])).drifted == 1
    while await worker.push_once("amazon-eu"):
        pass
    assert amazon.level("TEE-3") == 6


async def test_admin_status_shows_each_channels_lag_and_backlog(
    rig: tuple[Container, Propagator],
) -> None:
    c, worker = rig
    await c.stock.receive(Receipt("TEE-1", 3, "r-1"))
    await sync_all(c, worker)
    await c.stock.receive(Receipt("TEE-1", 1, "r-2"))
    async with c.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT payload, occurred_at FROM domain_event WHERE event_type = $1 "
            "ORDER BY id DESC LIMIT 1",
            LEVEL_CHANGED,
        )
    async with c.pool.acquire() as conn, conn.transaction():
        await worker.handler()(
            conn, Envelope.new(LEVEL_CHANGED, row["payload"], occurred_at=row["occurred_at"])
        )
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        doc = (await http.get("/admin/status", headers=auth(ADMIN_TOKEN))).json()
    shop = doc["channels"]["shopify-main"]
    assert shop["type"] == "shopify"
    assert shop["pending"] == 1  # the second receipt, not pushed yet
    assert shop["synced"] == 0
    assert shop["pushes_in_window"] == 1
    assert shop["lag_ms"]["samples"] == 2  # one push, one change still waiting
    assert shop["lag_ms"]["p50"] >= 0
    assert shop["lag_ms"]["p99"] >= shop["lag_ms"]["p50"]
    assert shop["alerting"] is False
    assert set(doc["channels"]) == {"shopify-main", "amazon-eu"}


async def test_the_running_propagator_is_woken_by_a_recorded_change_and_pushes_it(
    rig: tuple[Container, Propagator],
    shopify_channel: tuple[ShopifyState, SandboxServer],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> None:
    c, worker = rig
    stop = asyncio.Event()
    running = asyncio.ensure_future(worker.run(stop))
    try:
        await c.stock.receive(Receipt("TEE-1", 5, "r-1"))
        await record_all(c, worker)
        deadline = time.monotonic() + 20
        books = (shopify_channel[0], amazon_channel[0])
        while any(b.level("TEE-1") != 5 for b in books):
            assert time.monotonic() < deadline, "the running propagator pushed nothing"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)


async def expire_leases(c: Container, channel: str) -> None:
    """The leases of the channel's pushes in flight run out (their senders are slow)."""
    async with c.pool.acquire() as conn:
        await conn.execute(
            "UPDATE channel_sync_state SET leased_until = now() - interval '1 second' "
            "WHERE channel = $1 AND claimed_version IS NOT NULL",
            channel,
        )


async def test_a_push_that_outlived_its_lease_never_writes_an_older_figure_over_a_newer_one(
    rig: tuple[Container, Propagator],
    shopify_channel: tuple[ShopifyState, SandboxServer],
) -> None:
    c, worker = rig
    p, shopify, ch = c.propagation, shopify_channel[0], "shopify-main"
    await c.stock.receive(Receipt("TEE-1", 10, "r-1"))
    await sync_all(c, worker)
    assert shopify.level("TEE-1") == 10
    # A first sender claims level 15; it is slow, and its lease runs out.
    await c.stock.receive(Receipt("TEE-1", 5, "r-2"))
    await record_all(c, worker)
    slow = await p.claim(ch, 10)
    assert [(x.quantity, x.previous) for x in slow] == [(15, 10)]
    await expire_leases(c, ch)
    # Meanwhile level 18: a second sender claims it and Shopify shows it.
    await c.stock.receive(Receipt("TEE-1", 3, "r-3"))
    await record_all(c, worker)
    [cfg] = [x for x in c.settings.connectors_of(ChannelConfig) if x.id == ch]
    second = Propagator(p, {ch: make_channel(cfg, token=None)}, c.pool)
    try:
        assert await second.push_once(ch) == 1
    finally:
        await second.adapters[ch].aclose()
    assert shopify.level("TEE-1") == 18
    # The first sender's write is now stale; it re-reads 18, and its fence stops it
    # from setting 15 over it.
    done = await p.push_claimed(worker.adapters[ch], slow)
    assert (done.pushed, done.dead, done.retried) == (0, 0, 0)
    assert shopify.pushed("TEE-1") == [10, 18]
    assert shopify.level("TEE-1") == 18
    row = await state(c, ch, "TEE-1")
    assert (row["status"], row["pushed_quantity"], row["claimed_version"]) == ("SYNCED", 18, None)


class PushDuringRead:
    """A channel's real adapter, with the channel's due pushes sent between its read of
    the levels and its answer (drift repair running while pushes go out)."""

    def __init__(self, inner: ChannelAdapter, meanwhile: Callable[[], Awaitable[object]]) -> None:
        self.inner = inner
        self.meanwhile = meanwhile

    @property
    def id(self) -> str:
        return self.inner.id

    @property
    def can_read(self) -> bool:
        return self.inner.can_read

    async def push(self, items: Sequence[Push], fence: Fence | None = None) -> list[PushOutcome]:
        return await self.inner.push(items, fence)

    async def read(self, skus: Sequence[str], refs: Mapping[str, str]) -> dict[str, int | None]:
        shown = await self.inner.read(skus, refs)
        await self.meanwhile()
        return shown

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_drift_repair_never_overwrites_a_push_acknowledged_after_its_read(
    rig: tuple[Container, Propagator],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> None:
    c, worker = rig
    amazon, ch = amazon_channel[0], "amazon-eu"
    await c.stock.receive(Receipt("TEE-1", 5, "r-1"))
    await record_all(c, worker)
    # The repair reads TEE-1 before its first push (Amazon lists it on that push: not
    # listed yet); the push goes out and Amazon acknowledges 5 before the repair applies.
    racing = PushDuringRead(worker.adapters[ch], lambda: worker.push_once(ch))
    drift = await c.propagation.reconcile(racing)
    assert amazon.level("TEE-1") == 5
    assert drift.unlisted == 0
    row = await state(c, ch, "TEE-1")
    assert (row["status"], row["pushed_quantity"]) == ("SYNCED", 5)
    # And the next change reaches Amazon.
    await c.stock.receive(Receipt("TEE-1", 2, "r-2"))
    await record_all(c, worker)
    while await worker.push_once(ch):
        pass
    assert amazon.level("TEE-1") == 7


@pytest.fixture
def quick_stop(config: dict[str, Any]) -> None:
    """A stopping propagator lets pushes in flight finish for 0.2 s, not 5."""
    config.setdefault("propagation", {})["shutdown_grace_s"] = 0.2


@pytest.mark.usefixtures("quick_stop")
async def test_a_shutdown_lets_go_of_a_push_on_its_last_attempt_without_dead_lettering_it(
    rig: tuple[Container, Propagator],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> None:
    c, worker = rig
    ch, last = "amazon-eu", c.settings.propagation.max_attempts - 1
    await c.stock.receive(Receipt("TEE-1", 5, "r-1"))
    await record_all(c, worker)
    async with c.pool.acquire() as conn:  # it failed every attempt but its last
        await conn.execute(
            "UPDATE channel_sync_state SET attempts = $2 WHERE channel = $1", ch, last
        )
    put_faults(amazon_channel[1], hang=True)
    stop = asyncio.Event()
    running = asyncio.ensure_future(worker.run(stop))
    try:
        deadline = time.monotonic() + 20
        while (await state(c, ch, "TEE-1"))["claimed_version"] is None:
            assert time.monotonic() < deadline, "the push was never claimed"
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.wait_for(running, 20)
        put_faults(amazon_channel[1])
    row = await state(c, ch, "TEE-1")
    assert (row["status"], row["claimed_version"], row["attempts"]) == ("PENDING", None, last)
    async with c.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dead_letter") == 0
    # Started again (new adapters: the stopped propagator closed its own), it is pushed.
    [cfg] = [x for x in c.settings.connectors_of(ChannelConfig) if x.id == ch]
    again = Propagator(c.propagation, {ch: make_channel(cfg, token=None)}, c.pool)
    try:
        assert await again.push_once(ch) == 1
    finally:
        await again.adapters[ch].aclose()
    assert amazon_channel[0].level("TEE-1") == 5


async def test_an_unlisted_sku_is_probed_again_after_its_recheck_and_flows_once_listed(
    rig: tuple[Container, Propagator],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> None:
    c, worker = rig
    amazon, ch = amazon_channel[0], "amazon-eu"
    amazon.unlist_skus(["TEE-1"])
    await c.stock.receive(Receipt("TEE-1", 5, "r-1"))
    await sync_all(c, worker)
    assert (await state(c, ch, "TEE-1"))["status"] == "UNLISTED"
    # The operator sees it: counted per channel, listed by the admin API, in a metric.
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        doc = (await http.get("/admin/status", headers=auth(ADMIN_TOKEN))).json()
        assert doc["channels"][ch]["unlisted"] == 1
        page = await http.get(doc["channels"][ch]["unlisted_skus"], headers=auth(ADMIN_TOKEN))
        assert page.status_code == 200
        assert [i["sku"] for i in page.json()["items"]] == ["TEE-1"]
        assert page.json()["next"] is None
        missing = await http.get("/admin/channels/nowhere/unlisted", headers=auth(ADMIN_TOKEN))
        assert missing.status_code == 404
    gauge = c.metrics.registry.get_sample_value("stockkeeper_channel_unlisted", {"channel": ch})
    assert gauge == 1
    # Listed on the channel; a change within unlisted_recheck_s (an hour) does not probe.
    amazon.list_skus(["TEE-1"])
    await c.stock.receive(Receipt("TEE-1", 1, "r-2"))
    await record_all(c, worker)
    assert await worker.push_once(ch) == 0
    # Once the hour has passed, the next change probes it, and it flows again.
    async with c.pool.acquire() as conn:
        await conn.execute(
            "UPDATE channel_sync_state SET unlisted_at = now() - interval '3601 seconds' "
            "WHERE channel = $1",
            ch,
        )
    await c.stock.receive(Receipt("TEE-1", 1, "r-3"))
    await record_all(c, worker)
    while await worker.push_once(ch):
        pass
    assert amazon.level("TEE-1") == 7
    assert (await state(c, ch, "TEE-1"))["status"] == "SYNCED"


async def test_the_divergence_sample_finds_a_figure_edited_behind_our_back_and_pushes_ours(
    rig: tuple[Container, Propagator],
    shopify_channel: tuple[ShopifyState, SandboxServer],
) -> None:
    c, worker = rig
    shopify, ch = shopify_channel[0], "shopify-main"
    for sku, qty in [("TEE-1", 10), ("TEE-2", 4)]:
        await c.stock.receive(Receipt(sku, qty, f"r-{sku}"))
    await sync_all(c, worker)
    shopify.set_level("TEE-1", 25)  # someone edits the channel behind our back
    sampled = await c.propagation.sample(worker.adapters[ch])
    assert sampled is not None
    assert (sampled.checked, sampled.diverged) == (2, 1)
    assert await c.propagation.sample(worker.adapters[ch]) is None  # next one not due yet
    divergence = c.metrics.registry.get_sample_value(
        "stockkeeper_channel_divergence_total", {"channel": ch}
    )
    assert divergence == 1
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        doc = (await http.get("/admin/status", headers=auth(ADMIN_TOKEN))).json()
    assert doc["channels"][ch]["divergence_found"] == 1
    assert doc["channels"][ch]["last_sampled_at"] is not None
    # Repaired through the normal push path, from what the channel really showed.
    while await worker.push_once(ch):
        pass
    assert shopify.level("TEE-1") == 10
    assert shopify.pushed("TEE-1")[-1] == 10
    assert (await state(c, ch, "TEE-1"))["status"] == "SYNCED"


async def test_status_shows_each_channels_last_failed_push_and_when(
    rig: tuple[Container, Propagator],
    clock: FakeClock,
    shopify_channel: tuple[ShopifyState, SandboxServer],
    amazon_channel: tuple[AmazonState, SandboxServer],
) -> None:
    c, worker = rig
    p = c.propagation
    await c.stock.receive(Receipt("TEE-1", 3, "r-TEE-1"))
    await record_all(c, worker)
    transport = httpx.ASGITransport(app=create_admin_app(c))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:

        async def channels() -> dict[str, Any]:
            r = await http.get("/admin/status", headers=auth(ADMIN_TOKEN))
            assert r.status_code == 200, r.text
            shown: dict[str, Any] = r.json()["channels"]
            return shown

        assert {ch: s["last_failure"] for ch, s in (await channels()).items()} == {
            "shopify-main": None,
            "amazon-eu": None,
        }
        # Shopify refuses the push; Amazon is down.
        put_faults(shopify_channel[1], error_rate=1.0, error_status=400)
        await p.push_claimed(worker.adapters["shopify-main"], await p.claim("shopify-main", 10))
        amazon_channel[1].stop()
        await p.push_claimed(worker.adapters["amazon-eu"], await p.claim("amazon-eu", 10))
        failed = await channels()
        shopify, amazon = (
            failed["shopify-main"]["last_failure"],
            failed["amazon-eu"]["last_failure"],
        )
        assert "refused TEE-1" in shopify["message"], shopify
        assert shopify["at"] == clock().isoformat()
        assert amazon is not None
        assert amazon["at"] == clock().isoformat()


async def test_an_item_made_again_under_its_sku_reads_back_listed(
    config: dict[str, Any], clock: Any, shopify_channel: Any
) -> None:
    """D-486: the merchant deletes a Shopify product and makes it again under the same
    SKU (a new inventory item). A push looks an unknown item up again; drift repair read
    only the cached item, found nothing and marked the SKU UNLISTED for an hour."""
    shop, server = shopify_channel
    config["connectors"] = [shopify_sandbox_channel(graphql_url(server.url))]
    c = await build(Settings.model_validate(config), clock=clock)
    [cfg] = c.settings.connectors_of(ChannelConfig)
    adapter = make_channel(cfg, token=None)
    try:
        worker = Propagator(c.propagation, {"shop": adapter}, c.pool)
        await c.stock.receive(Receipt("TEE", 7, "r-1"))
        await sync_all(c, worker)
        old = shop.gid("TEE")
        shop.unlist_skus(["TEE"])
        shop.list_skus(["TEE"], quantity=7)
        assert shop.gid("TEE") != old
        drift = await c.propagation.reconcile(adapter)
        async with c.pool.acquire() as conn:
            status = await conn.fetchval("SELECT status FROM channel_sync_state WHERE sku = 'TEE'")
    finally:
        await adapter.aclose()
        await c.close()
    assert (drift.unlisted, status) == (0, "SYNCED")
