"""Ordering holds with many dispatchers (issue 13, point 13), with real processes,
PostgreSQL and RabbitMQ.

An order's reservation events share its ordering key (D-130), so three
``stockkeeper run dispatcher`` processes cannot publish an order's ``inventory.released``
before its ``inventory.allocated``, even when the dispatcher holding the allocation is
slow (a failpoint delays every batch that carries one). What reaches the exchange is
read from a queue of our own bound to it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from stockkeeper.bootstrap import build
from stockkeeper.config import Settings
from stockkeeper.domain.allocation import OrderLine
from stockkeeper.domain.events import ALLOCATED, RELEASED
from stockkeeper.messaging.envelope import ORDERING_KEY_HEADER, Envelope
from stockkeeper.messaging.topology import INVENTORY_EVENTS
from stockkeeper.services.reservations import ReserveRequest
from stockkeeper.services.stock import Receipt
from tests.e2e.messaging_helpers import Children, drop_rabbit_topology, outbox_status, wait_until
from tests.support import base_config

pytestmark = pytest.mark.slow

PAIRS = 60
SKUS = [f"SKU-{i}" for i in range(6)]
WAIT = 90.0
# The dispatcher that claimed an order's first event waits this long before publishing.
SLOW_FIRST_EVENT = f"dispatcher.before_publish.{ALLOCATED}=delay:150"


@pytest.fixture
async def observed(
    rabbit_url: str, broker_prefix: str
) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A queue of ours bound to the inventory events exchange, declared before any event
    is published; dropped afterwards with the test's topology."""
    conn = await aio_pika.connect(rabbit_url, timeout=10)
    try:
        channel = await conn.channel()
        exchange = await channel.declare_exchange(
            broker_prefix + INVENTORY_EVENTS, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(broker_prefix + "test.observed", durable=True)
        await queue.bind(exchange, routing_key="inventory.#")
        yield queue
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await conn.close()
        await drop_rabbit_topology(rabbit_url, broker_prefix)


async def write_pairs(cfg: dict[str, Any]) -> None:
    """Stock, then ``PAIRS`` orders each reserved and then released, in-process."""
    container = await build(Settings.model_validate(cfg))
    try:
        for i, sku in enumerate(SKUS):
            await container.stock.receive(Receipt(sku, 10 * PAIRS, f"rcpt-{i}"))
        for i in range(PAIRS):
            order = f"order-{i:03d}"
            line = OrderLine(SKUS[i % len(SKUS)], 1 + i % 3)
            await container.reservations.reserve(ReserveRequest(order, (line,)))
            await container.reservations.release(order, "changed mind")
    finally:
        await container.close()


async def drain(queue: aio_pika.abc.AbstractQueue) -> list[Envelope]:
    out: list[Envelope] = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        # The ordering key travels as a header (D-407): put back on the envelope here.
        key = (message.headers or {}).get(ORDERING_KEY_HEADER)
        key = key.decode() if isinstance(key, bytes) else key
        out.append(Envelope.parse(message.body).model_copy(update={"key": key}))
    return out


async def _all_sent(db_url: str) -> bool:
    conn = await asyncpg.connect(db_url)
    try:
        status = await outbox_status(conn)
    finally:
        await conn.close()
    return set(status) == {"SENT"}


async def test_three_dispatchers_never_publish_a_release_before_its_allocation(
    observed: aio_pika.abc.AbstractQueue,
    rabbit_url: str,
    broker_prefix: str,
    db_url: str,
    tmp_path: Path,
) -> None:
    cfg = base_config(
        db_url,
        database={"pool_size": 3},
        broker={"url": rabbit_url, "prefix": broker_prefix},
        dispatcher={"batch_size": 2, "poll_interval_ms": 200},
        logging={"level": "info"},
    )
    await write_pairs(cfg)

    with Children(tmp_path) as kids:
        dispatchers = [
            kids.dispatcher(cfg, failpoints=SLOW_FIRST_EVENT, label=f"dispatcher-{i}")
            for i in range(3)
        ]
        await wait_until(
            partial(_all_sent, db_url), timeout=WAIT, what="every event SENT", children=kids
        )
        published = [d.published() for d in dispatchers]
        assert all(d.returncode is None for d in dispatchers), kids.logs()
    assert sum(1 for p in published if p > 0) >= 2, published  # they did share the work

    seen = await drain(observed)
    reservation_events = [e for e in seen if e.type in (ALLOCATED, RELEASED)]
    assert len(reservation_events) >= 2 * PAIRS
    first: dict[str, str] = {}
    for e in reservation_events:
        assert e.key == f"order:{e.payload['order_id']}", e
        first.setdefault(e.payload["order_id"], e.type)
    released_first = sorted(o for o, t in first.items() if t == RELEASED)
    assert not released_first, released_first
    assert len(first) == PAIRS
