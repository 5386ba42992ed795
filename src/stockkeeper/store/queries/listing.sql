-- The admin lists (issue 16): every one keyset-paged on an index, bounded by LIMIT.

-- name: list_skus
-- $1 prefix ('' for every SKU), $2 upper bound of the prefix range, $3 after (the last
-- SKU of the previous page, ''), $4 only available = 0, $5 only shortfall > 0, $6 now,
-- $7 limit. Byte order (COLLATE "C", index sku_bytewise) makes the prefix a range.
SELECT s.sku, s.version, s.updated_at, f.on_hand, f.unavailable, f.reserved, f.committed,
       f.oversold, f.available, f.shortfall
FROM sku s
CROSS JOIN LATERAL (
    SELECT COALESCE(sum(b.on_hand), 0)::bigint AS on_hand,
           COALESCE(sum(b.unavailable), 0)::bigint AS unavailable,
           COALESCE(sum(b.reserved), 0)::bigint AS reserved,
           COALESCE(sum(b.committed), 0)::bigint AS committed,
           COALESCE(sum(b.oversold), 0)::bigint AS oversold,
           COALESCE(sum(GREATEST(b.on_hand - b.unavailable - b.reserved - b.committed
                                 - b.oversold, 0))
                    FILTER (WHERE b.expires_at IS NULL OR b.expires_at > $6), 0)::bigint
               AS available,
           -- domain/quantities.Figures.shortfall (D-475), as inventory.sql: sku_levels.
           COALESCE(sum(GREATEST(b.reserved + b.committed + b.oversold
                                 - GREATEST(b.on_hand - b.unavailable, 0), 0)), 0)::bigint
               AS shortfall
    FROM sku_batch b
    WHERE b.sku = s.sku
) f
WHERE (s.sku COLLATE "C") >= $1 AND (s.sku COLLATE "C") < $2
  AND (s.sku COLLATE "C") > $3
  AND starts_with(s.sku, $1)
  AND (NOT $4::boolean OR f.available = 0)
  AND (NOT $5::boolean OR f.shortfall > 0)
ORDER BY (s.sku COLLATE "C")
LIMIT $7;

-- name: list_reservations
-- Every reservation, by id.
SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
FROM reservation
WHERE id > $1
ORDER BY id
LIMIT $2;

-- name: list_reservations_by_status
SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
FROM reservation
WHERE status = $1 AND id > $2
ORDER BY id
LIMIT $3;

-- name: list_reservations_of_sku
-- The reservations holding a SKU (index reservation_line_sku), by id.
SELECT r.id, r.order_id, r.status, r.location, r.lines, r.expires_at, r.reason,
       r.created_at, r.updated_at
FROM reservation r
WHERE r.id IN (SELECT l.reservation_id FROM reservation_line l WHERE l.sku = $1)
  AND r.id > $2 AND ($4::text IS NULL OR r.status = $4)
ORDER BY r.id
LIMIT $3;

-- name: list_reservations_expiring
-- PENDING reservations due before $1, soonest first, keyset on (expires_at, id)
-- (index reservation_pending_due); $5 narrows them to those holding a SKU (or NULL).
SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
FROM reservation
WHERE status = 'PENDING' AND expires_at <= $1 AND (expires_at, id) > ($2, $3)
  AND ($5::text IS NULL
       OR id IN (SELECT l.reservation_id FROM reservation_line l WHERE l.sku = $5))
ORDER BY expires_at, id
LIMIT $4;

-- name: list_orders
-- Orders placed before $1 (their age), oldest first, keyset on (created_at, id).
SELECT id, order_id, status, reason, created_at, decided_at, updated_at, payment_due_at
FROM orders
WHERE created_at <= $1 AND (created_at, id) > ($2, $3)
ORDER BY created_at, id
LIMIT $4;

-- name: list_orders_by_status
SELECT id, order_id, status, reason, created_at, decided_at, updated_at, payment_due_at
FROM orders
WHERE status = $1 AND created_at <= $2 AND (created_at, id) > ($3, $4)
ORDER BY created_at, id
LIMIT $5;

-- name: list_sync_requests
-- Newest first: keyset on the id, downwards ($1: below this id).
SELECT *
FROM wms_sync_request
WHERE id < $1
ORDER BY id DESC
LIMIT $2;

-- name: list_sync_requests_by_status
SELECT *
FROM wms_sync_request
WHERE status = $1 AND id < $2
ORDER BY id DESC
LIMIT $3;

-- name: list_channel_skus
-- A channel's SKUs that are not in sync: PENDING, UNLISTED, DEAD, failing (an error on
-- the last try) or acknowledged at an older version than we know (index
-- channel_sync_unsettled); $2 narrows it: 'all', 'pending', 'unlisted', 'failing'.
SELECT channel, sku, status, desired_version, desired_quantity, claimed_version,
       pushed_version, pushed_quantity, pushed_at, pending_since, attempts,
       next_attempt_at, last_error, unlisted_at
FROM channel_sync_state
WHERE channel = $1 AND sku > $3
  AND (status <> 'SYNCED' OR last_error IS NOT NULL OR pushed_version < desired_version)
  AND CASE $2::text
        WHEN 'pending' THEN status = 'PENDING'
        WHEN 'unlisted' THEN status = 'UNLISTED'
        WHEN 'failing' THEN status = 'DEAD' OR last_error IS NOT NULL
        ELSE true
      END
ORDER BY sku
LIMIT $4;

-- name: channel_lag_series
-- Per channel, the lag percentiles of acknowledged pushes in buckets of $2 seconds
-- since $1 (index channel_push_recent): the ops page's chart, from what every replica
-- recorded.
SELECT channel,
       date_bin(make_interval(secs => $2), acked_at, $1) AS bucket,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms) AS p50_ms,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms) AS p99_ms,
       count(*) AS pushes
FROM channel_push
WHERE acked_at >= $1
GROUP BY 1, 2
ORDER BY 1, 2;

-- name: request_poll
-- One pending request per connector: a second while one is pending returns the first
-- (the no-op update makes RETURNING see the row either way).
INSERT INTO poll_request (connector, requested_by)
VALUES ($1, $2)
ON CONFLICT (connector) DO UPDATE SET connector = EXCLUDED.connector
RETURNING connector, requested_at, requested_by;

-- name: notify_poll
SELECT pg_notify('stockkeeper_poll', $1::text);

-- name: take_poll_request
-- The poller starts the requested poll: the request is no longer pending.
DELETE FROM poll_request WHERE connector = $1 RETURNING requested_at, requested_by;

-- name: pending_polls
SELECT connector, requested_at, requested_by FROM poll_request ORDER BY connector;
