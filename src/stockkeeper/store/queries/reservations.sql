-- Reservations and their allocations.

-- name: insert_reservation
-- DO NOTHING waits for a concurrent insert of the same order_id to commit or abort,
-- so twenty copies of one order end on one reservation.
INSERT INTO reservation (order_id, status, location, lines, expires_at)
VALUES ($1, 'PENDING', $2, $3::jsonb, $4)
ON CONFLICT (order_id) DO NOTHING
RETURNING id;

-- name: get_reservation
SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
FROM reservation
WHERE order_id = $1;

-- name: lock_reservation
SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
FROM reservation
WHERE order_id = $1
FOR UPDATE;

-- name: insert_reservation_lines
INSERT INTO reservation_line (reservation_id, line_no, sku, batch_id, quantity)
SELECT $1, * FROM unnest($2::int[], $3::text[], $4::bigint[], $5::bigint[]);

-- name: reservation_allocations
SELECT l.reservation_id, l.line_no, l.sku, l.batch_id, l.quantity, b.lot_number, b.location
FROM reservation_line l
JOIN sku_batch b ON b.id = l.batch_id
WHERE l.reservation_id = ANY($1::bigint[])
-- FEFO, as allocated: a batch's expiry never changes, so this is the creation order.
ORDER BY l.reservation_id, l.line_no, b.expires_at NULLS LAST, l.batch_id;

-- name: set_reservation_status
UPDATE reservation
SET status = $2, reason = COALESCE($3, reason), updated_at = now()
WHERE id = $1;

-- name: set_reservation_statuses
-- A batch of reservations (the expiry worker's) to one status in one statement.
UPDATE reservation
SET status = $2, reason = COALESCE($3, reason), updated_at = now()
WHERE id = ANY($1::bigint[]);

-- name: claim_overdue_reservations
-- The expiry worker's batch. SKIP LOCKED lets several expiry workers share the work
-- and never waits on a reservation a client is confirming right now.
SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
FROM reservation
WHERE status = 'PENDING' AND expires_at <= $1
ORDER BY expires_at
LIMIT $2
FOR UPDATE SKIP LOCKED;

-- name: reserve_start_read
-- insert_reservation and read_batches in one round trip (D-300). The batches are read
-- only once the insert went in (the InitPlan on `ins` runs first), so a repeat reads
-- nothing; one row per batch, or one row of NULLs when there is none, every row with
-- the new reservation's id (NULL: the order_id already has one) and the SKUs asked for
-- that do not exist (`unknown`, D-372: a SKU with a batch exists, so only the SKUs
-- without one are looked up, which on the happy path is none).
WITH ins AS (
    INSERT INTO reservation (order_id, status, location, lines, expires_at)
    VALUES ($1, 'PENDING', $2, $3::jsonb, $4)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING id
), batches AS (
    SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
           committed, oversold, version
    FROM sku_batch
    WHERE sku = ANY($5::text[]) AND EXISTS (SELECT 1 FROM ins)
)
SELECT (SELECT id FROM ins) AS reservation_id,
       ARRAY(SELECT a.sku FROM unnest($5::text[]) AS a (sku)
             WHERE EXISTS (SELECT 1 FROM ins)
               AND NOT EXISTS (SELECT 1 FROM batches AS k WHERE k.sku = a.sku)
               AND NOT EXISTS (SELECT 1 FROM sku AS s WHERE s.sku = a.sku)) AS unknown,
       b.*
FROM (VALUES (1)) AS one (x)
LEFT JOIN batches b ON true
ORDER BY b.id;

-- name: reserve_start_lock
-- row_lock: as reserve_start_read, the batches locked in id order (LockRows above the
-- Sort) after the reservation row went in, as insert_reservation then lock_batches did;
-- `unknown` as there.
WITH ins AS (
    INSERT INTO reservation (order_id, status, location, lines, expires_at)
    VALUES ($1, 'PENDING', $2, $3::jsonb, $4)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING id
), batches AS (
    SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
           committed, oversold, version
    FROM sku_batch
    WHERE sku = ANY($5::text[]) AND EXISTS (SELECT 1 FROM ins)
    ORDER BY id
    FOR UPDATE
)
SELECT (SELECT id FROM ins) AS reservation_id,
       ARRAY(SELECT a.sku FROM unnest($5::text[]) AS a (sku)
             WHERE EXISTS (SELECT 1 FROM ins)
               AND NOT EXISTS (SELECT 1 FROM batches AS k WHERE k.sku = a.sku)
               AND NOT EXISTS (SELECT 1 FROM sku AS s WHERE s.sku = a.sku)) AS unknown,
       b.*
FROM (VALUES (1)) AS one (x)
LEFT JOIN batches b ON true
ORDER BY b.id;

-- name: lock_reservation_allocations
-- lock_reservation and reservation_allocations in one round trip (D-300): one row per
-- allocation (one row of NULL allocation columns when it holds none). The lines never
-- change after the reservation's insert, so the statement's snapshot reads them right.
-- `of_order`: the reservation is that of an order still to be paid (PENDING or
-- AWAITING_PAYMENT), whose payment confirms it (D-425); read, not locked, so the
-- order-row-first lock order (D-083) is kept.
WITH r AS (
    SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
    FROM reservation
    WHERE order_id = $1
    FOR UPDATE
)
SELECT r.*,
       EXISTS (
           SELECT 1 FROM orders o
           WHERE o.order_id = r.order_id AND o.status IN ('PENDING', 'AWAITING_PAYMENT')
       ) AS of_order,
       l.line_no, l.sku, l.batch_id, l.quantity, b.lot_number,
       b.location AS batch_location
FROM r
LEFT JOIN reservation_line l ON l.reservation_id = r.id
LEFT JOIN sku_batch b ON b.id = l.batch_id
ORDER BY l.line_no, b.expires_at NULLS LAST, l.batch_id;

-- name: move_reservation
-- set_reservation_status and the batch movements in one round trip (D-300). The batch
-- rows are locked in id order by `locked` (LockRows above the Sort) before the UPDATE
-- writes them, so the join may visit them in any order; the CHECK constraints refuse
-- any negative figure, as apply_delta's.
WITH st AS (
    UPDATE reservation
    SET status = $8, reason = COALESCE($9, reason), updated_at = now()
    WHERE id = $7
), locked AS (
    SELECT id FROM sku_batch WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE
)
UPDATE sku_batch b
SET on_hand = b.on_hand + d.on_hand,
    unavailable = b.unavailable + d.unavailable,
    reserved = b.reserved + d.reserved,
    committed = b.committed + d.committed,
    oversold = b.oversold + d.oversold,
    version = b.version + 1,
    updated_at = now()
FROM locked
JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[],
            $6::bigint[]) AS d (id, on_hand, unavailable, reserved, committed, oversold)
     ON d.id = locked.id
WHERE b.id = locked.id;

-- name: reservation_with_allocations
-- get_reservation and reservation_allocations in one round trip (D-300), unlocked.
SELECT r.id, r.order_id, r.status, r.location, r.lines, r.expires_at, r.reason,
       r.created_at, r.updated_at, l.line_no, l.sku, l.batch_id, l.quantity, b.lot_number,
       b.location AS batch_location
FROM reservation r
LEFT JOIN reservation_line l ON l.reservation_id = r.id
LEFT JOIN sku_batch b ON b.id = l.batch_id
WHERE r.order_id = $1
ORDER BY l.line_no, b.expires_at NULLS LAST, l.batch_id;
