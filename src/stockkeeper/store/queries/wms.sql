-- name: plan_page
-- A sync page's statements run on batches in cache: index look-ups are cheap, and
-- none of them is worth compiling (PostgreSQL's JIT took 180 ms on a page of 1,000,
-- costed from statistics a fresh table had not caught up with; D-341).
-- For this transaction only (set_config's is_local), like SET LOCAL.
SELECT set_config('jit', 'off', true), set_config('random_page_cost', '1.1', true);

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

-- name: insert_counted_batches
-- A page's batches we do not know yet, created at the figures the WMS counted (as if
-- created empty and adjusted: version 1 when the count moved anything). The page's
-- ADJUSTMENT entries from zero are written with the rest; the ids made are returned.
-- In identity order, so two syncs creating the same batches wait on each other in order.
INSERT INTO sku_batch AS b (sku, location, lot_number, expires_at, on_hand, unavailable,
                            version)
SELECT k.sku, k.location, k.lot, k.expires_at, k.on_hand, k.unavailable,
       CASE WHEN k.on_hand <> 0 OR k.unavailable <> 0 THEN 1 ELSE 0 END
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[],
            $6::bigint[])
     AS k (sku, location, lot, expires_at, on_hand, unavailable)
ORDER BY k.sku, k.location, COALESCE(k.lot, '')
ON CONFLICT (sku, location, COALESCE(lot_number, '')) DO NOTHING
RETURNING b.id;

-- name: lock_page_batches
-- The page's batches, locked in id order: the global lock order, so a sync and racing
-- reservations wait on each other instead of deadlocking. Only the locks:
-- reconcile_counts, the next statement, reads the figures they hold. Each batch is
-- found by its own sku_batch_identity index look-up (LATERAL, LIMIT 1: the identity is
-- unique) and locked by its own primary-key look-up in id order (the nested loop keeps
-- its outer order): a join the planner could answer with a scan of every batch would
-- make a full sync quadratic while the table grows faster than its statistics.
WITH ids AS MATERIALIZED (
    SELECT x.id
    FROM unnest($1::text[], $2::text[], $3::text[]) AS k (sku, location, lot)
    CROSS JOIN LATERAL (
        SELECT b.id FROM sku_batch b
        WHERE b.sku = k.sku AND b.location = k.location
          AND COALESCE(b.lot_number, '') = COALESCE(k.lot, '')
        LIMIT 1
    ) AS x
)
SELECT count(*)
FROM (SELECT id FROM ids ORDER BY id) AS o
CROSS JOIN LATERAL (
    SELECT b.id FROM sku_batch b WHERE b.id = o.id FOR NO KEY UPDATE
) AS locked;

-- name: reconcile_counts
-- A page of counts against our batches (locked by lock_page_batches), set-based: each
-- batch's ADJUSTMENT is the count minus our figures (domain/wms.reconcile: on_hand,
-- unavailable, and the oversold the count settles); the batches that differ take the
-- count; every batch's snapshot row is upserted. A batch this page created ($7) holds
-- the count already, and its adjustment runs from zero. Returns the moved batches in
-- page order, with the units by which each left us short of our promises (oversell:
-- how much its shortfall grew, domain/quantities.oversell).
WITH page AS (
    SELECT *
    FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                $6::timestamptz[]) WITH ORDINALITY
         AS p (sku, location, lot, on_hand, unavailable, counted_at, ord)
),
-- Each batch by its own identity look-up (see lock_page_batches).
ours AS MATERIALIZED (
    SELECT b.id, b.sku, b.location, b.lot_number, p.ord, p.counted_at,
           p.on_hand AS c_on_hand, p.unavailable AS c_unavailable,
           b.id = ANY($7::bigint[]) AS created,
           CASE WHEN b.id = ANY($7::bigint[]) THEN 0 ELSE b.on_hand END AS on_hand,
           CASE WHEN b.id = ANY($7::bigint[]) THEN 0 ELSE b.unavailable END AS unavailable,
           b.reserved, b.committed, b.oversold
    FROM page p
    CROSS JOIN LATERAL (
        SELECT * FROM sku_batch b
        WHERE b.sku = p.sku AND b.location = p.location
          AND COALESCE(b.lot_number, '') = COALESCE(p.lot, '')
        LIMIT 1
    ) AS b
    -- A count older than the one this WMS last gave for the batch (a full sync's page
    -- read before a force sync of the batch and applied after it) is dropped: the
    -- newer count stands (its own snapshot row, by primary key).
    WHERE p.counted_at IS NULL OR NOT EXISTS (
        SELECT 1 FROM wms_inventory_snapshot s
        WHERE s.connector = $8 AND s.batch_id = b.id AND s.wms_updated_at > p.counted_at
    )
),
moved AS MATERIALIZED (
    SELECT o.*
    FROM ours o
    WHERE o.c_on_hand <> o.on_hand OR o.c_unavailable <> o.unavailable OR o.oversold <> 0
),
changed AS (
    UPDATE sku_batch b
    SET on_hand = m.c_on_hand,
        unavailable = m.c_unavailable,
        oversold = 0,
        version = b.version + 1,
        updated_at = now()
    FROM moved m
    -- The = ANY gives the planner the batches' ids to look up by key, so it never
    -- hashes the page against a scan of every batch.
    WHERE b.id = m.id AND NOT m.created
      AND b.id = ANY(ARRAY(SELECT id FROM moved WHERE NOT created))
),
snapshots AS (
    INSERT INTO wms_inventory_snapshot AS s
        (connector, batch_id, sku, on_hand, unavailable, wms_updated_at, sync_request_id)
    SELECT $8, o.id, o.sku, o.c_on_hand, o.c_unavailable, o.counted_at, $9
    FROM ours o
    ORDER BY o.id
    ON CONFLICT (connector, batch_id) DO UPDATE
    SET on_hand = EXCLUDED.on_hand,
        unavailable = EXCLUDED.unavailable,
        wms_updated_at = EXCLUDED.wms_updated_at,
        sync_request_id = EXCLUDED.sync_request_id,
        synced_at = now()
)
SELECT m.id, m.sku, m.location, m.lot_number,
       m.c_on_hand - m.on_hand AS d_on_hand,
       m.c_unavailable - m.unavailable AS d_unavailable,
       -m.oversold AS d_oversold,
       -- The shortfall after (the count, oversold settled) minus before, each as
       -- domain/quantities.Figures.shortfall (D-475).
       GREATEST(0, GREATEST(0, m.reserved + m.committed
                               - GREATEST(0, m.c_on_hand - m.c_unavailable))
                   - GREATEST(0, m.reserved + m.committed + m.oversold
                                 - GREATEST(0, m.on_hand - m.unavailable))) AS oversell
FROM moved m
ORDER BY m.ord;

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
    SELECT created_at FROM wms_outbound_sendable WHERE connector = $1 LIMIT $2
) due;

-- name: claim_outbound
-- A batch to send, oldest first, leased so a crashed sender's batch comes back. The
-- view holds back an item whose order has an earlier item backing off or in flight
-- (D-477). The last check covers a race: an earlier item of the order that another
-- sender has locked but not yet leased is skipped here, so its later ones wait too.
WITH cand AS (
    SELECT id, order_id FROM wms_outbound_sendable
    WHERE connector = $1
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE wms_outbound_item o
SET leased_until = now() + make_interval(secs => $3), attempts = o.attempts + 1
FROM cand c
WHERE o.id = c.id
  AND NOT EXISTS (
      SELECT 1 FROM wms_outbound_item e
      WHERE e.connector = $1 AND e.order_id = c.order_id AND e.status = 'PENDING'
        AND e.id < c.id AND e.id NOT IN (SELECT id FROM cand)
      OFFSET 0  -- a probe per candidate, whatever the statistics say (0022)
  )
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
