-- The invariant of ARCHITECTURE section 3, one query per clause.

-- name: audit_ledger_mismatch
-- Each batch quantity equals the sum of its ledger deltas.
SELECT b.id, b.sku, b.on_hand, b.unavailable, b.reserved, b.committed, b.oversold,
       COALESCE(l.on_hand, 0) AS l_on_hand, COALESCE(l.unavailable, 0) AS l_unavailable,
       COALESCE(l.reserved, 0) AS l_reserved, COALESCE(l.committed, 0) AS l_committed,
       COALESCE(l.oversold, 0) AS l_oversold
FROM sku_batch b
LEFT JOIN (
    SELECT batch_id, sum(d_on_hand) AS on_hand, sum(d_unavailable) AS unavailable,
           sum(d_reserved) AS reserved, sum(d_committed) AS committed,
           sum(d_oversold) AS oversold
    FROM inventory_ledger GROUP BY batch_id
) l ON l.batch_id = b.id
WHERE (b.on_hand, b.unavailable, b.reserved, b.committed, b.oversold)
      IS DISTINCT FROM (COALESCE(l.on_hand, 0), COALESCE(l.unavailable, 0),
                        COALESCE(l.reserved, 0), COALESCE(l.committed, 0),
                        COALESCE(l.oversold, 0))
ORDER BY b.id;

-- name: audit_reservation_mismatch
-- reserved and committed equal the sums of the open reservation lines.
SELECT b.id, b.sku, b.reserved, b.committed,
       COALESCE(r.pending, 0) AS open_reserved, COALESCE(r.confirmed, 0) AS open_committed
FROM sku_batch b
LEFT JOIN (
    SELECT l.batch_id,
           sum(l.quantity) FILTER (WHERE r.status = 'PENDING') AS pending,
           sum(l.quantity) FILTER (WHERE r.status = 'CONFIRMED') AS confirmed
    FROM reservation_line l JOIN reservation r ON r.id = l.reservation_id
    GROUP BY l.batch_id
) r ON r.batch_id = b.id
WHERE (b.reserved, b.committed) IS DISTINCT FROM (COALESCE(r.pending, 0), COALESCE(r.confirmed, 0))
ORDER BY b.id;

-- name: audit_negative
SELECT id, sku, on_hand, unavailable, reserved, committed, oversold
FROM sku_batch
WHERE LEAST(on_hand, unavailable, reserved, committed, oversold) < 0
ORDER BY id;

-- name: audit_counts
SELECT (SELECT count(*) FROM sku_batch) AS batches,
       (SELECT count(*) FROM inventory_ledger) AS ledger_entries,
       (SELECT count(*) FROM reservation) AS reservations;
