"""Issue 14.8: a database outage does not use up a consumer's attempts.

PostgreSQL (a private cluster) is stopped for far longer than ``max_attempts ×
retry_max_ms`` while RabbitMQ keeps delivering; when it returns, every message has been
applied exactly once, nothing is in ``dead_letter`` (the dead-letter drain runs too, so
nothing reached it past a delivery limit either, D-160) and no attempt was spent: the
consumer waited for the database instead of retrying (D-161). And the other side: a
connection error while the database answers is the message's own failure, counted.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.config import DatabaseConfig
from stockkeeper.messaging.broker import OutgoingMessage
from stockkeeper.messaging.consumer import HEALTHY_BUT_FAILING, Consumer, RetryPolicy
from stockkeeper.messaging.dead_letter_queue import DeadLetterDrain
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, Envelope
from stockkeeper.messaging.rabbitmq import RabbitMQBroker, delete_topology
from stockkeeper.messaging.topology import INVENTORY_EVENTS
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store.pool import Conn, Pool, create_pool
from tests.faults.conftest import eventually
from tests.faults.servers import PrivatePostgres

pytestmark = pytest.mark.slow

POLICY = RetryPolicy(base_ms=50, max_ms=100, max_attempts=3)
OUTAGE_S = 5.0  # far beyond max_attempts × max_ms (0.3 s)
QUEUE = "wms.outbound"


async def record(conn: Conn, env: Envelope) -> None:
    await conn.execute("INSERT INTO fault_effect (message_id) VALUES ($1)", env.id)


def message(env: Envelope) -> OutgoingMessage:
    return OutgoingMessage(
        INVENTORY_EVENTS, "inventory.allocated", env.to_bytes(), str(env.id), {ATTEMPT_HEADER: 1}
    )


def envelopes(n: int) -> list[Envelope]:
    now = datetime.now(UTC)
    return [Envelope.new("inventory.allocated", {"n": i}, occurred_at=now) for i in range(n)]


@pytest.fixture
async def pool(private_pg: PrivatePostgres) -> AsyncIterator[Pool]:
    pool = await create_pool(private_pg.url, DatabaseConfig(pool_size=4))
    await pool.execute("CREATE TABLE fault_effect (message_id uuid NOT NULL)")
    yield pool
    await pool.close()


@pytest.fixture
async def broker(rabbit_url: str) -> AsyncIterator[RabbitMQBroker]:
    prefix = f"fault{uuid.uuid4().hex[:8]}."
    broker = RabbitMQBroker(rabbit_url, prefix=prefix)
    await broker.connect()
    yield broker
    await broker.close()
    delays = [POLICY.delay_ms(a) for a in range(1, POLICY.max_attempts + 1)]
    await delete_topology(rabbit_url, prefix, delays)


async def applied(pool: Pool) -> list[uuid.UUID]:
    try:
        return [r[0] for r in await pool.fetch("SELECT message_id FROM fault_effect")]
    except Exception:
        return []  # the database is still coming back


async def test_an_outage_longer_than_every_retry_dead_letters_nothing(
    private_pg: PrivatePostgres, pool: Pool, broker: RabbitMQBroker
) -> None:
    metrics = Metrics()
    consumer = Consumer(
        "fault-consumer", QUEUE, record, pool=pool, broker=broker, metrics=metrics, policy=POLICY
    )
    sub = await consumer.start(prefetch=4)
    stop = asyncio.Event()
    drain = asyncio.ensure_future(DeadLetterDrain(broker, pool, metrics, broker.prefix).run(stop))
    before, during = envelopes(5), envelopes(20)
    try:
        await broker.publish([message(e) for e in before])
        await eventually(lambda: _count(pool, 5), what="the first messages applied")

        await asyncio.to_thread(private_pg.stop)
        await broker.publish([message(e) for e in during])
        await asyncio.sleep(OUTAGE_S)  # the outage itself: the consumer must ride it out
        await asyncio.to_thread(private_pg.start)

        await eventually(lambda: _count(pool, 25), timeout=30, what="every message applied")
        await asyncio.sleep(1.0)  # anything dead-lettered meanwhile reaches the drain
    finally:
        await sub.cancel()
        stop.set()
        await drain

    ids = await applied(pool)
    assert sorted(ids) == sorted(e.id for e in before + during)  # each once
    assert await pool.fetchval("SELECT count(*) FROM dead_letter") == 0
    waits = metrics.registry.get_sample_value(
        "stockkeeper_consumer_database_waits_total", {"consumer": "fault-consumer"}
    )
    assert (waits or 0) > 0  # it did meet the outage
    retries = metrics.registry.get_sample_value(
        "stockkeeper_consumer_retries_total", {"consumer": "fault-consumer"}
    )
    assert not retries  # and spent no attempt on it


async def _count(pool: Pool, n: int) -> bool:
    return len(await applied(pool)) >= n


async def refuse(_conn: Conn, _env: Envelope) -> None:
    raise ConnectionResetError("a socket of the handler's own, not the database's")


async def test_a_connection_error_while_the_database_answers_is_the_messages_failure(
    container: Container,
) -> None:
    c = container
    policy = RetryPolicy(base_ms=10, max_ms=20, max_attempts=2)
    broker = await c.connected_broker()  # the embedded queue, on the test's database
    consumer = Consumer(
        "refusing", QUEUE, refuse, pool=c.pool, broker=broker, metrics=c.metrics, policy=policy
    )
    env = envelopes(1)[0]
    sub = await consumer.start(prefetch=1)
    try:
        await broker.publish([message(env)])

        async def dead() -> bool:
            return bool(await c.pool.fetchval("SELECT count(*) FROM dead_letter"))

        await eventually(dead, what="the dead letter")
    finally:
        await sub.cancel()

    row = await c.pool.fetchrow("SELECT message_id, error, attempts FROM dead_letter")
    assert row["message_id"] == env.id
    assert "ConnectionResetError" in row["error"]
    assert row["attempts"] == policy.max_attempts
    waits = c.metrics.registry.get_sample_value(
        "stockkeeper_consumer_database_waits_total", {"consumer": "refusing"}
    )
    # Per attempt, the pauses before the third error in a row with the database up.
    assert waits == policy.max_attempts * (HEALTHY_BUT_FAILING - 1)
