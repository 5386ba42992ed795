"""Issue 14.7: quorum queues state their own delivery limit and dead-lettering, on a
RabbitMQ node of the test's own.

A message redelivered past the limit lands in the ``dead-letters`` queue and from there
in ``dead_letter`` (never dropped); retry queues dead-letter at least once; a queue an
older stockkeeper declared without these arguments stops the start with one clear error.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.messaging.broker import OutgoingMessage
from stockkeeper.messaging.dead_letter_queue import DeadLetterDrain
from stockkeeper.messaging.envelope import ATTEMPT_HEADER, Envelope
from stockkeeper.messaging.rabbitmq import (
    DEAD_LETTER_QUEUE,
    QUORUM,
    RabbitMQBroker,
    TopologyMismatch,
)
from stockkeeper.messaging.topology import INVENTORY_EVENTS, QUEUES
from stockkeeper.store import dead_letters
from tests.faults.conftest import eventually
from tests.faults.servers import PrivateRabbit

pytestmark = pytest.mark.slow

LIMIT = 2


@pytest.fixture
async def broker(private_rabbit: PrivateRabbit) -> AsyncIterator[RabbitMQBroker]:
    broker = RabbitMQBroker(
        private_rabbit.url, prefix=f"t{uuid.uuid4().hex[:8]}.", delivery_limit=LIMIT
    )
    await broker.connect()
    yield broker
    await broker.close()


def queue_arguments(node: PrivateRabbit) -> dict[str, dict[str, Any]]:
    """Every queue's arguments as the node reports them."""
    out = subprocess.run(
        ["rabbitmqctl", "-n", node.node, "list_queues", "name", "arguments", "--formatter", "json"],
        env=node.env,
        check=True,
        capture_output=True,
    ).stdout
    found: dict[str, dict[str, Any]] = {}
    for row in json.loads(out):
        args = row["arguments"]
        # rabbitmqctl prints a table as [key, type, value] triples.
        found[row["name"]] = {a[0]: a[-1] for a in args} if isinstance(args, list) else args
    return found


def message(env: Envelope) -> OutgoingMessage:
    return OutgoingMessage(
        INVENTORY_EVENTS, "inventory.allocated", env.to_bytes(), str(env.id), {ATTEMPT_HEADER: 1}
    )


async def test_every_queue_states_its_limit_and_dead_letters_at_least_once(
    private_rabbit: PrivateRabbit, broker: RabbitMQBroker
) -> None:
    env = Envelope.new("inventory.allocated", {}, occurred_at=datetime.now(UTC))
    await broker.send_to_queue("wms.outbound", message(env), delay_ms=60_000)

    args = await asyncio.to_thread(queue_arguments, private_rabbit)
    dlq = broker.prefix + DEAD_LETTER_QUEUE
    for spec in QUEUES:
        a = args[broker.prefix + spec.name]
        assert a["x-queue-type"] == "quorum"
        assert a["x-delivery-limit"] == LIMIT
        assert a["x-dead-letter-exchange"] == ""
        assert a["x-dead-letter-routing-key"] == dlq
        assert a["x-dead-letter-strategy"] == "at-least-once"
        assert a["x-overflow"] == "reject-publish"
    retry = args[f"{broker.prefix}wms.outbound.retry.60000"]
    assert retry["x-message-ttl"] == 60_000
    assert retry["x-dead-letter-routing-key"] == broker.prefix + "wms.outbound"
    assert retry["x-dead-letter-strategy"] == "at-least-once"
    assert retry["x-overflow"] == "reject-publish"
    # The dead-letter queue itself: a far limit (RabbitMQ 4's default of 20 would drop).
    assert args[dlq]["x-queue-type"] == "quorum"
    assert args[dlq]["x-delivery-limit"] > 1000
    assert "x-dead-letter-exchange" not in args[dlq]


async def test_a_message_redelivered_past_the_limit_lands_in_dead_letter(
    private_rabbit: PrivateRabbit, broker: RabbitMQBroker, container: Container
) -> None:
    env = Envelope.new("inventory.allocated", {"sku": "A"}, occurred_at=datetime.now(UTC))
    await broker.publish([message(env)])

    # A consumer that dies on the message every time: it is handed back, again and again.
    conn = await aio_pika.connect(private_rabbit.url)
    handed_back = 0
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(broker.prefix + "wms.outbound", passive=True)
        for _ in range(LIMIT + 3):
            got = await queue.get(fail=False, timeout=5)
            if got is None:
                break
            await got.nack(requeue=True)
            handed_back += 1
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    assert handed_back == LIMIT + 1  # then RabbitMQ dead-lettered it instead

    drain = DeadLetterDrain(broker, container.pool, container.metrics, broker.prefix)
    stop = asyncio.Event()
    running = asyncio.ensure_future(drain.run(stop))
    try:

        async def landed() -> bool:
            async with container.pool.acquire() as c:
                return bool(await dead_letters.page(c, None, None, 0, 10))

        await eventually(landed, what="the message in dead_letter")
    finally:
        stop.set()
        await running

    async with container.pool.acquire() as c:
        [letter] = await dead_letters.page(c, None, None, 0, 10)
    assert letter.queue == "wms.outbound"
    assert letter.message_id == env.id
    assert letter.routing_key == "inventory.allocated"
    assert letter.body == json.loads(env.to_bytes())
    assert "delivery_limit" in letter.error
    depths = await broker.queue_depths()
    assert depths[broker.prefix + "wms.outbound"] == 0


async def test_a_queue_an_older_stockkeeper_declared_is_one_clear_error(
    private_rabbit: PrivateRabbit,
) -> None:
    prefix = f"old{uuid.uuid4().hex[:8]}."
    conn = await aio_pika.connect(private_rabbit.url)
    try:
        channel = await conn.channel()
        # As before issue 14: quorum, and nothing else.
        await channel.declare_queue(prefix + "wms.outbound", durable=True, arguments=QUORUM)
    finally:
        await conn.close()

    broker = RabbitMQBroker(private_rabbit.url, prefix=prefix)
    try:
        with pytest.raises(TopologyMismatch) as raised:
            await broker.connect()
    finally:
        await broker.close()
    text = str(raised.value)
    assert f"{prefix}wms.outbound" in text
    assert "PRECONDITION_FAILED" in text
    assert "delete_queue" in text
    assert "D-160" in text
