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
