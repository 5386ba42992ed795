"""The hot queries use their indexes on tables big enough for the planner to care.

Tables are filled with generate_series and ANALYZEd; the planner is left free to choose
(no enable_seqscan=off), so a missing or unusable index shows up as a Seq Scan.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from stockkeeper.bootstrap import Container
from stockkeeper.store import retention
from stockkeeper.store.retention import Pruned
from stockkeeper.store.sql import q

ROWS = 20_000


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


async def explain(conn: Any, sql: str, *args: Any) -> list[dict[str, Any]]:
    """Every node of the plan PostgreSQL picks for ``sql`` with these parameters."""
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    doc = json.loads(raw) if isinstance(raw, str) else raw
    return list(_nodes(doc[0]["Plan"]))


def scans_of(plan: list[dict[str, Any]], table: str) -> list[tuple[str, str | None]]:
    """How the plan reads ``table``: (node type, index name) per access path."""
    out: list[tuple[str, str | None]] = []
    for n in plan:
        if n.get("Relation Name") != table:
            continue
        if n["Node Type"] == "Bitmap Heap Scan":
            out += [
                (m["Node Type"], m.get("Index Name"))
                for m in _nodes(n)
                if m["Node Type"] == "Bitmap Index Scan"
            ]
        else:
            out.append((n["Node Type"], n.get("Index Name")))
    return out


def assert_uses_index(plan: list[dict[str, Any]], table: str, index: str) -> None:
    scans = scans_of(plan, table)
    assert scans, plan
    assert ("Seq Scan", None) not in scans, scans
    assert index in {name for _, name in scans}, scans


@pytest.fixture
async def filled(container: Container) -> Container:
    """20k reservations (1 in 50 PENDING) and 20k batches over 2000 SKUs x 10 locations,
    with one ledger entry per batch."""
    async with container.pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO reservation (order_id, status, lines, expires_at)
            SELECT 'o-' || g,
                   CASE WHEN g % 50 = 0 THEN 'PENDING'
                        ELSE (ARRAY['CONFIRMED', 'CANCELLED', 'EXPIRED', 'FULFILLED'])[g % 4 + 1]
                   END,
                   '[]'::jsonb,
                   timestamptz '2030-01-01 00:00+00' + (g % 1000) * interval '1 hour'
            FROM generate_series(1, $1::int) AS g
            """,
            ROWS,
        )
        await conn.execute(
            "INSERT INTO sku (sku) SELECT 'S-' || lpad(g::text, 4, '0') "
            "FROM generate_series(1, $1::int) AS g",
            ROWS // 10,
        )
        await conn.execute(
            "INSERT INTO location (code) SELECT 'wh-' || g FROM generate_series(1, 10) AS g"
        )
        await conn.execute(
            """
            INSERT INTO sku_batch (sku, location, lot_number, on_hand)
            SELECT s.sku, l.code, 'LOT-1', 5
            FROM sku s CROSS JOIN location l
            WHERE l.code <> 'default'
            """
        )
        await conn.execute(
            """
            INSERT INTO inventory_ledger (batch_id, sku, entry_type, d_on_hand, source)
            SELECT id, sku, 'RECEIPT', 5, 'test' FROM sku_batch
            """
        )
        assert await conn.fetchval("SELECT count(*) FROM sku_batch") == ROWS
        await conn.execute("ANALYZE reservation, sku, location, sku_batch, inventory_ledger")
    return container


async def test_expiry_claim_uses_the_partial_pending_index(filled: Container) -> None:
    now = datetime(2030, 1, 5, tzinfo=UTC)
    async with filled.pool.acquire() as conn:
        plan = await explain(conn, q("claim_overdue_reservations"), now, 200)
        assert_uses_index(plan, "reservation", "reservation_pending_due")
        # And it answers what the worker needs: PENDING, due, soonest first, at most limit.
        async with conn.transaction():
            rows = await conn.fetch(q("claim_overdue_reservations"), now, 200)
        expected = await conn.fetchval(
            "SELECT count(*) FROM reservation WHERE status = 'PENDING' AND expires_at <= $1",
            now,
        )
        small = await conn.fetch(q("claim_overdue_reservations"), now, 5)
    assert 5 < len(rows) == expected < 200
    assert {r["status"] for r in rows} == {"PENDING"}
    assert all(r["expires_at"] <= now for r in rows)
    due = [r["expires_at"] for r in rows]
    assert due == sorted(due)
    assert [r["expires_at"] for r in small] == due[:5]


async def test_batch_reads_and_ledger_pages_use_their_indexes(filled: Container) -> None:
    async with filled.pool.acquire() as conn:
        # read_batches serves the conditional and optimistic strategies, lock_batches the
        # row_lock strategy and adjustments, sku_batches the stock reads.
        for query in ("read_batches", "lock_batches", "sku_batches"):
            for skus in (["S-0042"], ["S-0042", "S-1999", "S-0007"]):
                plan = await explain(conn, q(query), skus)
                assert_uses_index(plan, "sku_batch", "sku_batch_identity")
            rows = await conn.fetch(q(query), ["S-0042", "S-0007"])
            assert len(rows) == 20
            assert {r["sku"] for r in rows} == {"S-0042", "S-0007"}
        plan = await explain(conn, q("ledger_page"), "S-0042", 0, 100)
        assert_uses_index(plan, "inventory_ledger", "inventory_ledger_sku")


async def test_the_outbox_hold_back_reads_only_the_rows_below_the_claim(
    container: Container,
) -> None:
    """outbox_blocked_keys, run on every claim: on a long SENT history and a backlog of
    PENDING rows over many keys, it reads the PENDING rows below the claim by range on
    domain_event_pending (D-130), not the backlog."""
    async with container.pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO domain_event (event_id, event_type, payload, status, ordering_key)
            SELECT gen_random_uuid(), 'inventory.released', '{}'::jsonb,
                   CASE WHEN g > $1::int - $2::int THEN 'PENDING' ELSE 'SENT' END,
                   'order:o-' || (g % 2000)
            FROM generate_series(1, $1::int) AS g
            """,
            2 * ROWS,
            ROWS // 4,
        )
        await conn.execute("ANALYZE domain_event")
        claimed = await conn.fetch(
            "SELECT id, ordering_key FROM domain_event WHERE status = 'PENDING' "
            "ORDER BY id OFFSET 100 LIMIT 50"
        )
        keys = sorted({r["ordering_key"] for r in claimed})
        ids = [r["id"] for r in claimed]
        plan = await explain(conn, q("outbox_blocked_keys"), keys, max(ids), ids)
        assert_uses_index(plan, "domain_event", "domain_event_pending")
        (scan,) = [n for n in plan if n.get("Relation Name") == "domain_event"]
        assert scan["Plan Rows"] < 1000, scan  # the 150 below the claim, not the 5000
        # The 100 PENDING rows below ours are another dispatcher's: every key with one
        # of them is held, from its first one.
        held = {
            r["ordering_key"]: r["first_held"]
            for r in await conn.fetch(q("outbox_blocked_keys"), keys, max(ids), ids)
        }
        expected = await conn.fetch(
            "SELECT ordering_key, min(id) AS first FROM domain_event "
            "WHERE status = 'PENDING' AND id < $1 AND ordering_key = ANY($2::text[]) "
            "GROUP BY ordering_key",
            min(ids),
            keys,
        )
    assert held == {r["ordering_key"]: r["first"] for r in expected}


@pytest.fixture
async def messaging_filled(container: Container) -> Container:
    """The messaging tables as after weeks of traffic: 20k outbox events (almost all SENT,
    sent over the last 20 days; 1 in 100 PENDING, 1 in 400 FAILED), 20k queue messages
    over 20 busy queues and a quiet one (1 in 400), 20k channel rows over 2 channels
    (1 in 50 due), and 20k rows each of processed_message, consumer_position,
    idempotency_key, wms_call, webhook_delivery and channel_push spread over 20 days;
    and 20k each of dead letters, WMS outbound items and WMS syncs, mostly resolved."""
    async with container.pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO domain_event (event_id, event_type, payload, status, attempts,
                                      occurred_at, sent_at, ordering_key)
            SELECT gen_random_uuid(), 'stock.changed', '{}', st, 1, t, t, 'stock.changed'
            FROM (SELECT CASE WHEN g % 100 = 0 THEN 'PENDING'
                              WHEN g % 400 = 1 THEN 'FAILED' ELSE 'SENT' END AS st,
                         now() - ($1::int - g) * interval '86 seconds' AS t
                  FROM generate_series(1, $1::int) AS g) AS ev
            """,
            ROWS,
        )
        await conn.execute(
            "UPDATE domain_event SET sent_at = NULL WHERE status <> 'SENT'",
        )
        await conn.execute(
            """
            INSERT INTO queue_message (queue, message_id, exchange, routing_key, body,
                                       available_at)
            SELECT CASE WHEN g % 400 = 0 THEN 'quiet' ELSE 'q' || g % 20 END,
                   gen_random_uuid(), 'stockkeeper.events', 'stock.changed',
                   '\\x00'::bytea, now() - interval '1 minute'
            FROM generate_series(1, $1::int) AS g
            """,
            ROWS,
        )
        await conn.execute(
            """
            INSERT INTO channel_sync_state (channel, sku, status, pending_since, pending_changes)
            SELECT 'ch' || g % 2, 'S-' || g,
                   CASE WHEN g % 50 = 0 THEN 'PENDING' ELSE 'SYNCED' END,
                   CASE WHEN g % 50 = 0 THEN now() - interval '1 second' END,
                   CASE WHEN g % 50 = 0 THEN 1 ELSE 0 END
            FROM generate_series(1, $1::int) AS g
            """,
            ROWS,
        )
        spread = "now() - g * interval '86 seconds'"
        await conn.execute(
            "INSERT INTO processed_message (consumer, message_id, processed_at) "
            f"SELECT 'c' || g % 5, gen_random_uuid(), {spread} "
            "FROM generate_series(1, $1::int) AS g",
            ROWS,
        )
        await conn.execute(
            "INSERT INTO consumer_position (consumer, sku, sequence, updated_at) "
            f"SELECT 'c' || g % 5, 'S-' || g, g, {spread} FROM generate_series(1, $1::int) AS g",
            ROWS,
        )
        await conn.execute(
            "INSERT INTO idempotency_key (principal, key, method, path, request_hash, "
            "status_code, response, created_at) "
            f"SELECT 'p', 'k-' || g, 'POST', '/x', 'h', 200, 'null', {spread} "
            "FROM generate_series(1, $1::int) AS g",
            ROWS,
        )
        await conn.execute(
            "INSERT INTO wms_call (connector, operation, attempt, outcome, duration_ms, "
            f"created_at) SELECT 'wms-main', 'snapshot', 1, 'ok', 1.0, {spread} "
            "FROM generate_series(1, $1::int) AS g",
            ROWS,
        )
        await conn.execute(
            "INSERT INTO webhook_delivery (connector, event_id, received_at) "
            f"SELECT 'shop', 'evt-' || g, {spread} FROM generate_series(1, $1::int) AS g",
            ROWS,
        )
        await conn.execute(
            "INSERT INTO channel_push (channel, sku, version, quantity, changes, attempts, "
            f"lag_ms, acked_at) SELECT 'ch' || g % 2, 'S-' || g, 1, 1, 1, 1, 5.0, {spread} "
            "FROM generate_series($1::int, 1, -1) AS g",
            ROWS,
        )
        # Dead letters (1 in 10 still open), WMS outbound items (1 in 50 to send, 1 in
        # 400 dead, the rest sent) and WMS syncs (1 in 100 still to run, the rest ended)
        # over the same 20 days.
        await conn.execute(
            "INSERT INTO dead_letter (queue, routing_key, error, attempts, status, "
            "created_at, resolved_at) "
            "SELECT 'q' || g % 5, 'k', 'boom', 1, st, t, CASE WHEN st <> 'DEAD' THEN t END "
            "FROM (SELECT g, CASE WHEN g % 10 = 0 THEN 'DEAD' WHEN g % 2 = 0 THEN 'REPLAYED' "
            f"ELSE 'DISCARDED' END AS st, {spread} AS t "
            "FROM generate_series(1, $1::int) AS g) AS d",
            ROWS,
        )
        await conn.execute(
            "INSERT INTO wms_outbound_item (connector, event_id, message_id, action, "
            "order_id, sku, location, quantity, status, created_at, sent_at) "
            "SELECT 'wms-main', 'ev-' || g, gen_random_uuid(), 'allocate', 'o-' || g, "
            "'S-' || g % 500, 'main', 1, st, t, CASE WHEN st = 'SENT' THEN t END "
            "FROM (SELECT g, CASE WHEN g % 50 = 0 THEN 'PENDING' WHEN g % 400 = 1 THEN 'DEAD' "
            f"ELSE 'SENT' END AS st, {spread} AS t "
            "FROM generate_series(1, $1::int) AS g) AS o",
            ROWS,
        )
        await conn.execute(
            "INSERT INTO wms_sync_request (connector, kind, reason, requested_by, status, "
            "created_at, finished_at) "
            "SELECT 'wms-main', 'incremental', 'scheduled', 'scheduler', st, t, "
            "CASE WHEN st IN ('DONE', 'FAILED') THEN t END "
            "FROM (SELECT g, CASE WHEN g % 100 = 0 THEN 'PENDING' WHEN g % 20 = 1 THEN 'FAILED' "
            f"ELSE 'DONE' END AS st, {spread} AS t "
            "FROM generate_series(1, $1::int) AS g) AS r",
            ROWS,
        )
        await conn.execute(
            "ANALYZE domain_event, queue_message, channel_sync_state, processed_message, "
            "consumer_position, idempotency_key, wms_call, webhook_delivery, channel_push, "
            "dead_letter, wms_outbound_item, wms_sync_request"
        )
    return container


async def test_outbox_claim_and_stats_stay_on_their_partial_indexes(
    messaging_filled: Container,
) -> None:
    async with messaging_filled.pool.acquire() as conn:
        plan = await explain(conn, q("outbox_claim"), 500)
        assert_uses_index(plan, "domain_event", "domain_event_pending")
        plan = await explain(conn, q("outbox_stats"))
        assert_uses_index(plan, "domain_event", "domain_event_pending")
        assert_uses_index(plan, "domain_event", "domain_event_failed")
        # And the rewritten stats answer what the status IN (...) form answered.
        row = await conn.fetchrow(q("outbox_stats"))
        want = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'PENDING') AS pending, "
            "count(*) FILTER (WHERE status = 'FAILED') AS failed, "
            "EXTRACT(EPOCH FROM now() - min(occurred_at) FILTER (WHERE status = 'PENDING'))"
            "::float8 AS oldest FROM domain_event"
        )
    assert (row["pending"], row["failed"]) == (want["pending"], want["failed"]) == (200, 50)
    assert row["oldest_pending_s"] == pytest.approx(want["oldest"], abs=1.0)


def _claim_args(queue: str) -> tuple[Any, ...]:
    """queue_claim's parameters after the queue: a claim of 32, leased for 30 s, with
    the delivery limit of 10 and its dead letters' queue and error."""
    return (32, 30_000, 10, queue, "delivered %s times")


async def test_queue_and_push_claims_use_their_indexes(messaging_filled: Container) -> None:
    async with messaging_filled.pool.acquire() as conn:
        # A quiet queue beside busy ones: walking the whole table in id order would
        # read every busy queue's messages to find its few.
        # (The delivery limit's steps, D-458, look their rows up by id: no scan either.)
        plan = await explain(conn, q("queue_claim"), "quiet", *_claim_args("quiet"))
        assert_uses_index(plan, "queue_message", "queue_message_ready")
        # A busy queue: an index either way (walking the primary key finds its messages
        # every few rows), never the table.
        plan = await explain(conn, q("queue_claim"), "q7", *_claim_args("q7"))
        assert ("Seq Scan", None) not in scans_of(plan, "queue_message")
        # Nor in the generic plan a prepared claim settles on after a few runs.
        async with conn.transaction():
            await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
            plan = await explain(conn, q("queue_claim"), "q7", *_claim_args("q7"))
        assert ("Seq Scan", None) not in scans_of(plan, "queue_message")
        plan = await explain(conn, q("claim_pushes"), "ch1", 100, 30.0)
        assert_uses_index(plan, "channel_sync_state", "channel_sync_due")
        # The WMS outbound claim and its due count, with "does an earlier item of this
        # order back off" (D-477): indexes only, never the 20k sent and dead items.
        for name, args in (("claim_outbound", (100, 30.0)), ("outbound_due", (100,))):
            plan = await explain(conn, q(name), "wms-main", *args)
            assert ("Seq Scan", None) not in scans_of(plan, "wms_outbound_item"), name


async def test_the_wms_claim_probes_per_order_on_a_table_never_analyzed(
    container: Container,
) -> None:
    """D-477's "an earlier item of this order backs off" stays one index probe per
    candidate when the planner knows nothing of the table (autovacuum off, a table just
    created): as an anti join it compared every PENDING item with every other (2.5 s a
    claim at 3,000 items in the suite's WMS outage test)."""
    async with container.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO wms_outbound_item (connector, event_id, message_id, action, "
            "order_id, sku, location, quantity) "
            "SELECT 'wms-main', 'ev-' || g, gen_random_uuid(), "
            "(ARRAY['allocate', 'release'])[g % 2 + 1], 'o-' || g / 2, 'S', 'main', 1 "
            "FROM generate_series(1, 3000) AS g"
        )
        for name, args in (("claim_outbound", (100, 30.0)), ("outbound_due", (100,))):
            plan = await explain(conn, q(name), "wms-main", *args)
            by_order = [n for n in plan if "order_id" in n.get("Index Cond", "")]
            filtered = [n for n in plan if "order_id" in n.get("Join Filter", "")]
            assert by_order, (name, plan)
            assert not filtered, (name, filtered)


async def test_mark_processed_checks_the_key_and_nothing_else(
    messaging_filled: Container,
) -> None:
    async with messaging_filled.pool.acquire() as conn:
        plan = await explain(conn, q("mark_processed"), "c1", uuid.uuid4())
        (insert,) = [n for n in plan if n["Node Type"] == "ModifyTable"]
        assert insert["Conflict Arbiter Indexes"] == ["processed_message_pkey"]
        assert scans_of(plan, "processed_message") == [("ModifyTable", None)]


@pytest.mark.parametrize(
    ("table", "index"),
    [
        (Pruned.SENT_EVENTS, "domain_event_sent"),
        (Pruned.PROCESSED_MESSAGES, "processed_message_at"),
        (Pruned.CONSUMER_POSITIONS, "consumer_position_updated"),
        (Pruned.IDEMPOTENCY_KEYS, "idempotency_key_created"),
        (Pruned.WMS_CALLS, "wms_call_created"),
        (Pruned.WEBHOOK_DELIVERIES, "webhook_delivery_received"),
        (Pruned.CHANNEL_PUSHES, "channel_push_pkey"),
        (Pruned.RESOLVED_DEAD_LETTERS, "dead_letter_resolved"),
        (Pruned.SENT_WMS_ITEMS, "wms_outbound_sent"),
        (Pruned.FINISHED_WMS_SYNCS, "wms_sync_request_finished"),
    ],
)
async def test_retention_deletes_walk_the_time_index(
    messaging_filled: Container, table: Pruned, index: str
) -> None:
    """A third of each table is past a week's retention: the batch still reads the index
    oldest first and deletes by ctid, never scanning the table."""
    async with messaging_filled.pool.acquire() as conn:
        plan = await explain(conn, q(retention.query_name(table)), 7 * 86_400.0, 1000)
        assert_uses_index(plan, table.value, index)
        assert ("Tid Scan", None) in scans_of(plan, table.value)


async def test_a_session_check_is_one_primary_key_lookup(container: Container) -> None:
    """Every request of the ops page looks its session up (D-464): one index probe,
    and the pruning at login walks the expiry index."""
    async with container.pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO ui_session (id_hash, token_fingerprint, principal, expires_at)
            SELECT sha256(g::text::bytea), 'fp', 'admin',
                   now() + (g % 100 - 10) * interval '1 hour'
            FROM generate_series(1, $1::int) AS g
            """,
            ROWS,
        )
        await conn.execute("ANALYZE ui_session")
        found = await explain(conn, q("find_ui_session"), b"\x00" * 32)
        assert scans_of(found, "ui_session") == [("Index Scan", "ui_session_pkey")]
        pruned = await explain(conn, q("prune_ui_sessions"), 100)
        assert_uses_index(pruned, "ui_session", "ui_session_expires")
        assert ("Tid Scan", None) in scans_of(pruned, "ui_session")
