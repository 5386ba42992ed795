-- name: ensure_skus
-- In name order, so two syncs creating the same new SKUs wait on each other in order.
INSERT INTO sku (sku)
SELECT s FROM unnest($1::text[]) AS s ORDER BY s
ON CONFLICT DO NOTHING;

-- name: ensure_locations
INSERT INTO location (code)
SELECT c FROM unnest($1::text[]) AS c ORDER BY c
ON CONFLICT DO NOTHING;

-- name: insert_missing_batches
-- Batches the WMS knows and we do not yet: created empty, then reconciled like the rest.
INSERT INTO sku_batch (sku, location, lot_number, expires_at)
SELECT k.sku, k.location, k.lot, k.expires_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
     AS k (sku, location, lot, expires_at)
ORDER BY k.sku, k.location, COALESCE(k.lot, '')
ON CONFLICT (sku, location, COALESCE(lot_number, '')) DO NOTHING;

-- name: lock_batches_by_identity
-- The page's batches, locked in id order (LockRows sits above the Sort): the global lock
-- order, so a sync and racing reservations wait on each other instead of deadlocking.
-- The join key matches the sku_batch_identity index expression.
SELECT b.id, b.sku, b.location, b.lot_number, b.expires_at, b.on_hand, b.unavailable,
       b.reserved, b.committed, b.oversold, b.version
FROM unnest($1::text[], $2::text[], $3::text[]) AS k (sku, location, lot)
JOIN sku_batch b
  ON b.sku = k.sku AND b.location = k.location
 AND COALESCE(b.lot_number, '') = COALESCE(k.lot, '')
ORDER BY b.id
FOR NO KEY UPDATE OF b;

-- name: upsert_snapshots
INSERT INTO wms_inventory_snapshot AS s
    (connector, batch_id, sku, on_hand, unavailable, wms_updated_at, sync_request_id)
SELECT $1, r.batch_id, r.sku, r.on_hand, r.unavailable, r.counted_at, $7
FROM unnest($2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::timestamptz[])
     AS r (batch_id, sku, on_hand, unavailable, counted_at)
ON CONFLICT (connector, batch_id) DO UPDATE
SET on_hand = EXCLUDED.on_hand,
    unavailable = EXCLUDED.unavailable,
    wms_updated_at = EXCLUDED.wms_updated_at,
    sync_request_id = EXCLUDED.sync_request_id,
    synced_at = now();

-- name: batch_identity
SELECT id, sku, location, lot_number FROM sku_batch WHERE id = ANY($1::bigint[]);

-- name: insert_sync_request
INSERT INTO wms_sync_request (connector, kind, sku, sku_batch_id, reason, requested_by, priority)
VALUES ($1, $2, $3, $4, $5, $6, $7)
RETURNING *;

-- name: get_sync_request
SELECT * FROM wms_sync_request WHERE id = $1;

-- name: open_request_of_kind
SELECT id FROM wms_sync_request
WHERE connector = $1 AND kind = $2 AND status IN ('PENDING', 'IN_PROGRESS')
LIMIT 1;

-- name: claim_sync_request
-- The next sync to run: waiting ones by priority, and ones whose worker stopped
-- reporting (a crash) to be resumed from their cursor. SKIP LOCKED: replicas share.
UPDATE wms_sync_request r
SET status = 'IN_PROGRESS',
    started_at = COALESCE(r.started_at, now()),
    heartbeat_at = now(),
    attempts = r.attempts + 1
WHERE r.id = (
    SELECT id FROM wms_sync_request
    WHERE connector = ANY($1::text[])
      AND (status = 'PENDING'
           OR (status = 'IN_PROGRESS' AND heartbeat_at < now() - make_interval(secs => $2)))
    ORDER BY priority DESC, id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING r.*;

-- name: sync_progress
-- After each committed page: where to go on from, and the tallies so far.
UPDATE wms_sync_request
SET cursor = $2,
    start_token = COALESCE($3, start_token),
    pages = pages + 1,
    rows_seen = rows_seen + $4,
    rows_rejected = rows_rejected + $5,
    adjustments = adjustments + $6,
    shortfalls = shortfalls + $7,
    -- The WMS's total for the snapshot, when a page gave one ($8); kept otherwise.
    rows_total = COALESCE($8::bigint, rows_total),
    heartbeat_at = now()
WHERE id = $1;

-- name: set_start_token
UPDATE wms_sync_request SET start_token = $2, heartbeat_at = now() WHERE id = $1;

-- name: finish_sync_request
UPDATE wms_sync_request
SET status = $2, error = $3, finished_at = now(), heartbeat_at = now()
WHERE id = $1 AND status = 'IN_PROGRESS'
RETURNING *;

-- name: sync_state
SELECT * FROM wms_sync_state WHERE connector = $1;

-- name: ensure_sync_state
INSERT INTO wms_sync_state (connector) VALUES ($1) ON CONFLICT DO NOTHING;

-- name: lock_sync_state
SELECT * FROM wms_sync_state WHERE connector = $1 FOR UPDATE;

-- name: schedule_incremental
UPDATE wms_sync_state SET next_incremental_at = $2, updated_at = now() WHERE connector = $1;

-- name: save_token
INSERT INTO wms_sync_state AS s (connector, token, last_full_at, last_incremental_at)
VALUES ($1, $2,
        CASE WHEN $3 = 'full' THEN now() END,
        CASE WHEN $3 = 'incremental' THEN now() END)
ON CONFLICT (connector) DO UPDATE
SET token = EXCLUDED.token,
    last_full_at = COALESCE(EXCLUDED.last_full_at, s.last_full_at),
    last_incremental_at = COALESCE(EXCLUDED.last_incremental_at, s.last_incremental_at),
    updated_at = now();

-- name: insert_outbound_items
INSERT INTO wms_outbound_item
    (connector, event_id, message_id, action, order_id, sku, location, lot_number, quantity)
SELECT $1, i.event_id, $2, i.action, i.order_id, i.sku, i.location, i.lot, i.quantity
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::bigint[])
     AS i (event_id, action, order_id, sku, location, lot, quantity)
ON CONFLICT (connector, event_id) DO NOTHING;

-- name: outbound_due
-- How many items are due and how old the oldest is: whether to send now or wait.
SELECT count(*) AS due, EXTRACT(EPOCH FROM now() - min(created_at)) AS oldest_s
FROM (
    SELECT created_at FROM wms_outbound_item
    WHERE connector = $1 AND status = 'PENDING' AND next_attempt_at <= now()
      AND (leased_until IS NULL OR leased_until < now())
    LIMIT $2
) due;

-- name: claim_outbound
-- A batch to send, oldest first, leased so a crashed sender's batch comes back.
UPDATE wms_outbound_item o
SET leased_until = now() + make_interval(secs => $3), attempts = o.attempts + 1
WHERE o.id = ANY(ARRAY(
    SELECT id FROM wms_outbound_item
    WHERE connector = $1 AND status = 'PENDING' AND next_attempt_at <= now()
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING o.id, o.event_id, o.message_id, o.action, o.order_id, o.sku, o.location,
          o.lot_number, o.quantity, o.attempts;

-- name: outbound_sent
UPDATE wms_outbound_item o
SET status = 'SENT', sent_at = now(), leased_until = NULL, wms_result = r.result,
    last_error = NULL
FROM unnest($1::bigint[], $2::text[]) AS r (id, result)
WHERE o.id = r.id AND o.status = 'PENDING';

-- name: outbound_retry
UPDATE wms_outbound_item
SET leased_until = NULL, next_attempt_at = now() + make_interval(secs => $2),
    last_error = $3
WHERE id = ANY($1::bigint[]) AND status = 'PENDING';

-- name: outbound_dead
UPDATE wms_outbound_item
SET status = 'DEAD', leased_until = NULL, last_error = $2
WHERE id = ANY($1::bigint[]) AND status = 'PENDING';

-- name: outbound_rearm
-- A replayed dead letter: the item goes back to the queue with a fresh count.
UPDATE wms_outbound_item
SET status = 'PENDING', attempts = 0, next_attempt_at = now(), leased_until = NULL
WHERE connector = $1 AND event_id = ANY($2::text[]) AND status = 'DEAD';

-- name: insert_wms_calls
INSERT INTO wms_call (connector, operation, attempt, status_code, outcome, duration_ms,
                      error, items, first_item, last_item)
SELECT $1, c.operation, c.attempt, c.status_code, c.outcome, c.duration_ms, c.error,
       c.items, c.first_item, c.last_item
FROM unnest($2::text[], $3::int[], $4::int[], $5::text[], $6::float8[], $7::text[],
            $8::int[], $9::bigint[], $10::bigint[])
     AS c (operation, attempt, status_code, outcome, duration_ms, error, items, first_item,
           last_item);

-- name: wms_status
SELECT c.connector,
       s.token IS NOT NULL AS has_token,
       s.last_full_at, s.last_incremental_at, s.next_incremental_at,
       (SELECT count(*) FROM wms_sync_request r
        WHERE r.connector = c.connector AND r.status IN ('PENDING', 'IN_PROGRESS')) AS open_syncs,
       (SELECT count(*) FROM wms_outbound_item o
        WHERE o.connector = c.connector AND o.status = 'PENDING') AS outbound_pending,
       (SELECT count(*) FROM wms_outbound_item o
        WHERE o.connector = c.connector AND o.status = 'DEAD') AS outbound_dead,
       (SELECT EXTRACT(EPOCH FROM now() - min(o.created_at)) FROM wms_outbound_item o
        WHERE o.connector = c.connector AND o.status = 'PENDING') AS oldest_pending_s
FROM unnest($1::text[]) AS c (connector)
LEFT JOIN wms_sync_state s ON s.connector = c.connector
ORDER BY c.connector;
