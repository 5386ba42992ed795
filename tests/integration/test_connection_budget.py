"""The start-up check of the server's free connection slots, and the suite's own
connection budget, on the real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from stockkeeper.bootstrap import Container, check_room
from stockkeeper.config import DatabaseConfig
from stockkeeper.store.budget import server_room
from stockkeeper.store.pool import create_pool
from tests.integration.test_broker_contract import eventually
from tests.support import ConnectionSampler


async def test_server_room_reads_the_servers_numbers(container: Container) -> None:
    async with container.pool.acquire() as conn:
        room = await server_room(conn)
        max_connections = int(await conn.fetchval("SHOW max_connections"))
    assert room.max_connections == max_connections
    assert room.reserved >= 0
    assert room.in_use >= 1  # this connection at least
    assert room.free <= max_connections - room.reserved - 1


async def test_a_pool_the_server_has_no_room_for_is_reported(container: Container) -> None:
    with structlog.testing.capture_logs() as logs:
        fits = await check_room(container.pool, container.session_pool, container.settings)
    assert fits == 0
    # What fits is said at debug only: `stockkeeper audit` and the like print their own
    # output, not a line of connection figures first (D-389).
    assert [e["log_level"] for e in logs] == ["debug"], logs
    # A process that may open more connections than the server has slots left.
    greedy = await create_pool(
        container.settings.database.url or "", DatabaseConfig(), size=100_000
    )
    try:
        short = await check_room(greedy, greedy, container.settings)
    finally:
        await greedy.close()
    assert short > 99_000  # and database.connections_short was logged, naming the numbers


async def test_the_suite_sampler_counts_the_suites_connections(db_url: str, admin_url: str) -> None:
    sampler = ConnectionSampler(admin_url, every_s=0.02).start()
    try:
        sampler.begin("here")
        conns = [await asyncpg.connect(db_url) for _ in range(3)]
        try:
            await eventually(lambda: sampler.test_peak >= 3, what="3 sampled")
        finally:
            await asyncio.gather(*(c.close() for c in conns))
        assert sampler.end() >= 3
    finally:
        sampler.stop()
    assert sampler.error is None
