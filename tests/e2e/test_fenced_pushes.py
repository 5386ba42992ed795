"""Issue 13 point 3, end to end and stochastic: two ``stockkeeper run propagator``
processes push one SKU to a slow, throttled sandbox Shopify while a stream of changes
(receipts and adjustments, each its own transaction), the channel's own edits and leases
cut short (a push outliving its lease, so the other propagator claims the SKU meanwhile)
hit it.

Every change adds units, so each version of the SKU has a larger availability than the
one before: the channel's write log, read in order, must never go down between two of
our writes (an older figure written after a newer one), and must end at the final
availability with nothing left in flight. The books audit clean afterwards.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.services.stock import Adjustment, Receipt
from stockkeeper.store import stock
from stockkeeper_sandbox.server import FaultController, Faults, SandboxServer
from stockkeeper_sandbox.shopify import ShopifyState, graphql_url
from stockkeeper_sandbox.shopify import create_app as create_shopify_app
from tests.e2e.helpers import run_cli
from tests.e2e.messaging_helpers import Child, Children, wait_until
from tests.support import base_config

pytestmark = pytest.mark.slow

SKU = "FENCE-1"
CHANNEL = "shopify-main"
LOCATION = "gid://shopify/Location/1"
CHANGES = 201


@pytest.fixture
def slow_shopify() -> Iterator[tuple[ShopifyState, FaultController, SandboxServer]]:
    """Shopify answering every call 30 ms late, 429 past 8 calls a second (burst 2),
    with a small cost bucket on top."""
    state = ShopifyState(bucket_size=60, restore_rate=40)
    faults = FaultController(Faults(delay_ms=30, rps=8, burst=2, retry_after=0.2))
    with SandboxServer(create_shopify_app(state, faults=faults)) as server:
        yield state, faults, server


@pytest.fixture
async def books(db_url: str) -> AsyncIterator[Container]:
    c = await build(Settings.model_validate(base_config(db_url)))
    yield c
    await c.close()


def config(db_url: str, rabbit_url: str, prefix: str, server: SandboxServer) -> dict[str, Any]:
    shopify = {
        "id": CHANNEL,
        "type": "shopify",
        "url": graphql_url(server.url),
        "location_id": LOCATION,
        "batch_size": 10,
        "concurrency": 4,
        "rate_limit_rps": 50,  # more than the sandbox takes: it answers 429 too
        "timeout_ms": 2000,
        "max_attempts": 3,
        "backoff_base_ms": 20,
        "backoff_max_ms": 200,
        "divergence_sample_s": 0,
    }
    return base_config(
        db_url,
        database={"pool_size": 4},
        broker={"url": rabbit_url, "prefix": prefix, "retry_base_ms": 50, "retry_max_ms": 500},
        connectors=[shopify],
        propagation={"backoff_base_ms": 20, "backoff_max_ms": 300, "max_attempts": 1000},
    )


def start(children: Children, cfg: dict[str, Any], service: str, label: str) -> Child:
    child = Child(["run", service], cfg, children.workdir, label=label)
    children.all.append(child)
    return child.start()


async def settled(db_url: str) -> dict[str, Any] | None:
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT status, desired_version, pushed_version, pushed_quantity, leased_until "
            "FROM channel_sync_state WHERE channel = $1 AND sku = $2",
            CHANNEL,
            SKU,
        )
    finally:
        await conn.close()
    return dict(row) if row else None


async def test_two_propagators_on_a_slow_throttled_channel_never_write_an_older_figure(
    db_url: str,
    rabbit_url: str,
    broker_prefix: str,
    tmp_path: Path,
    books: Container,
    slow_shopify: tuple[ShopifyState, FaultController, SandboxServer],
) -> None:
    state, faults, server = slow_shopify
    cfg = config(db_url, rabbit_url, broker_prefix, server)
    rng = random.Random(13)
    with Children(tmp_path) as children:
        start(children, cfg, "dispatcher", "dispatcher")
        start(children, cfg, "propagator", "propagator-a")
        start(children, cfg, "propagator", "propagator-b")
        await books.stock.receive(Receipt(SKU, 1, "f-first"))
        added = [1]

        async def first_shown() -> bool:
            return state.level(SKU) == 1

        # The pipeline is up once the first figure got through.
        await wait_until(first_shown, timeout=30, what="the first push", children=children)

        async def stream(n: int) -> None:
            for i in range(n):
                ref = f"f-{uuid.uuid4().hex}"
                k = rng.randint(1, 3)
                if rng.random() < 0.6:
                    await books.stock.receive(Receipt(SKU, k, ref))
                else:
                    await books.stock.adjust(Adjustment(SKU, "on_hand", "count", ref, delta=k))
                added.append(k)
                if i % 5 == 2:
                    # The push in flight outlives its lease (as a slow push can): the
                    # other propagator may claim the SKU and push a newer figure while
                    # the first one is still waiting on the slow channel.
                    async with books.pool.acquire() as conn:
                        await conn.execute(
                            "UPDATE channel_sync_state SET leased_until = now() "
                            "WHERE leased_until IS NOT NULL"
                        )
                if i % 10 == 5 and (shown := state.level(SKU)):
                    # The channel sells a unit behind our back: the next push finds its
                    # changeFromQuantity stale and has to read again and set.
                    state.set_level(SKU, shown - 1)

        # Four streams at once (the SKU's row lock puts them in one order).
        await asyncio.gather(*(stream((CHANGES - 1) // 4) for _ in range(4)))
        async with books.pool.acquire() as conn:
            lv = (await stock.sku_levels(conn, [SKU], datetime.now(UTC)))[SKU]
        final = lv.level.available

        async def done() -> bool:
            row = await settled(db_url)
            return (
                state.level(SKU) == final
                and row is not None
                and row["status"] == "SYNCED"
                and row["pushed_version"] == row["desired_version"]
                and row["leased_until"] is None
            )

        async def detail() -> str:
            return f"channel shows {state.level(SKU)}, ours {final}, row {await settled(db_url)}"

        await wait_until(
            done,
            timeout=60,
            what="the channel to show the final availability with nothing in flight",
            children=children,
            interval=0.1,
            detail=detail,
        )

    assert final == sum(added), "every change added units"
    written = [c.quantity for c in state.history(SKU) if c.source == "push"]
    assert written, "nothing was pushed"
    went_back = [(a, b) for a, b in pairwise(written) if b < a]
    assert went_back == [], f"older figures written after newer ones: {went_back}"
    assert written[-1] == final
    assert state.level(SKU) == final
    assert state.counters().get("stale", 0) > 0, "no push had to read again and set"
    assert faults.calls()["throttled"] > 0, "the channel never throttled"

    path = tmp_path / "audit.yaml"
    path.write_text(yaml.safe_dump({**base_config(db_url), "data_dir": str(tmp_path / "audit")}))
    audit = run_cli("audit", "--config", str(path), cwd=tmp_path)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "clean" in audit.stdout
