"""The LISTEN helper on a real PostgreSQL: it wakes its subscribers, and it comes back
after its backend is terminated."""

from __future__ import annotations

import asyncio

import asyncpg

from stockkeeper.store.listener import Listener, listen_then_poll
from stockkeeper.store.pool import Pool


async def _pool(db_url: str) -> Pool:
    pool: Pool = await asyncpg.create_pool(db_url, min_size=1, max_size=3)
    return pool


async def test_a_notify_wakes_the_subscribers_of_its_channel_and_payload(db_url: str) -> None:
    pool = await _pool(db_url)
    listener = Listener(pool, "test")
    any_ = listener.subscribe("ch")
    only_a = listener.subscribe("ch", "a")
    only_b = listener.subscribe("ch", "b")
    try:
        async with listener:
            await pool.execute("SELECT pg_notify('ch', 'a')")
            await asyncio.wait_for(only_a.wait(), 5)
            await asyncio.wait_for(any_.wait(), 5)
            assert not only_b.is_set()
    finally:
        await pool.close()


async def test_a_terminated_listen_backend_is_reopened_and_wakes_again(db_url: str) -> None:
    pool = await _pool(db_url)
    reconnected = asyncio.Event()
    listener = Listener(pool, "test", health_every_s=0.05, on_reconnect=reconnected.set)
    woken = listener.subscribe("ch")
    try:
        async with listener:
            assert listener._conn is not None
            pid = listener._conn.get_server_pid()
            await pool.execute("SELECT pg_terminate_backend($1)", pid)
            await asyncio.wait_for(reconnected.wait(), 10)
            assert listener.healthy
            assert listener.reconnects == 1
            woken.clear()
            await pool.execute("SELECT pg_notify('ch', 'x')")
            await asyncio.wait_for(woken.wait(), 5)
    finally:
        await pool.close()


async def test_listen_then_poll_runs_again_at_once_while_there_is_more() -> None:
    stop, wake = asyncio.Event(), asyncio.Event()
    calls: list[int] = []
    errors: list[Exception] = []

    async def step() -> bool:
        calls.append(len(calls))
        if len(calls) == 2:
            raise RuntimeError("boom")
        if len(calls) == 5:
            stop.set()
        return len(calls) < 4

    await asyncio.wait_for(
        listen_then_poll(step, wake, stop, poll_s=0.01, on_error=errors.append), 10
    )
    assert len(calls) == 5
    assert [str(e) for e in errors] == ["boom"]
