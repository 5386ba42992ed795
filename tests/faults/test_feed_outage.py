"""A channel push whose answer comes while the database is away is booked once the
database is back (D-438), instead of its rows staying leased until the claim runs out
(for an Amazon feed: ``feed_timeout_s`` + 600 s, an hour and more).

The outage is real: a private PostgreSQL cluster is stopped while the feed is processing
on the sandbox Amazon, the feed finishes meanwhile, and the cluster starts again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from stockkeeper.bootstrap import Container, build, channel_adapter
from stockkeeper.config import ChannelConfig, Settings
from stockkeeper.services.stock import Receipt
from stockkeeper.workers.propagator import Propagator
from tests.faults.conftest import eventually
from tests.faults.servers import PrivatePostgres
from tests.integration.test_amazon import (
    CLIENT_ID,
    CLIENT_SECRET,
    REFRESH,
    Amazon,
    amazon_cfg,
    feeds_sandbox,
)
from tests.integration.test_propagation import record_all
from tests.support import base_config

pytestmark = pytest.mark.slow

CHANNEL = "amazon-eu"


@pytest.fixture
def amazon() -> Iterator[Amazon]:
    with feeds_sandbox() as sandbox:
        yield sandbox


@pytest.fixture
async def rig(
    private_pg: PrivatePostgres, amazon: Amazon, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Container, Propagator]]:
    _, server, _ = amazon
    monkeypatch.setenv("AMZ_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("AMZ_CLIENT_SECRET", CLIENT_SECRET)
    monkeypatch.setenv("AMZ_REFRESH_TOKEN", REFRESH)
    cfg = amazon_cfg(server, feed_threshold=3, feed_poll_s=0.05, feed_timeout_s=60)
    config = base_config(
        private_pg.url,
        connectors=[cfg.model_dump(mode="json", exclude_none=True)],
        propagation={"backoff_base_ms": 1, "backoff_max_ms": 5},
    )
    c = await build(Settings.model_validate(config))
    [channel] = c.settings.connectors_of(ChannelConfig)
    adapter = channel_adapter(channel, c.metrics)
    try:
        yield c, Propagator(c.propagation, {channel.id: adapter}, c.pool)
    finally:
        await adapter.aclose()
        await c.close()


async def sync_states(c: Container) -> dict[str, tuple[str, bool]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT sku, status, leased_until IS NOT NULL AS leased FROM channel_sync_state "
            "WHERE channel = $1",
            CHANNEL,
        )
    return {r["sku"]: (r["status"], r["leased"]) for r in rows}


async def test_a_feed_done_while_the_database_is_away_is_booked_when_it_returns(
    private_pg: PrivatePostgres, rig: tuple[Container, Propagator], amazon: Amazon
) -> None:
    c, worker = rig
    state, _, recorder = amazon
    state.feed_delay_s = 3600.0  # processed when the test says so
    for sku, qty in {"A": 1, "B": 2, "C": 3}.items():
        await c.stock.receive(Receipt(sku, qty, f"r-{sku}"))
    await record_all(c, worker)
    pushing = asyncio.ensure_future(worker.push_once(CHANNEL))
    await eventually(lambda: bool(state.feeds()), what="the feed to be created")

    await asyncio.to_thread(private_pg.stop)
    # The claim is renewed between polls while the database is away (the fence cannot
    # reach it), then the feed is done and its report read: the answer is in hand.
    await asyncio.sleep(0.3)
    for feed in state.feeds():
        feed.due = 0.0
    await eventually(
        lambda: (
            pushing.done()
            or any(p.startswith("/_sandbox/downloads/") for _, p, _, _ in recorder.requests)
        ),
        what="the adapter to read the report",
    )
    await asyncio.sleep(0.5)
    assert not pushing.done(), "the push gave up while the database was away"
    await asyncio.to_thread(private_pg.start)

    assert await asyncio.wait_for(pushing, timeout=30) == 3
    assert await sync_states(c) == dict.fromkeys(("A", "B", "C"), ("SYNCED", False))
    assert state.levels() == {"A": 1, "B": 2, "C": 3}
    assert state.counters()["feeds"] == 1  # booked, not sent again
    async with c.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM dead_letter") == 0
        assert await conn.fetchval("SELECT count(*) FROM channel_push") == 3
