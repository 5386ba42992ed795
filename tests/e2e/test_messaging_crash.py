"""Messaging under crashes, with real processes, PostgreSQL and RabbitMQ.

Delivery is at least once and every consumer is idempotent (ARCHITECTURE section 5), so
whatever dies (a dispatcher between the broker's confirm and SENT, a consumer between its
effect and the commit, the broker connections) every event takes effect exactly once.
The effect is a row in ``test_effect`` (tests/e2e/effects.py), a table without a unique
constraint: a message applied twice would show as two rows. With several dispatchers at
once, the effects of each SKU still come in sequence order.
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from stockkeeper.bootstrap import build
from stockkeeper.config import Settings
from stockkeeper.services.stock import Receipt
from tests.e2e.messaging_helpers import (
    PROPAGATION,
    SIGKILLED,
    Child,
    Children,
    add_level_changes,
    assert_exactly_once,
    close_rabbit_connections,
    create_effect_table,
    create_skus,
    drop_rabbit_topology,
    effect_count,
    have_rabbitmqctl,
    level_changed_ids,
    outbox_status,
    rabbit_ready,
    wait_until,
)
from tests.support import base_config

pytestmark = pytest.mark.slow

RECEIPTS = 50  # each writes inventory.received and inventory.level_changed
SKUS_SMALL = 10
WAIT = 90.0  # seconds: the deadline of every poll
SETTLE = 15.0  # seconds for the messages a consumer already holds
LEAD = 1500  # events the stream may run ahead of the consumer


@pytest.fixture(params=["rabbitmq", "embedded"])
def broker(request: pytest.FixtureRequest, broker_prefix: str) -> dict[str, Any]:
    """The broker section: RabbitMQ, or the embedded queue (a table in the same database)."""
    if request.param == "rabbitmq":
        url = request.getfixturevalue("rabbit_url")
        return {"url": url, "prefix": broker_prefix, "retry_base_ms": 100}
    # A killed consumer's messages come back when its lease runs out: keep it short.
    return {"prefix": broker_prefix, "retry_base_ms": 100, "lease_ms": 1500, "poll_ms": 100}


@pytest.fixture
async def cleanup_rabbit(broker_prefix: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Append the broker section to drop the test's exchanges and queues afterwards (with
    the retry queues of its retry policy)."""
    brokers: list[dict[str, Any]] = []
    yield brokers
    for broker in brokers:
        await drop_rabbit_topology(broker["url"], broker_prefix, broker)


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        await create_effect_table(conn)
        yield conn
    finally:
        await conn.close()


def settings_for(
    db_url: str, broker: dict[str, Any], *, batch_size: int = 500, pool_size: int = 5
) -> dict[str, Any]:
    return base_config(
        db_url,
        database={"pool_size": pool_size},
        broker=broker,
        dispatcher={"batch_size": batch_size, "poll_interval_ms": 200},
        logging={"level": "info"},
    )


async def write_receipts(cfg: dict[str, Any], n: int = RECEIPTS) -> None:
    """``n`` receipts through the stock service, in-process: 2 outbox events each."""
    container = await build(Settings.model_validate(cfg))
    try:
        for i in range(n):
            await container.stock.receive(Receipt(f"SKU-{i % SKUS_SMALL}", 1 + i, f"rcpt-{i}"))
    finally:
        await container.close()


async def drained(broker: dict[str, Any], db: asyncpg.Connection) -> bool:
    """Nothing waiting on the propagation queue. The embedded queue keeps a message until
    its ack, so there this also means nothing in flight; on RabbitMQ a consumer may still
    hold up to ``prefetch`` unacknowledged messages."""
    queue = broker["prefix"] + PROPAGATION
    if broker.get("url"):
        return await rabbit_ready(broker["url"], queue) == 0
    left: int = await db.fetchval("SELECT count(*) FROM queue_message WHERE queue = $1", queue)
    return left == 0


def track(broker: dict[str, Any], cleanup: list[dict[str, Any]]) -> None:
    if broker.get("url"):
        cleanup.append(broker)


async def test_dispatcher_killed_after_publish_before_sent(
    broker: dict[str, Any],
    cleanup_rabbit: list[dict[str, Any]],
    db: asyncpg.Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    """The broker confirmed the batch, the dispatcher died before marking it SENT: the
    rows stay PENDING, the next dispatcher publishes them again, and the consumer takes
    every event once, recognising each second copy on RabbitMQ as a duplicate. The
    embedded queue's messages were written in the claiming transaction, which died with
    the dispatcher, so there is no first copy to recognise (D-132)."""
    track(broker, cleanup_rabbit)
    rabbit = bool(broker.get("url"))
    cfg = settings_for(db_url, broker)
    await write_receipts(cfg)
    events = await level_changed_ids(db)
    total = sum((await outbox_status(db)).values())
    assert (len(events), total) == (RECEIPTS, 2 * RECEIPTS)

    with Children(tmp_path) as kids:
        consumer = kids.consumer(cfg, name="effects")
        doomed = kids.dispatcher(
            cfg, failpoints="dispatcher.after_publish=kill", label="doomed-dispatcher"
        )
        rc = await doomed.wait_exit(WAIT)
        assert rc == SIGKILLED, doomed.log_tail()
        assert await outbox_status(db) == {"PENDING": total}

        if rabbit:
            # The batch did reach the broker: the consumer applies all of it while every
            # row is still PENDING.
            await wait_until(
                lambda: _count_is(db, RECEIPTS), timeout=WAIT, what="first copies", children=kids
            )
        else:
            # Nothing reached the embedded queue: its rows rolled back with the claim.
            assert await drained(broker, db)
            assert await effect_count(db) == 0
        assert await outbox_status(db) == {"PENDING": total}

        kids.dispatcher(cfg)
        await wait_until(
            lambda: _all_sent(db, total), timeout=WAIT, what="all events SENT", children=kids
        )
        copies = 2 * RECEIPTS if rabbit else RECEIPTS

        async def both_copies_handled() -> bool:
            await _count_is(db, RECEIPTS)  # fails at once on a second effect
            return sum(consumer.consumer_outcomes().values()) >= copies

        await wait_until(
            both_copies_handled,
            timeout=WAIT,
            what="the republished copies at the consumer",
            children=kids,
            detail=partial(_describe, consumer),
        )
        await wait_until(
            lambda: drained(broker, db), timeout=WAIT, what="an empty queue", children=kids
        )
        expected = {"applied": RECEIPTS, "duplicate": RECEIPTS} if rabbit else {"applied": RECEIPTS}
        assert consumer.consumer_outcomes() == expected
    await assert_exactly_once(db, events)


async def test_consumer_killed_before_commit(
    broker: dict[str, Any],
    cleanup_rabbit: list[dict[str, Any]],
    db: asyncpg.Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    """A consumer dies after its handler ran and before the commit: its effect is rolled
    back with the processed mark, the message comes back, and a second consumer applies
    every effect once."""
    track(broker, cleanup_rabbit)
    cfg = settings_for(db_url, broker)
    await write_receipts(cfg)
    events = await level_changed_ids(db)
    total = sum((await outbox_status(db)).values())

    with Children(tmp_path) as kids:
        kids.dispatcher(cfg)
        await wait_until(
            lambda: _all_sent(db, total), timeout=WAIT, what="all events SENT", children=kids
        )
        doomed = kids.consumer(
            cfg, name="effects", failpoints="consumer.before_commit=kill", label="doomed-consumer"
        )
        rc = await doomed.wait_exit(WAIT)
        assert rc == SIGKILLED, doomed.log_tail()
        assert await effect_count(db) == 0
        assert await db.fetchval("SELECT count(*) FROM processed_message") == 0

        survivor = kids.consumer(cfg, name="effects", label="survivor")
        await wait_until(
            lambda: drained(broker, db), timeout=WAIT, what="an empty queue", children=kids
        )
        # Only what the survivor holds is left: a lost message shows here, not in WAIT.
        await wait_until(
            lambda: _count_is(db, RECEIPTS), timeout=SETTLE, what="every effect", children=kids
        )
        assert survivor.consumer_outcomes() == {"applied": RECEIPTS}
    await assert_exactly_once(db, events)
    pids = {r["pid"] for r in await db.fetch("SELECT DISTINCT pid FROM test_effect")}
    assert pids == {survivor.pid}
    assert await db.fetchval("SELECT count(*) FROM processed_message") == RECEIPTS


async def test_rabbitmq_connections_closed_mid_stream(
    rabbit_url: str,
    broker_prefix: str,
    cleanup_rabbit: list[dict[str, Any]],
    db: asyncpg.Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    """5,000 events streaming while RabbitMQ closes the dispatcher's and the consumer's
    connections twice: the robust connections come back, everything arrives, once."""
    if not have_rabbitmqctl():
        pytest.skip("closing connections from the server side needs rabbitmqctl")
    total, skus, per_tx = 5000, [f"SKU-{i:03d}" for i in range(100)], 50
    broker = {"url": rabbit_url, "prefix": broker_prefix, "retry_base_ms": 100}
    cleanup_rabbit.append(broker)
    cfg = settings_for(db_url, broker, batch_size=200)
    await create_skus(db, skus)

    with Children(tmp_path) as kids:
        consumer = kids.consumer(cfg, name="effects")
        dispatcher = kids.dispatcher(cfg)
        await wait_until(
            lambda: _logged(consumer, "consumer.started"),
            timeout=WAIT,
            what="the consumer",
            children=kids,
        )
        await wait_until(
            lambda: _logged(dispatcher, "dispatcher.started"),
            timeout=WAIT,
            what="the dispatcher",
            children=kids,
        )
        produced = 0

        async def produce() -> None:
            # A steady stream (about 300 events a second, near the consumer's pace) that
            # goes on while the connections are down, so the dispatcher has events to
            # publish across each outage; and never more than ``LEAD`` events ahead of
            # the consumer, so some are still to come at the second close.
            nonlocal produced
            writer = await asyncpg.connect(db_url)
            rng = random.Random(7)
            try:
                while produced < total:
                    await wait_until(
                        partial(_behind, writer, produced, LEAD), timeout=WAIT, what="consumer"
                    )
                    produced += await add_level_changes(
                        writer, [rng.choice(skus) for _ in range(per_tx)], rng
                    )
                    await asyncio.sleep(0.15)  # pacing, not waiting for anything
            finally:
                await writer.close()

        producer = asyncio.ensure_future(produce())
        try:
            for threshold in (1000, 3000):
                await wait_until(
                    partial(_at_least, db, threshold),
                    timeout=WAIT,
                    what=f"{threshold} effects",
                    children=kids,
                )
                # Both still have events to move after this: they must reconnect.
                assert produced < total
                closed = await asyncio.to_thread(
                    close_rabbit_connections, rabbit_url, [consumer.pid, dispatcher.pid]
                )
                assert closed >= 2, f"closed {closed} connections\n{kids.logs()}"
            await asyncio.wait_for(producer, WAIT)
        finally:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        events = await level_changed_ids(db)
        assert len(events) == total
        await wait_until(
            lambda: _all_sent(db, total), timeout=WAIT, what="all events SENT", children=kids
        )
        await wait_until(
            lambda: _count_is(db, total),
            timeout=WAIT,
            what=f"{total} effects",
            children=kids,
            detail=partial(_describe, consumer),
        )
        await wait_until(
            lambda: drained(broker, db), timeout=WAIT, what="an empty queue", children=kids
        )
        outcomes = consumer.consumer_outcomes()
    await assert_exactly_once(db, events)
    # A message whose effect committed just as its channel went away (aiormq cancels the
    # callback) comes back and counts as a duplicate, so "applied" may fall short of the
    # effects; it can never exceed them.
    assert outcomes.get("applied", 0) <= total, outcomes


async def test_three_dispatchers_keep_per_sku_order(
    broker: dict[str, Any],
    cleanup_rabbit: list[dict[str, Any]],
    db: asyncpg.Connection,
    db_url: str,
    tmp_path: Path,
) -> None:
    """10,000 events over 100 SKUs, three dispatchers at once, one sequential consumer:
    per SKU, the effects land in sequence order, none missing, none doubled."""
    total, skus, per_tx = 10_000, [f"SKU-{i:03d}" for i in range(100)], 100
    track(broker, cleanup_rabbit)
    # Small batches: the three dispatchers take turns on the same SKUs all along.
    cfg = settings_for(db_url, broker, batch_size=50)
    await create_skus(db, skus)

    with Children(tmp_path) as kids:
        consumer = kids.consumer(cfg, name="effects")
        dispatchers = [kids.dispatcher(cfg, label=f"dispatcher-{i}") for i in range(3)]
        for child in [consumer, *dispatchers]:
            await wait_until(
                partial(_logged, child, "consumer.started", "dispatcher.started"),
                timeout=WAIT,
                what=f"{child.label} to start",
                children=kids,
            )
        rng = random.Random(11)
        writer = await asyncpg.connect(db_url)
        try:
            for _ in range(total // per_tx):
                await add_level_changes(writer, [rng.choice(skus) for _ in range(per_tx)], rng)
                await asyncio.sleep(0.005)  # let the dispatchers wake and race
        finally:
            await writer.close()
        # 10,000 effects take about 35 s on the embedded queue of a quiet 2-core machine;
        # the bound is for a loaded one, not a speed the test asserts.
        await wait_until(
            lambda: _count_is(db, total),
            timeout=2 * WAIT,
            what=f"{total} effects",
            children=kids,
            detail=partial(_describe, consumer),
        )
        await wait_until(
            lambda: _all_sent(db, total), timeout=WAIT, what="all events SENT", children=kids
        )
        published = [d.published() for d in dispatchers]
    assert sum(published) == total, published
    assert sum(1 for p in published if p > 0) >= 2, published

    await assert_exactly_once(db, await level_changed_ids(db))
    seen: dict[str, list[int]] = defaultdict(list)
    for r in await db.fetch("SELECT sku, sequence FROM test_effect ORDER BY id"):
        seen[r["sku"]].append(r["sequence"])
    counts = {
        r["sku"]: r["n"]
        for r in await db.fetch("SELECT sku, count(*) AS n FROM domain_event GROUP BY sku")
    }
    out_of_order = {
        sku: seqs for sku, seqs in seen.items() if seqs != list(range(1, counts[sku] + 1))
    }
    assert not out_of_order, {
        sku: _first_inversion(seqs) for sku, seqs in list(out_of_order.items())[:5]
    }


# -- small polls -----------------------------------------------------------------------


async def _count_is(db: asyncpg.Connection, n: int) -> bool:
    got = await effect_count(db)
    assert got <= n, f"{got} effects for {n} events"
    return got == n


async def _at_least(db: asyncpg.Connection, n: int) -> bool:
    return await effect_count(db) >= n


async def _all_sent(db: asyncpg.Connection, n: int) -> bool:
    return await outbox_status(db) == {"SENT": n}


async def _behind(writer: asyncpg.Connection, produced: int, lead: int) -> bool:
    return produced - await effect_count(writer) < lead


async def _logged(child: Child, *events: str) -> bool:
    return any(child.logged(e) for e in events)


async def _describe(consumer: Child) -> str:
    try:
        return f"consumer outcomes: {consumer.consumer_outcomes()}"
    except Exception as exc:
        return f"consumer outcomes unknown: {exc!r}"


def _first_inversion(seqs: list[int]) -> str:
    for i, s in enumerate(seqs):
        if s != i + 1:
            return f"position {i}: got {s}, expected {i + 1}; around {seqs[max(0, i - 3) : i + 4]}"
    return f"{len(seqs)} effects"
