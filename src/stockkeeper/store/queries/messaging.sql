-- Outbox dispatch, consumer idempotency and dead letters.

-- name: outbox_claim
-- Oldest PENDING events. SKIP LOCKED lets several dispatchers run at once; per-SKU
-- order is kept by outbox_blocked_skus below.
SELECT id, event_id, event_type, sku, sequence, source, payload, occurred_at, attempts
FROM domain_event
WHERE status = 'PENDING'
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: outbox_blocked_skus
-- SKUs with an earlier PENDING event that another dispatcher holds: our later events of
-- those SKUs must wait, or they could reach the broker first.
SELECT sku, min(id) AS first_held
FROM domain_event
WHERE status = 'PENDING' AND sku = ANY($1::text[]) AND id < $2 AND NOT (id = ANY($3::bigint[]))
GROUP BY sku;

-- name: outbox_mark_sent
UPDATE domain_event
SET status = 'SENT', sent_at = now(), attempts = attempts + 1, last_error = NULL
WHERE id = ANY($1::bigint[]);

-- name: outbox_mark_failed_attempt
UPDATE domain_event
SET attempts = attempts + 1,
    last_error = $2,
    status = CASE WHEN attempts + 1 >= $3 THEN 'FAILED' ELSE status END
WHERE id = ANY($1::bigint[])
RETURNING id, status;

-- name: outbox_stats
SELECT count(*) FILTER (WHERE status = 'PENDING') AS pending,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       EXTRACT(EPOCH FROM now() - min(occurred_at) FILTER (WHERE status = 'PENDING'))::float8
           AS oldest_pending_s
FROM domain_event
WHERE status IN ('PENDING', 'FAILED');

-- name: mark_processed
INSERT INTO processed_message (consumer, message_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING message_id;

-- name: advance_position
-- Per consumer and SKU, only a newer sequence moves on; an older one is stale.
INSERT INTO consumer_position (consumer, sku, sequence) VALUES ($1, $2, $3)
ON CONFLICT (consumer, sku) DO UPDATE SET sequence = EXCLUDED.sequence
WHERE consumer_position.sequence < EXCLUDED.sequence
RETURNING sequence;

-- name: insert_dead_letter
INSERT INTO dead_letter (queue, message_id, routing_key, body, raw_body, headers, error, attempts)
-- ::text::jsonb: the values arrive as JSON text (no second encoding by the codec).
VALUES ($1, $2, $3, $4::text::jsonb, $5, $6::text::jsonb, $7, $8)
RETURNING id;

-- name: list_dead_letters
SELECT id, queue, message_id, routing_key, body, raw_body, headers, error, attempts, status,
       created_at, resolved_at, resolved_by
FROM dead_letter
WHERE ($1::text IS NULL OR queue = $1) AND ($2::text IS NULL OR status = $2) AND id > $3
ORDER BY id
LIMIT $4;

-- name: lock_dead_letter
SELECT id, queue, message_id, routing_key, body, raw_body, headers, error, attempts, status,
       created_at, resolved_at, resolved_by
FROM dead_letter
WHERE id = $1
FOR UPDATE;

-- name: resolve_dead_letter
UPDATE dead_letter SET status = $2, resolved_at = now(), resolved_by = $3 WHERE id = $1;

-- name: dead_letter_counts
SELECT queue, count(*)::bigint AS open FROM dead_letter WHERE status = 'DEAD' GROUP BY queue;
