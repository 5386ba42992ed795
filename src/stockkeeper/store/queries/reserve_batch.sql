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

-- name: batch_reserve_write
-- The batch's writes under its own row locks in one round trip (D-362): its lines, one
-- guarded write of the summed quantities per batch row, its ledger rows and the bump
-- of its SKUs (ledger_and_bump's; the SKU rows locked in name order after the batch
-- rows). The batch holds these batch rows' locks, so the guard cannot miss; the caller
-- checks ``moved`` and fails the whole batch were it to.
WITH lines AS (
    INSERT INTO reservation_line (reservation_id, line_no, sku, batch_id, quantity)
    SELECT * FROM unnest($13::bigint[], $14::int[], $15::text[], $16::bigint[], $17::bigint[])
), moved AS (
    UPDATE sku_batch b
    SET reserved = b.reserved + d.quantity, version = b.version + 1, updated_at = now()
    FROM unnest($18::bigint[], $19::bigint[]) AS d (id, quantity)
    WHERE b.id = d.id
      AND b.on_hand - b.unavailable - b.reserved - b.committed - b.oversold >= d.quantity
    RETURNING b.id
), ledger AS (
    INSERT INTO inventory_ledger (batch_id, sku, entry_type, d_on_hand, d_unavailable,
                                  d_reserved, d_committed, source, reference_id, reason,
                                  d_oversold)
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::text[], $9::text[], $10::text[],
                         $11::bigint[])
), locked AS (
    SELECT sku FROM sku WHERE sku = ANY($12::text[]) ORDER BY sku FOR NO KEY UPDATE
), bumped AS (
    UPDATE sku s
    SET version = s.version + 1, updated_at = now()
    FROM locked
    WHERE s.sku = locked.sku
    RETURNING s.sku
)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM bumped) AS bumped;
