"""Waiting out a database outage: a consumer holds its message and tries again with
growing pauses for as long as the database cannot be reached, without spending an
attempt (so an outage of any length dead-letters nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from stockkeeper.domain.backoff import Backoff
from stockkeeper.observability.logging import get_logger
from stockkeeper.observability.metrics import Metrics
from stockkeeper.store.errors import StoreError, is_unavailable
from stockkeeper.store.pool import Pool, connection, ping
from stockkeeper.waiting import wait_any

log = get_logger("stockkeeper.consumer")

T = TypeVar("T")

# The pauses while the database cannot be reached: short at first (a failover is over in
# seconds), then every few seconds, for as long as it takes.
DATABASE_OUTAGE = Backoff(0.2, 5.0)
# Connection errors in a row, each while the database answered a ping, after which the
# error is the message's failure after all (a bug that looks like a lost connection).
HEALTHY_BUT_FAILING = 3


class ConsumerStopped(Exception):
    """The consumer was stopped while it waited for the database; the message goes
    back to the broker without an attempt counted."""


async def database_answers(pool: Pool) -> bool:
    """Whether the database takes a round trip on a pooled connection right now."""
    try:
        async with connection(pool) as conn:
            await ping(conn)
    except StoreError:
        return False
    return True


async def through_outages(
    work: Callable[[], Awaitable[T]],
    pool: Pool,
    stopping: asyncio.Event,
    *,
    consumer: str,
    message_id: str,
    metrics: Metrics,
) -> T:
    """``work()``, run again after a pause for as long as the database cannot be
    reached (each pause counted in ``consumer_outage_waits``); any other failure is
    raised. So is a connection error that keeps coming while the database answers
    (``HEALTHY_BUT_FAILING`` times in a row): that is no outage, and counts as a failure.
    Raises :class:`ConsumerStopped` when ``stopping`` is set while waiting."""
    waits = healthy_but_failing = 0
    while True:
        try:
            return await work()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            if await database_answers(pool):
                healthy_but_failing += 1
                if healthy_but_failing >= HEALTHY_BUT_FAILING:
                    raise
            else:
                healthy_but_failing = 0
            waits += 1
            pause = DATABASE_OUTAGE.delay(waits)
            metrics.consumer_outage_waits.labels(consumer=consumer).inc()
            log.warning(
                "consumer.database_unavailable",
                consumer=consumer,
                message_id=message_id,
                waits=waits,
                retry_in_s=pause,
                error=f"{type(exc).__name__}: {exc}",
            )
        await wait_any(stopping, at_most=pause)
        if stopping.is_set():
            raise ConsumerStopped(message_id)
