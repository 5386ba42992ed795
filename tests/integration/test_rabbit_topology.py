"""The topology as the machine's RabbitMQ reports it (``rabbitmqctl``) once a broker of
ours connected: topic exchanges, durable quorum queues with their own delivery limit
and at-least-once dead-lettering, and the bindings of ARCHITECTURE section 5's table."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest

from stockkeeper.messaging.broker import BrokerUnavailable
from stockkeeper.messaging.rabbitmq import DEAD_LETTER_QUEUE, DELIVERY_LIMIT, RabbitMQBroker
from stockkeeper.messaging.topology import EXCHANGES, QUEUES
from tests.support import free_port

TABLE_BINDINGS = {
    ("inventory.events", "wms.outbound", "inventory.allocated"),
    ("inventory.events", "wms.outbound", "inventory.released"),
    ("inventory.events", "wms.outbound", "inventory.confirmed"),
    ("inventory.events", "wms.outbound", "inventory.expired"),
    ("inventory.events", "channel.propagation", "inventory.level_changed"),
    ("inventory.events", "channel.propagation", "inventory.levels_changed"),
    ("wms.commands", "wms.sync", "wms.sync.force"),
    ("wms.commands", "wms.sync", "wms.sync.scheduled"),
    ("inventory.ingest", "inventory.ingest", "ingest.*"),
    ("orders.saga", "orders.saga", "order.*"),
    # The saga follows its reservations (beyond the table, which it does not forbid).
    ("inventory.events", "orders.saga", "inventory.expired"),
    ("inventory.events", "orders.saga", "inventory.released"),
    ("inventory.events", "orders.saga", "inventory.fulfilled"),
}


def ctl(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args, "--formatter", "json"],
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    rows: list[dict[str, Any]] = json.loads(out)
    return rows


@pytest.fixture
async def declared(rabbit_url: str, broker_prefix: str) -> AsyncIterator[str]:
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("no rabbitmqctl on this machine")
    try:
        await asyncio.to_thread(ctl, "list_exchanges", "name")
    except (subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"rabbitmqctl cannot reach the node: {exc}")
    broker = RabbitMQBroker(rabbit_url, prefix=broker_prefix)
    await broker.connect()
    try:
        yield broker_prefix
    finally:
        await broker.close()  # the broker_prefix fixture deletes the topology


def arguments(row: dict[str, Any]) -> dict[str, Any]:
    args = row["arguments"]
    # rabbitmqctl prints a table as [key, value] (or [key, type, value]) lists.
    return {a[0]: a[-1] for a in args} if isinstance(args, list) else dict(args)


async def test_the_broker_shows_the_tables_topology(declared: str) -> None:
    p = declared
    exchanges = {
        r["name"]: r
        for r in await asyncio.to_thread(ctl, "list_exchanges", "name", "type", "durable")
    }
    for name in EXCHANGES:
        assert exchanges[p + name]["type"] == "topic"
        assert exchanges[p + name]["durable"] is True

    queues = {
        r["name"]: r
        for r in await asyncio.to_thread(ctl, "list_queues", "name", "durable", "type", "arguments")
    }
    for spec in QUEUES:
        q = queues[p + spec.name]
        assert (q["durable"], q["type"]) == (True, "quorum")
        a = arguments(q)
        assert a["x-queue-type"] == "quorum"
        assert a["x-delivery-limit"] == DELIVERY_LIMIT
        assert a["x-dead-letter-strategy"] == "at-least-once"
        assert a["x-overflow"] == "reject-publish"  # what at-least-once requires
        assert a["x-dead-letter-exchange"] == ""
        assert a["x-dead-letter-routing-key"] == p + DEAD_LETTER_QUEUE
    assert queues[p + DEAD_LETTER_QUEUE]["type"] == "quorum"

    bindings = {
        (r["source_name"][len(p) :], r["destination_name"][len(p) :], r["routing_key"])
        for r in await asyncio.to_thread(
            ctl, "list_bindings", "source_name", "destination_name", "routing_key"
        )
        if r["source_name"].startswith(p) and r["destination_name"].startswith(p)
    }
    assert bindings == TABLE_BINDINGS


async def test_a_failed_connect_leaves_no_open_connection_behind() -> None:
    """A broker that cannot be reached at connect leaves no RobustConnection unclosed for
    the garbage collector: aio-pika's __del__ cannot schedule the close when the
    collector runs it outside the event loop, and the coroutine it made is reported as
    never awaited (a warning this suite turns into an error in whatever test runs then)."""

    def unclosed() -> set[int]:
        return {
            id(o)
            for o in gc.get_objects()
            if isinstance(o, aio_pika.RobustConnection) and not o.is_closed
        }

    before = unclosed()
    down = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{free_port()}/", prefix="down.")
    with pytest.raises(BrokerUnavailable):
        await down.connect()
    assert unclosed() - before == set()
