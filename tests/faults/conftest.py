"""Fixtures of the fault tests: servers of their own, never the machine's shared ones."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from stockkeeper.store.migrate import migrate
from tests.faults.servers import PrivatePostgres, PrivateRabbit

Predicate = Callable[[], bool | Awaitable[bool]]


async def eventually(predicate: Predicate, timeout: float = 20.0, what: str = "") -> None:
    """Wait until ``predicate`` holds, checking every 50 ms, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {what or predicate}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def private_pg() -> AsyncIterator[PrivatePostgres]:
    """A PostgreSQL cluster of this test's own, migrated, that it may stop and start."""
    pg = PrivatePostgres()
    try:
        await asyncio.to_thread(pg.start)
        conn = await asyncpg.connect(pg.url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield pg
    finally:
        await asyncio.to_thread(pg.remove)


@pytest.fixture(scope="module")
async def private_rabbit() -> AsyncIterator[PrivateRabbit]:
    """A RabbitMQ node of this module's own (its own node name, ports and data); it
    takes tens of seconds to start, so the tests of a module share it (each under its
    own prefix)."""
    node = PrivateRabbit()
    try:
        await asyncio.to_thread(node.start)
        yield node
    finally:
        await asyncio.to_thread(node.remove)
