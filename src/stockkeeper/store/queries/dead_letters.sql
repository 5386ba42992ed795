-- Dead letters: messages that can not be applied, kept with their error for the admin API.

-- name: insert_dead_letter
INSERT INTO dead_letter (queue, message_id, routing_key, body, raw_body, headers, error, attempts)
-- ::text::jsonb: the values arrive as JSON text (no second encoding by the codec).
VALUES ($1, $2, $3, $4::text::jsonb, $5, $6::text::jsonb, $7, $8)
RETURNING id;

-- name: insert_dead_letters
-- Many dead letters, one row each, in one statement (the bad records of a page).
INSERT INTO dead_letter (queue, message_id, routing_key, body, raw_body, headers, error, attempts)
SELECT d.queue, d.message_id, d.routing_key, d.body::jsonb, d.raw_body, d.headers::jsonb,
       d.error, d.attempts
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::text[],
            $7::text[], $8::int[])
     AS d (queue, message_id, routing_key, body, raw_body, headers, error, attempts);

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
