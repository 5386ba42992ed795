-- Orders and the state of their saga.

-- name: get_order
SELECT id, order_id, status, lines, ship_to, required_delivery_date, reason, shortages,
       carrier, payment_reference, payment_due_at, created_at, decided_at, updated_at
FROM orders
WHERE order_id = $1;

-- name: lock_order
-- Every change of an order holds this lock first (before the reservation's), so the
-- saga and the HTTP calls take turns on one order and never on two.
SELECT id, order_id, status, lines, ship_to, required_delivery_date, reason, shortages,
       carrier, payment_reference, payment_due_at, created_at, decided_at, updated_at
FROM orders
WHERE order_id = $1
FOR UPDATE;

-- name: save_order
UPDATE orders
SET status = $2, reason = $3, shortages = $4::jsonb, carrier = $5::jsonb,
    payment_reference = $6, payment_due_at = $7, decided_at = $8, updated_at = $9
WHERE id = $1;

-- name: place_order
-- POST /orders in one statement (D-311): the checks of a new order, the order, and the
-- saga's first command (an outbox row, the dispatchers woken), so no transaction of its
-- own is needed. The order goes in only when every check passes ($7: the delivery date
-- is not past); NULL id: a check failed, or the order_id is taken (DO NOTHING waits for
-- a concurrent insert of it to commit or abort), and the caller reads which.
WITH checks AS (
    SELECT ARRAY(SELECT unnest($6::text[])
                 EXCEPT SELECT sku FROM sku WHERE sku = ANY($6::text[])) AS unknown,
           EXISTS (SELECT 1 FROM reservation WHERE order_id = $1) AS reserved
), ins AS (
    INSERT INTO orders (order_id, status, lines, ship_to, required_delivery_date, created_at,
                        updated_at)
    SELECT $1, 'PENDING', $2::jsonb, $3::jsonb, $4, $5, $5
    FROM checks
    WHERE cardinality(checks.unknown) = 0 AND NOT checks.reserved AND $7::boolean
    ON CONFLICT (order_id) DO NOTHING
    RETURNING id
), ev AS (
    INSERT INTO domain_event (event_id, event_type, source, payload, ordering_key,
                              trace_context)
    SELECT $8, $9, NULL, $10::text::jsonb, $11, $12::text FROM ins
    RETURNING 1
), key_row AS (
    -- Under an Idempotency-Key ($14 not NULL, D-366): the key with the answer to the
    -- order placed, only if it is. No ON CONFLICT: another request holding the key
    -- fails this whole statement (unique_violation, after waiting for that one's end),
    -- so the order never goes in without its key.
    INSERT INTO idempotency_key (principal, key, method, path, request_hash, status_code,
                                 response)
    SELECT $14::text, $15::text, $16::text, $17::text, $18::text, $19::integer, $20::json
    FROM ins
    WHERE $14::text IS NOT NULL
    RETURNING 1
)
SELECT (SELECT id FROM ins) AS id, checks.unknown, checks.reserved,
       (SELECT pg_notify($13, '') FROM ev) IS NOT NULL AS notified,
       EXISTS (SELECT 1 FROM key_row) AS keyed
FROM checks;

-- name: start_reserve_order
-- The saga's reserve step begins here (D-310): the order's lock, its guard (only a
-- PENDING order is reserved) and its move to AWAITING_PAYMENT in one statement, with
-- what the step needs: its lines, and whether its order_id held a reservation before.
-- A refusal moves it on to FAILED (refuse_order) in the same transaction. No row moved:
-- the order has moved on (moved false) or does not exist (no row at all).
WITH moved AS (
    UPDATE orders
    SET status = 'AWAITING_PAYMENT', payment_due_at = $2, decided_at = $3, updated_at = $3
    WHERE order_id = $1 AND status = 'PENDING'
    RETURNING id, lines, created_at
)
SELECT m.id, true AS moved, m.created_at,
       ARRAY(SELECT e.l->>'sku' FROM jsonb_array_elements(m.lines) WITH ORDINALITY AS e(l, n)
             ORDER BY e.n) AS skus,
       ARRAY(SELECT (e.l->>'quantity')::int
             FROM jsonb_array_elements(m.lines) WITH ORDINALITY AS e(l, n)
             ORDER BY e.n) AS quantities,
       EXISTS (SELECT 1 FROM reservation WHERE order_id = $1) AS reserved
FROM moved AS m
UNION ALL
SELECT o.id, false, o.created_at, NULL, NULL, NULL
FROM orders AS o
WHERE o.order_id = $1 AND NOT EXISTS (SELECT 1 FROM moved);

-- name: refuse_order
-- The reserve step refused: FAILED, and the reservation row the refused reserve had
-- inserted in this transaction taken back (a reservation always holds lines once its
-- reserve has succeeded, so one without lines can only be that one).
WITH stray AS (
    DELETE FROM reservation AS r
    WHERE r.order_id = $1
      AND NOT EXISTS (SELECT 1 FROM reservation_line AS l WHERE l.reservation_id = r.id)
)
UPDATE orders
SET status = 'FAILED', reason = $3, shortages = $4::jsonb, payment_due_at = NULL,
    decided_at = $5, updated_at = $5
WHERE id = $2;

-- name: start_reserve_orders
-- start_reserve_order for a batch of order.placed commands (D-371): the orders locked
-- in order_id order (LockRows above the Sort) before any is moved, so two batches that
-- share an order wait on each other in one order; the PENDING ones moved to
-- AWAITING_PAYMENT. One row per order found: moved or not; an order_id with no row is
-- no order. The lines as two arrays per order, its reservation before the step too.
WITH locked AS (
    SELECT id FROM orders WHERE order_id = ANY($1::text[]) ORDER BY order_id FOR UPDATE
), moved AS (
    UPDATE orders AS o
    SET status = 'AWAITING_PAYMENT', payment_due_at = $2, decided_at = $3, updated_at = $3
    FROM locked AS k
    WHERE o.id = k.id AND o.status = 'PENDING'
    RETURNING o.id, o.order_id, o.lines, o.created_at
)
SELECT m.id, m.order_id, true AS moved, m.created_at,
       ARRAY(SELECT e.l->>'sku' FROM jsonb_array_elements(m.lines) WITH ORDINALITY AS e(l, n)
             ORDER BY e.n) AS skus,
       ARRAY(SELECT (e.l->>'quantity')::int
             FROM jsonb_array_elements(m.lines) WITH ORDINALITY AS e(l, n)
             ORDER BY e.n) AS quantities,
       EXISTS (SELECT 1 FROM reservation AS r WHERE r.order_id = m.order_id) AS reserved
FROM moved AS m
UNION ALL
SELECT o.id, o.order_id, false, o.created_at, NULL, NULL, NULL
FROM orders AS o
JOIN locked AS k ON k.id = o.id
WHERE NOT EXISTS (SELECT 1 FROM moved AS m WHERE m.id = o.id);

-- name: refuse_orders
-- refuse_order for the refused orders of a batch (D-371): FAILED with each one's
-- reason and shortages. The batch reserve took their reservation rows back itself.
UPDATE orders AS o
SET status = 'FAILED', reason = u.reason, shortages = u.shortages::jsonb,
    payment_due_at = NULL, decided_at = $4, updated_at = $4
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS u (id, reason, shortages)
WHERE o.id = u.id;

-- name: set_payment_due
UPDATE orders SET payment_due_at = $2 WHERE id = $1;

-- name: move_order_from
-- A saga step's move with its guard in one statement (D-312): the order's lock, the
-- check of its state ($2: the states the step moves it from) and the move. No row: the
-- order is in none of them, or there is no such order. $7: set the reason to $4.
UPDATE orders
SET status = $3, reason = CASE WHEN $7::boolean THEN $4 ELSE reason END,
    carrier = COALESCE($5::jsonb, carrier), updated_at = $6
WHERE order_id = $1 AND status = ANY($2::text[])
RETURNING id;
