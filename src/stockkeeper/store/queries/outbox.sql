-- The transactional outbox.

-- name: insert_events
-- One statement for all events of a transaction. SKU-bound events take the next
-- numbers of their SKU's sequence; the SKU rows are already locked by bump_skus. Every
-- event carries its ordering key ($7, D-130), and all carry the trace context of the
-- span that wrote them ($8, a W3C traceparent, NULL when tracing is off; D-241).
-- In an Idempotency-Key's transaction ($9 not NULL) the key goes in with its answer in
-- this same round trip (D-365), as record_idempotency_key would: after the events (its
-- SELECT reads their count, so it runs once they are in, the order D-302 had), and
-- `keyed` false when another request holds the key (DO NOTHING waited for its end).
WITH ev AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $7::text[])
        WITH ORDINALITY AS e(event_id, event_type, sku, source, payload, ordering_key, ord)
), counts AS (
    SELECT sku, count(*) AS n FROM ev WHERE sku IS NOT NULL GROUP BY sku
), bumped AS (
    UPDATE sku s SET event_seq = s.event_seq + counts.n
    FROM counts WHERE s.sku = counts.sku
    RETURNING s.sku, s.event_seq - counts.n AS base
), inserted AS (
    INSERT INTO domain_event (event_id, event_type, sku, sequence, source, payload,
                              ordering_key, trace_context)
    SELECT ev.event_id, ev.event_type, ev.sku,
           bumped.base + row_number() OVER (PARTITION BY ev.sku ORDER BY ev.ord),
           ev.source, ev.payload::jsonb, ev.ordering_key, $8::text
    FROM ev LEFT JOIN bumped ON bumped.sku = ev.sku
    ORDER BY ev.ord
    RETURNING 1
), done AS (
    SELECT count(*) AS n FROM inserted
), key_row AS (
    INSERT INTO idempotency_key (principal, key, method, path, request_hash, status_code,
                                 response)
    SELECT $9::text, $10::text, $11::text, $12::text, $13::text, $14::integer, $15::json
    FROM done
    WHERE $9::text IS NOT NULL
    ON CONFLICT (principal, key) DO NOTHING
    RETURNING 1
)
-- Wake the dispatchers in the same round trip. Delivered at commit, only if the
-- transaction commits; repeats in one transaction fold into one notification.
SELECT pg_notify($6, ''), EXISTS (SELECT 1 FROM key_row) AS keyed FROM done;

-- name: outbox_backlog
SELECT count(*) FROM domain_event WHERE status = 'PENDING';

-- name: outbox_pending_ingest
-- The pollers' backpressure: ingest messages still in the outbox.
SELECT count(*) FROM domain_event WHERE status = 'PENDING' AND event_type LIKE 'ingest.%';

-- name: outbox_claim
-- Oldest PENDING events. SKIP LOCKED lets several dispatchers run at once; the order
-- per ordering key is kept by outbox_blocked_keys below.
SELECT id, event_id, event_type, sku, sequence, source, payload, occurred_at, attempts,
       ordering_key, trace_context
FROM domain_event
WHERE status = 'PENDING'
ORDER BY id
LIMIT $1
FOR UPDATE SKIP LOCKED;

-- name: outbox_blocked_keys
-- Ordering keys with an earlier PENDING event that another dispatcher holds: our later
-- events of those keys must wait, or they could reach the broker first. Every lower
-- unlocked PENDING row would have been in our claim (ORDER BY id), so a row found here
-- is locked by another dispatcher. $3: the rows of our claim, and those of our own
-- batch in flight that are already on their way to the broker ahead of this one
-- (D-375). `id < $2` keeps it on domain_event_pending, over a few batches' rows
-- whatever the backlog.
SELECT ordering_key, min(id) AS first_held
FROM domain_event
WHERE status = 'PENDING' AND ordering_key = ANY($1::text[]) AND id < $2
  AND NOT (id = ANY($3::bigint[]))
GROUP BY ordering_key;

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
-- Two scalar subqueries, not one scan with status IN ('PENDING', 'FAILED'): each stays on
-- its partial index (domain_event_pending, domain_event_failed) however many SENT rows
-- the table holds. Runs every few seconds per dispatcher and on every /admin/status.
SELECT (SELECT count(*) FROM domain_event WHERE status = 'PENDING') AS pending,
       (SELECT count(*) FROM domain_event WHERE status = 'FAILED') AS failed,
       (SELECT EXTRACT(EPOCH FROM now() - min(occurred_at))::float8
        FROM domain_event WHERE status = 'PENDING') AS oldest_pending_s;
