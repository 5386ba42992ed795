"""Recording level changes per channel in bulk (D-420): a SKU new to a channel is
written once, holding its level; a row another transaction creates between the lock
and the write is judged again, so the newer level still wins; and the lock of a bulk
message probes the primary key per (sku, channel) whatever the table's statistics."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stockkeeper.bootstrap import Container, build
from stockkeeper.config import Settings
from stockkeeper.services.propagation import LevelChange
from stockkeeper.store.sql import q, rows_param
from tests.conftest import FakeClock

A, B = "shop-a", "shop-b"
SECRET_ENV = "SK_TEST_CHANNEL_SECRET"
T0 = datetime.now(UTC) - timedelta(minutes=5)


@pytest.fixture
async def c(
    config: dict[str, Any], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Container]:
    monkeypatch.setenv(SECRET_ENV, "s3cret-for-tests")
    config["connectors"] = [
        {"id": ch, "type": "outbound_webhook", "url": f"http://127.0.0.1:9/{ch}",
         "secret_env": SECRET_ENV}
        for ch in (A, B)
    ]  # fmt: skip
    container = await build(Settings.model_validate(config), clock=clock)
    yield container
    await container.close()


async def states(c: Container, sku: str) -> dict[str, tuple[Any, ...]]:
    async with c.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT channel, desired_version, desired_quantity, status, pending_changes "
            "FROM channel_sync_state WHERE sku = $1 ORDER BY channel",
            sku,
        )
    return {r["channel"]: tuple(r)[1:] for r in rows}


async def test_skus_new_to_the_channels_are_written_once_holding_their_level(
    c: Container,
) -> None:
    """500 new SKUs on two channels: 1,000 rows inserted, none updated (before, each was
    inserted as "never told" and then updated: two writes, and a lock, per row)."""
    changes = [LevelChange(f"N-{i:04}", 1, i % 7, T0, "erp") for i in range(500)]
    async with c.pool.acquire() as conn, conn.transaction():
        await c.propagation.record_batch(conn, changes)
        ins, upd = await conn.fetchrow(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_xact_user_tables "
            "WHERE relname = 'channel_sync_state'"
        )
    assert (ins, upd) == (1_000, 0)
    assert await states(c, "N-0003") == dict.fromkeys((A, B), (1, 3, "PENDING", 1))
    # And a later change of the same SKUs updates the rows in place.
    async with c.pool.acquire() as conn, conn.transaction():
        await c.propagation.record_batch(conn, [LevelChange("N-0003", 2, 9, T0, "erp")])
    assert await states(c, "N-0003") == dict.fromkeys((A, B), (2, 9, "PENDING", 2))


@pytest.mark.parametrize(("first", "second", "wins"), [(1, 2, 2), (2, 1, 2)])
async def test_a_row_created_meanwhile_by_another_transaction_is_judged_again(
    c: Container, first: int, second: int, wins: int
) -> None:
    """Two consumers record the same new SKU at once. The second finds no row, judges
    it as never told, and its insert waits for the first; once the first commits, the
    second judges again against what the first wrote. The newer version wins in either
    order (without the second look, version 2 arriving second was lost)."""
    p = c.propagation
    async with c.pool.acquire() as one, c.pool.acquire() as two:
        tx = one.transaction()
        await tx.start()
        await p.record_batch(one, [LevelChange("RACE", first, first * 10, T0, "erp")])

        async def record_second() -> None:
            async with two.transaction():
                await p.record_batch(two, [LevelChange("RACE", second, second * 10, T0, "erp")])

        task = asyncio.ensure_future(record_second())
        pid = two.get_server_pid()
        deadline = time.monotonic() + 10
        while not await one.fetchval(
            "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1", pid
        ):
            assert not task.done(), "the second recorded without waiting for the first"
            assert time.monotonic() < deadline, "the second never waited for the first's row"
            await asyncio.sleep(0.01)
        await tx.commit()
        await asyncio.wait_for(task, 10)
    changes = 2 if wins == second else 1  # a stale second change is not counted
    assert await states(c, "RACE") == dict.fromkeys((A, B), (wins, wins * 10, "PENDING", changes))


async def test_the_bulk_lock_probes_the_primary_key_on_a_table_never_analyzed(
    c: Container,
) -> None:
    """30,000 rows, no statistics (as in a first sync with autovacuum behind): each of
    a 500-SKU message's (sku, channel) pairs is one index probe on both key columns,
    with no filter. The form before (`sku = ANY(..) AND channel = ANY(..)`) was planned
    as a scan of the channels' whole key range filtered by the SKU array, growing with
    the table (170 ms a message at 600,000 rows)."""
    async with c.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO channel_sync_state (channel, sku) "
            "SELECT ch, 'S-' || lpad(i::text, 6, '0') FROM generate_series(1, 15000) AS i "
            "CROSS JOIN unnest($1::text[]) AS ch",
            [A, B],
        )
        pairs = [(f"S-{i:06}", ch) for i in range(7_000, 7_500) for ch in (A, B)]
        async with conn.transaction():
            got = await conn.fetchval(
                "EXPLAIN (FORMAT JSON) " + q("lock_sync_rows_bulk"), rows_param(pairs)
            )
    plan = (json.loads(got) if isinstance(got, str) else got)[0]["Plan"]
    scans = [n for n in _nodes(plan) if n.get("Relation Name") == "channel_sync_state"]
    assert scans, plan
    for scan in scans:
        assert scan["Node Type"] == "Index Scan", scan
        cond = scan.get("Index Cond", "")
        assert "channel" in cond, scan
        assert "sku" in cond, scan
        assert "Filter" not in scan, scan


def _nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    out = [node]
    for child in node.get("Plans", []):
        out += _nodes(child)
    return out
