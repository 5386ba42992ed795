-- A coalesced batch of reservations, one statement per table (services/reserve_batch.py).

-- name: batch_insert_reservations
-- Every new order id of the batch in one statement, in order id order, so two batches
-- that share order ids wait on each other in one order. DO NOTHING waits for a rival
-- still inserting the same order id; its row, once committed, is answered as a repeat.
INSERT INTO reservation (order_id, status, location, lines, expires_at)
SELECT u.order_id, 'PENDING', u.location, u.lines::jsonb, u.expires_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
     AS u (order_id, location, lines, expires_at)
ORDER BY u.order_id
ON CONFLICT (order_id) DO NOTHING
RETURNING id, order_id;

-- name: batch_get_reservations
SELECT id, order_id, status, location, lines, expires_at, reason, created_at, updated_at
FROM reservation
WHERE order_id = ANY($1::text[]);

-- name: batch_drop_reservations
-- The rows of requests that were refused (short, unknown SKU): inserted first so the
-- batch takes the order id before any stock lock, like a single reserve does.
DELETE FROM reservation WHERE id = ANY($1::bigint[]);

-- name: batch_rewrite_reservations
-- An order id sent twice in one batch whose first copy was refused and a later one,
-- with other content, served: its row takes the later copy's content.
UPDATE reservation r
SET location = u.location, lines = u.lines::jsonb, expires_at = u.expires_at
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[])
     AS u (id, location, lines, expires_at)
WHERE r.id = u.id;

-- name: batch_insert_reservation_lines
INSERT INTO reservation_line (reservation_id, line_no, sku, batch_id, quantity)
SELECT * FROM unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::bigint[]);

-- name: batch_reserve_locked
-- One guarded write for every batch row the batch allocated (summed per row). The
-- batch holds these rows' locks, so the guard cannot miss; the caller checks the count
-- and fails the whole batch were it to.
UPDATE sku_batch b
SET reserved = b.reserved + d.quantity, version = b.version + 1, updated_at = now()
FROM unnest($1::bigint[], $2::bigint[]) AS d (id, quantity)
WHERE b.id = d.id
  AND b.on_hand - b.unavailable - b.reserved - b.committed - b.oversold >= d.quantity
RETURNING b.id;
