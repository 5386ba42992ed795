"""Retention: rows older than their table's retention go, newer ones stay, the ledger is
never touched, and every statement deletes a bounded batch without waiting on locks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.services.retention import Policy, Retention
from stockkeeper.store import consumer_log, retention
from stockkeeper.store.retention import Pruned
from stockkeeper.workers.expiry import ExpiryWorker

HOUR = 3600.0
OLD, NEW = 30, 20  # rows per table two hours old, and ten minutes old


async def fill(conn: Any) -> None:
    """Per pruned table OLD rows two hours old and NEW rows ten minutes old; and outbox
    events that are old but not SENT (never pruned)."""
    ts = (
        "SELECT g, now() - CASE WHEN g <= $1::int THEN interval '2 hours' "
        "ELSE interval '10 minutes' END AS t FROM generate_series(1, $1::int + $2::int) AS g"
    )
    await conn.execute(
        "INSERT INTO domain_event (event_id, event_type, payload, status, occurred_at, sent_at,"
        " ordering_key) "
        f"SELECT gen_random_uuid(), 'test.event', '{{}}', 'SENT', t, t, 'test.event' "
        f"FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    await conn.execute(
        "INSERT INTO domain_event (event_id, event_type, payload, status, occurred_at,"
        " ordering_key) "
        "SELECT gen_random_uuid(), 'test.event', '{}', s, now() - interval '2 hours', 'test.event' "
        "FROM unnest(ARRAY['PENDING', 'FAILED']) AS s"
    )
    await conn.execute(
        "INSERT INTO processed_message (consumer, message_id, processed_at) "
        f"SELECT 'test', gen_random_uuid(), t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    await conn.execute(
        "INSERT INTO consumer_position (consumer, sku, sequence, updated_at) "
        f"SELECT 'test', 'S-' || g, 1, t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    await conn.execute(
        "INSERT INTO idempotency_key (principal, key, method, path, request_hash, "
        "status_code, response, created_at) "
        f"SELECT 'p', 'k-' || g, 'POST', '/x', 'h', 200, 'null', t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    await conn.execute(
        "INSERT INTO wms_call (connector, operation, attempt, outcome, duration_ms, created_at) "
        f"SELECT 'wms-main', 'snapshot', 1, 'ok', 1.0, t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    await conn.execute(
        "INSERT INTO webhook_delivery (connector, event_id, received_at) "
        f"SELECT 'shop', 'evt-' || g, t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    await conn.execute(
        "INSERT INTO channel_push (channel, sku, version, quantity, changes, attempts, lag_ms,"
        " acked_at) "
        f"SELECT 'shop', 'S-' || g, 1, 1, 1, 1, 5.0, t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )


async def ages(conn: Any) -> dict[str, tuple[int, int]]:
    """Per table: (rows older than an hour, rows newer)."""
    age_of = {
        "domain_event": ("sent_at", "WHERE status = 'SENT'"),
        "processed_message": ("processed_at", ""),
        "consumer_position": ("updated_at", ""),
        "idempotency_key": ("created_at", ""),
        "wms_call": ("created_at", ""),
        "webhook_delivery": ("received_at", ""),
        "channel_push": ("acked_at", ""),
    }
    out = {}
    for table, (column, where) in age_of.items():
        row = await conn.fetchrow(
            f"SELECT count(*) FILTER (WHERE {column} < now() - interval '1 hour'), "
            f"count(*) FILTER (WHERE {column} >= now() - interval '1 hour') "
            f"FROM {table} {where}"
        )
        out[table] = (row[0], row[1])
    return out


def policy(batch_size: int, max_batches: int) -> Policy:
    return Policy(dict.fromkeys(Pruned, HOUR), batch_size, max_batches)


@pytest.fixture
async def filled(container: Container) -> Container:
    async with container.pool.acquire() as conn:
        await fill(conn)
        assert await ages(conn) == dict.fromkeys(
            [table.value for table in Pruned],
            (OLD, NEW),
        )
    return container


async def test_old_rows_go_and_newer_ones_stay(filled: Container) -> None:
    c = filled
    async with c.pool.acquire() as conn:
        ledger_before = await conn.fetchval("SELECT count(*) FROM inventory_ledger")
    deleted = await Retention(c.pool, policy(1000, 10), c.metrics).run()
    assert deleted == dict.fromkeys(Pruned, OLD)
    async with c.pool.acquire() as conn:
        assert set((await ages(conn)).values()) == {(0, NEW)}
        # Old events that are not SENT stay: PENDING is still to go out, FAILED is for
        # an operator.
        left = await conn.fetch(
            "SELECT status FROM domain_event WHERE status <> 'SENT' ORDER BY status"
        )
        assert [r["status"] for r in left] == ["FAILED", "PENDING"]
        assert await conn.fetchval("SELECT count(*) FROM inventory_ledger") == ledger_before
    for table in Pruned:
        counted = c.metrics.registry.get_sample_value(
            "stockkeeper_retention_deleted_total", {"table": table.value}
        )
        assert counted == OLD


async def test_each_statement_deletes_at_most_one_batch(filled: Container) -> None:
    c = filled
    async with c.pool.acquire() as conn:
        for table in Pruned:
            assert await retention.prune_batch(conn, table, HOUR, 7) == 7
    # A run stops after max_batches (3 x 7 = 21 of the 23 old rows left); the next run
    # takes the rest, and finds nothing more after that.
    r = Retention(c.pool, policy(7, 3), c.metrics)
    assert await r.run() == dict.fromkeys(Pruned, 21)
    assert await r.run() == dict.fromkeys(Pruned, OLD - 7 - 21)
    assert await r.run() == dict.fromkeys(Pruned, 0)
    async with c.pool.acquire() as conn:
        assert set((await ages(conn)).values()) == {(0, NEW)}


async def test_a_row_someone_holds_is_skipped_not_waited_for(filled: Container) -> None:
    c = filled
    async with c.pool.acquire() as holder, holder.transaction():
        held = await holder.fetchval(
            "SELECT message_id FROM processed_message ORDER BY processed_at LIMIT 1 FOR UPDATE"
        )
        # The pruner does not queue behind the holder's lock: it deletes the rest.
        n = await asyncio.wait_for(
            Retention(c.pool, policy(1000, 10), c.metrics).prune(Pruned.PROCESSED_MESSAGES),
            timeout=10,
        )
        assert n == OLD - 1
    async with c.pool.acquire() as conn:
        assert await conn.fetchval(
            "SELECT count(*) FROM processed_message WHERE message_id = $1", held
        )
    assert (
        await Retention(c.pool, policy(1000, 10), c.metrics).prune(Pruned.PROCESSED_MESSAGES) == 1
    )


async def test_a_position_that_moves_is_young_again(container: Container) -> None:
    c = container
    async with c.pool.acquire() as conn:
        assert await consumer_log.advance_position(conn, "test", "S-1", 1)
        await conn.execute("UPDATE consumer_position SET updated_at = now() - interval '2 hours'")
        # A stale event does not move the position, nor make it young.
        assert not await consumer_log.advance_position(conn, "test", "S-1", 1)
        assert await retention.prune_batch(conn, Pruned.CONSUMER_POSITIONS, 2 * HOUR + 60, 10) == 0
        assert await conn.fetchval(
            "SELECT updated_at < now() - interval '1 hour' FROM consumer_position"
        )
        assert await consumer_log.advance_position(conn, "test", "S-1", 2)
        assert await retention.prune_batch(conn, Pruned.CONSUMER_POSITIONS, HOUR, 10) == 0
        assert await conn.fetchval("SELECT sequence FROM consumer_position") == 2


@pytest.fixture
def config(config: dict[str, Any]) -> dict[str, Any]:
    config["broker"] = {"retry_base_ms": 100, "retry_max_ms": 200, "max_attempts": 2}
    config["retention"] = {
        "outbox_sent_s": 3600,
        "processed_message_s": 3600,
        "consumer_position_s": 3600,
        "wms_call_s": 3600,
        "webhook_delivery_s": 3600,
        "batch_size": 4,
    }
    config["api"] = {**config["api"], "idempotency_ttl_seconds": 3600}
    config["propagation"] = {"push_log_retention_s": 3600}
    return config


async def test_the_expiry_worker_prunes_by_the_configured_retention(filled: Container) -> None:
    worker = ExpiryWorker(filled)
    assert worker.retention.policy.batch_size == 4
    assert await worker.prune() == len(Pruned) * OLD
    async with filled.pool.acquire() as conn:
        assert set((await ages(conn)).values()) == {(0, NEW)}
