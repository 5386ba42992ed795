"""The propagator's consumer in batch mode (D-322): a batch of level changes recorded
set-based, as one message at a time would have; a poison message dead-lettered alone;
a redelivered batch a no-op; and its locks taken in (sku, channel) order, so a batch
never holds a row a sender needs while it waits for another."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.domain.events import LEVEL_CHANGED
from stockkeeper.messaging.broker import OutgoingMessage
from stockkeeper.messaging.consumer import Consumer, RetryPolicy
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, Envelope
from stockkeeper.messaging.topology import INVENTORY_EVENTS
from stockkeeper.services.propagation import LevelChange
from stockkeeper.workers.propagator import Propagator
from tests.conftest import FakeClock

A, B = "shop-a", "shop-b"
SECRET_ENV = "SK_TEST_CHANNEL_SECRET"
T0 = datetime.now(UTC) - timedelta(minutes=5)


@pytest.fixture(params=["pgqueue", "rabbitmq"])
def amqp_url(request: pytest.FixtureRequest) -> str | None:
    """RabbitMQ's URL for the rabbitmq runs; None: the embedded queue."""
    return None if request.param == "pgqueue" else str(request.getfixturevalue("rabbit_url"))


@pytest.fixture
async def c(
    config: dict[str, Any],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    amqp_url: str | None,
    broker_prefix: str,
) -> AsyncIterator[Container]:
    monkeypatch.setenv(SECRET_ENV, "s3cret-for-tests")
    if amqp_url is not None:
        config["broker"] = {"url": amqp_url, "prefix": broker_prefix}
    config["connectors"] = [
        {"id": ch, "type": "outbound_webhook", "url": f"http://127.0.0.1:9/{ch}",
         "secret_env": SECRET_ENV}
        for ch in (A, B)
    ]  # fmt: skip
    container = await build(Settings.model_validate(config), clock=clock)
    yield container
    await container.close()


def level(sku: str, version: int, available: int, second: int, **extra: Any) -> Envelope:
    payload = {"sku": sku, "version": version, "available": available, **extra}
    return Envelope.new(
        LEVEL_CHANGED,
        payload,
        occurred_at=T0 + timedelta(seconds=second),
        sku=sku,
        sequence=version,
        source="api",
    )


def message(env: Envelope) -> OutgoingMessage:
    return OutgoingMessage(
        INVENTORY_EVENTS, LEVEL_CHANGED, env.to_bytes(), str(env.id), {ATTEMPT_HEADER: 1}
    )


def outcomes(c: Container) -> dict[str, float]:
    reg = c.metrics.registry
    return {
        o: reg.get_sample_value(
            "stockkeeper_consumer_messages_total", {"consumer": "propagator", "outcome": o}
        )
        or 0.0
        for o in ("applied", "duplicate")
    }


async def eventually_handled(c: Container, n: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while sum(outcomes(c).values()) < n:
        assert time.monotonic() < deadline, f"not within 10 s: {what}"
        await asyncio.sleep(0.02)


async def consume(c: Container, envs: list[Envelope], handled: int) -> None:
    """Publish ``envs`` as one batch and run the propagator's batch consumer until
    ``handled`` messages are settled in all (applied or duplicate; a dead letter is
    neither)."""
    broker = await c.connected_broker()
    await broker.publish([message(e) for e in envs])
    worker = Propagator(c.propagation, {}, c.pool)
    consumer = Consumer(
        "propagator",
        "channel.propagation",
        worker.handler(),
        pool=c.pool,
        broker=broker,
        metrics=c.metrics,
        policy=RetryPolicy(base_ms=50, max_ms=200, max_attempts=3),
        batch_size=16,
        handle_many=worker.batch_handler(),
    )
    sub = await consumer.start(prefetch=16)
    try:
        await eventually_handled(c, handled, f"{handled} messages handled")
    finally:
        await sub.cancel()


async def states(c: Container, sku: str) -> dict[str, tuple[Any, ...]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT channel, desired_version, desired_quantity, status, pending_changes, "
            "pending_since FROM channel_sync_state WHERE sku = $1 ORDER BY channel",
            sku,
        )
    return {r["channel"]: tuple(r)[1:] for r in rows}


async def test_a_batch_records_each_change_as_one_message_at_a_time_would(c: Container) -> None:
    # SKU-1 three times in the batch: three rounds, each judged after the one before.
    envs = [
        level("SKU-1", 1, 5, 0),
        level("SKU-2", 1, 3, 1),
        level("SKU-1", 2, 4, 2),
        level("SKU-1", 3, 4, 3),
        level("SKU-1", 2, 9, 4),  # stale by then: dropped
    ]
    await consume(c, envs, len(envs))

    pending = (3, 4, "PENDING", 3, T0)  # every change counted, lag from the first
    assert await states(c, "SKU-1") == {A: pending, B: pending}
    second = (1, 3, "PENDING", 1, T0 + timedelta(seconds=1))
    assert await states(c, "SKU-2") == {A: second, B: second}
    assert outcomes(c) == {"applied": 5, "duplicate": 0}


async def test_a_poison_message_in_a_batch_is_dead_lettered_alone(c: Container) -> None:
    poison = level("SKU-9", 1, -4, 1)  # a negative availability: a bad payload
    envs = [level("SKU-1", 1, 5, 0), poison, level("SKU-2", 1, 3, 2), level("SKU-1", 2, 6, 3)]
    await consume(c, envs, 3)

    assert await states(c, "SKU-1") == dict.fromkeys((A, B), (2, 6, "PENDING", 2, T0))  # fmt: skip
    assert await states(c, "SKU-2") == {
        ch: (1, 3, "PENDING", 1, T0 + timedelta(seconds=2)) for ch in (A, B)
    }  # fmt: skip
    assert await states(c, "SKU-9") == {}
    async with c.pool.acquire() as conn:
        dead = await conn.fetch("SELECT message_id, error, attempts FROM dead_letter")
        processed = await conn.fetch("SELECT message_id FROM processed_message")
    assert [(d["message_id"], d["attempts"]) for d in dead] == [(poison.id, 1)]
    assert dead[0]["error"].startswith("PermanentError: bad level_changed payload")
    assert {r["message_id"] for r in processed} == {e.id for e in envs if e is not poison}
    assert outcomes(c) == {"applied": 3, "duplicate": 0}


async def test_a_redelivered_batch_is_a_no_op(c: Container) -> None:
    envs = [level("SKU-1", 1, 5, 0), level("SKU-2", 1, 3, 1), level("SKU-1", 2, 4, 2)]
    await consume(c, envs, 3)
    before = {sku: await states(c, sku) for sku in ("SKU-1", "SKU-2")}

    await consume(c, envs, 6)  # the same messages again: every one a duplicate

    assert {sku: await states(c, sku) for sku in ("SKU-1", "SKU-2")} == before
    assert outcomes(c) == {"applied": 3, "duplicate": 3}


async def test_a_batch_waiting_for_a_row_holds_none_a_sender_needs(c: Container) -> None:
    """A sender acknowledging SKU-1 then SKU-2 on one channel (ack_pushes locks in SKU
    order) holds SKU-1 while a batch that delivered SKU-2 first waits: the batch took
    nothing yet, so the sender gets SKU-2 at once and no deadlock is possible."""
    p = c.propagation
    async with c.pool.acquire() as conn, conn.transaction():
        await p.record_batch(conn, [LevelChange(s, 1, 1, T0, "api") for s in ("SKU-1", "SKU-2")])
    batch = [LevelChange("SKU-2", 2, 7, T0, "api"), LevelChange("SKU-1", 2, 8, T0, "api")]
    lock = "SELECT 1 FROM channel_sync_state WHERE channel = $1 AND sku = $2 FOR UPDATE"
    async with c.pool.acquire() as sender, c.pool.acquire() as consumer:
        tx = sender.transaction()
        await tx.start()
        await sender.execute(lock, A, "SKU-1")

        async def record() -> None:
            async with consumer.transaction():
                await p.record_batch(consumer, batch)

        task = asyncio.ensure_future(record())
        pid = consumer.get_server_pid()
        deadline = time.monotonic() + 10
        while not await sender.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            assert time.monotonic() < deadline, "the batch never waited for SKU-1"
            await asyncio.sleep(0.01)
        await sender.execute("SET LOCAL lock_timeout = '2s'")
        await sender.execute(lock, A, "SKU-2")  # free: the batch holds nothing yet
        await tx.commit()
        await asyncio.wait_for(task, 10)
    assert await states(c, "SKU-1") == dict.fromkeys((A, B), (2, 8, "PENDING", 2, T0))
    assert await states(c, "SKU-2") == dict.fromkeys((A, B), (2, 7, "PENDING", 2, T0))
