-- Orders and the state of their saga.

-- name: insert_order
-- DO NOTHING waits for a concurrent insert of the same order_id to commit or abort, so
-- a repeated POST /orders finds the first one.
INSERT INTO orders (order_id, status, lines, ship_to, required_delivery_date, created_at,
                    updated_at)
VALUES ($1, 'PENDING', $2::jsonb, $3::jsonb, $4, $5, $5)
ON CONFLICT (order_id) DO NOTHING
RETURNING id;

-- name: check_new_order
-- One round trip for both checks of a new order.
SELECT ARRAY(SELECT unnest($1::text[]) EXCEPT SELECT sku FROM sku WHERE sku = ANY($1::text[]))
           AS unknown,
       EXISTS (SELECT 1 FROM reservation WHERE order_id = $2) AS reserved;

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
