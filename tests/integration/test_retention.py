"""Retention: rows older than their table's retention go, newer ones stay, the ledger is
never touched, and every statement deletes a bounded batch without waiting on locks."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.services.retention import Policy, Retention
from stockkeeper.store import consumer_log, retention, wms
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
    # Resolved dead letters, alternately replayed and discarded, by their resolution.
    await conn.execute(
        "INSERT INTO dead_letter (queue, routing_key, error, attempts, status, created_at, "
        "resolved_at, resolved_by) "
        "SELECT 'q', 'k', 'boom', 1, (ARRAY['REPLAYED', 'DISCARDED'])[g % 2 + 1], "
        f"t - interval '1 day', t, 'ops' FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    # Outbound items the WMS accepted, by their send.
    await conn.execute(
        "INSERT INTO wms_outbound_item (connector, event_id, message_id, action, order_id, "
        "sku, location, quantity, status, created_at, sent_at) "
        "SELECT 'wms-main', 'ev-' || g, gen_random_uuid(), 'allocate', 'o-' || g, 'S-1', "
        f"'main', 1, 'SENT', t, t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    # WMS syncs that ended, alternately DONE and FAILED, by their end.
    await conn.execute(
        "INSERT INTO wms_sync_request (connector, kind, reason, requested_by, status, "
        "created_at, started_at, finished_at) "
        "SELECT 'wms-main', 'incremental', 'scheduled', 'scheduler', "
        f"(ARRAY['DONE', 'FAILED'])[g % 2 + 1], t, t, t FROM ({ts}) AS ts",
        OLD,
        NEW,
    )
    await fill_open(conn)


async def fill_open(conn: Any) -> None:
    """Rows as old as the pruned ones that retention must never touch: open dead
    letters, WMS items still to send or dead, syncs still to run, and what applies a
    sale, a receipt or an adjustment once, orders and reservations (kept forever)."""
    old = "now() - interval '400 days'"
    await conn.execute(
        "INSERT INTO dead_letter (queue, routing_key, error, attempts, created_at) "
        f"SELECT 'q', 'k', 'boom', 1, {old} FROM generate_series(1, 3)"
    )
    await conn.execute(
        "INSERT INTO wms_outbound_item (connector, event_id, message_id, action, order_id, "
        "sku, location, quantity, status, created_at) "
        "SELECT 'wms-main', 'open-' || s, gen_random_uuid(), 'allocate', 'o', 'S-1', "
        f"'main', 1, s, {old} FROM unnest(ARRAY['PENDING', 'DEAD']) AS s"
    )
    await conn.execute(
        "INSERT INTO wms_sync_request (connector, kind, reason, requested_by, status, "
        "created_at, started_at, heartbeat_at) "
        f"SELECT 'wms-main', 'full', 'asked', 'ops', s, {old}, {old}, {old} "
        "FROM unnest(ARRAY['PENDING', 'IN_PROGRESS']) AS s"
    )
    await conn.execute(
        "INSERT INTO ingested_sale (source, transaction_id, sku, delta, applied_at) "
        f"SELECT 'shop', 'tx-' || g, 'S-1', -1, {old} FROM generate_series(1, 3) AS g"
    )
    await conn.execute(
        "INSERT INTO applied_reference (kind, reference_id, request_hash, response, "
        f"created_at) SELECT 'receipt', 'r-' || g, 'h', 'null', {old} "
        "FROM generate_series(1, 3) AS g"
    )
    await conn.execute(
        "INSERT INTO orders (order_id, status, lines, ship_to, created_at, updated_at) "
        f"SELECT 'ord-' || g, 'SHIPPED', '[]', '{{}}', {old}, {old} "
        "FROM generate_series(1, 3) AS g"
    )
    await conn.execute(
        "INSERT INTO reservation (order_id, status, lines, expires_at, created_at, "
        f"updated_at) SELECT 'res-' || g, 'FULFILLED', '[]', {old}, {old}, {old} "
        "FROM generate_series(1, 3) AS g"
    )


KEPT = {
    "dead_letter": "status = 'DEAD'",
    "wms_outbound_item": "status IN ('PENDING', 'DEAD')",
    "wms_sync_request": "status IN ('PENDING', 'IN_PROGRESS')",
    "ingested_sale": "true",
    "applied_reference": "true",
    "orders": "true",
    "reservation": "true",
}


async def kept(conn: Any) -> dict[str, int]:
    """Per table, the rows retention must never prune (fill_open's)."""
    return {
        table: await conn.fetchval(f"SELECT count(*) FROM {table} WHERE {where}")
        for table, where in KEPT.items()
    }


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
        "dead_letter": ("resolved_at", "WHERE status <> 'DEAD'"),
        "wms_outbound_item": ("sent_at", "WHERE status = 'SENT'"),
        "wms_sync_request": ("finished_at", "WHERE status IN ('DONE', 'FAILED')"),
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
        # Open dead letters, unsent or dead WMS items, syncs still to run, the sales,
        # receipts and adjustments applied once, orders and reservations: all stay,
        # however old.
        assert await kept(conn) == {
            "dead_letter": 3,
            "wms_outbound_item": 2,
            "wms_sync_request": 2,
            "ingested_sale": 3,
            "applied_reference": 3,
            "orders": 3,
            "reservation": 3,
        }
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
        "dead_letter_resolved_s": 3600,
        "wms_outbound_sent_s": 3600,
        "wms_sync_finished_s": 3600,
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


async def test_a_sent_wms_item_still_refuses_its_redelivery_inside_its_window(
    container: Container,
) -> None:
    """An allocation the WMS took two hours ago, its consumer's idempotency mark already
    pruned (an hour's retention): with wms_outbound_sent_s at three hours the item stays,
    and the same event arriving again queues nothing. Past the window it goes."""
    c = container
    message_id = uuid.uuid4()
    async with c.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO wms_outbound_item (connector, event_id, message_id, action, "
            "order_id, sku, location, quantity, status, created_at, sent_at) "
            "VALUES ('wms-main', 'ev-1', $1, 'allocate', 'o-1', 'S-1', 'main', 2, 'SENT', "
            "now() - interval '2 hours', now() - interval '2 hours')",
            message_id,
        )
        await conn.execute(
            "INSERT INTO processed_message (consumer, message_id, processed_at) "
            "VALUES ('wms.outbound', $1, now() - interval '2 hours')",
            message_id,
        )
    keep = dict.fromkeys(Pruned, HOUR) | {Pruned.SENT_WMS_ITEMS: 3 * HOUR}
    deleted = await Retention(c.pool, Policy(keep, 1000, 10), c.metrics).run()
    assert (deleted[Pruned.PROCESSED_MESSAGES], deleted[Pruned.SENT_WMS_ITEMS]) == (1, 0)
    async with c.pool.acquire() as conn:
        await wms.insert_outbound(
            conn, "wms-main", message_id, [("ev-1", "allocate", "o-1", "S-1", "main", None, 2)]
        )
        rows = await conn.fetch("SELECT status FROM wms_outbound_item WHERE event_id = 'ev-1'")
        assert [r["status"] for r in rows] == ["SENT"]
        assert await retention.prune_batch(conn, Pruned.SENT_WMS_ITEMS, HOUR, 10) == 1
        assert await conn.fetchval("SELECT count(*) FROM wms_outbound_item") == 0
