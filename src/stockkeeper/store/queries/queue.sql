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
-- delivered again. The picked rows are a MATERIALIZED CTE, evaluated exactly once, and
-- each step takes its ids through ARRAY(...) (an InitPlan, an index lookup by id): as a
-- join source, a cached generic plan could re-run the LIMIT per row and lease the
-- whole queue.
-- The delivery limit (D-458, as RabbitMQ's x-delivery-limit, D-160): a picked message
-- already handed out more than $4 times (a consumer died on it each time, or handed it
-- back) is not leased again but moved into dead_letter under queue $5, with the error
-- format($6, deliveries), in this same statement: never lost between two, and no
-- second round trip. Such messages come back as rows with a dead_letter_id and only
-- their message_id and deliveries.
WITH picked AS MATERIALIZED (
    SELECT id, deliveries > $4 AS spent FROM queue_message
    WHERE queue = $1 AND available_at <= now() AND dead_at IS NULL
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
), spent AS (
    DELETE FROM queue_message m
    WHERE m.id = ANY (ARRAY (SELECT id FROM picked WHERE spent))
    RETURNING m.id, m.message_id, m.routing_key, m.body, m.headers, m.deliveries
), buried AS (
    INSERT INTO dead_letter (queue, message_id, routing_key, body, raw_body, headers, error,
                             attempts)
    SELECT $5, s.message_id, s.routing_key, dead_letter_json(s.body), s.body, s.headers,
           format($6, s.deliveries), s.deliveries
    FROM spent s
    ORDER BY s.id
    RETURNING id, message_id, attempts
), leased AS (
    UPDATE queue_message m
    SET leased_until = now() + make_interval(secs => $3 / 1000.0),
        deliveries = m.deliveries + 1
    WHERE m.id = ANY (ARRAY (SELECT id FROM picked WHERE NOT spent))
    RETURNING m.id, m.message_id, m.routing_key, m.body, m.headers, m.deliveries
)
SELECT id, message_id, routing_key, body, headers, deliveries, NULL::bigint AS dead_letter_id
FROM leased
UNION ALL
SELECT NULL, message_id, NULL, NULL, NULL, attempts, id FROM buried;

-- name: queue_ack
DELETE FROM queue_message WHERE id = $1;

-- name: queue_ack_many
DELETE FROM queue_message WHERE id = ANY($1::bigint[]);

-- name: queue_requeue
UPDATE queue_message SET leased_until = NULL WHERE id = $1;

-- name: queue_reject
-- The broker's own dead-letter handling, for a message a consumer gave up unable to
-- record its failure (D-123): moved into dead_letter under queue $2 with the error $3
-- and its deliveries as attempts, in one statement, as RabbitMQ's dead-lettering and
-- the drain do (D-476); never delivered again. The id of the dead letter, or no row.
WITH gone AS (
    DELETE FROM queue_message WHERE id = $1
    RETURNING message_id, routing_key, body, headers, deliveries
)
INSERT INTO dead_letter (queue, message_id, routing_key, body, raw_body, headers, error,
                         attempts)
SELECT $2, message_id, routing_key, dead_letter_json(body), body, headers, $3, deliveries
FROM gone
RETURNING id;

-- name: queue_depths
SELECT queue, count(*)::bigint AS depth FROM queue_message WHERE dead_at IS NULL GROUP BY queue;
