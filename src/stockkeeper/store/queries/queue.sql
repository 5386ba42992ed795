-- The embedded broker: a PostgreSQL table per-queue FIFO with leases.

-- name: queue_insert
INSERT INTO queue_message (queue, message_id, exchange, routing_key, body, headers, available_at)
SELECT q, m, e, r, b, h::jsonb, now() + make_interval(secs => d / 1000.0)
FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::bytea[], $6::text[],
            $7::bigint[]) AS t(q, m, e, r, b, h, d);

-- name: queue_notify
-- Wake the consumers of each queue named in $2 (the NOTIFY payload is the queue name).
-- Delivered at commit, so a consumer never wakes to a message it cannot see yet.
SELECT pg_notify($1, q) FROM (SELECT DISTINCT unnest($2::text[]) AS q ORDER BY 1) AS queues;

-- name: queue_claim
-- Oldest ready messages of one queue, leased to this consumer. SKIP LOCKED lets many
-- consumers share a queue; a consumer that dies loses its lease and the message is
-- delivered again. ARRAY(...) evaluates the LIMIT subquery exactly once: as a join
-- source, a cached generic plan could re-run it per row and lease the whole queue.
UPDATE queue_message m
SET leased_until = now() + make_interval(secs => $3 / 1000.0), deliveries = m.deliveries + 1
WHERE m.id = ANY (ARRAY (
    SELECT id FROM queue_message
    WHERE queue = $1 AND available_at <= now() AND dead_at IS NULL
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING m.id, m.message_id, m.routing_key, m.body, m.headers, m.deliveries;

-- name: queue_ack
DELETE FROM queue_message WHERE id = $1;

-- name: queue_ack_many
DELETE FROM queue_message WHERE id = ANY($1::bigint[]);

-- name: queue_requeue
UPDATE queue_message SET leased_until = NULL WHERE id = $1;

-- name: queue_reject
-- The broker's own dead-letter handling: kept, never delivered again.
UPDATE queue_message SET leased_until = NULL, dead_at = now() WHERE id = $1;

-- name: queue_depths
SELECT queue, count(*)::bigint AS depth FROM queue_message WHERE dead_at IS NULL GROUP BY queue;
