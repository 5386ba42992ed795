-- The transactional outbox.

-- name: insert_events
-- One statement for all events of a transaction. SKU-bound events take the next
-- numbers of their SKU's sequence; the SKU rows are already locked by bump_skus.
WITH ev AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
        WITH ORDINALITY AS e(event_id, event_type, sku, source, payload, ord)
), counts AS (
    SELECT sku, count(*) AS n FROM ev WHERE sku IS NOT NULL GROUP BY sku
), bumped AS (
    UPDATE sku s SET event_seq = s.event_seq + counts.n
    FROM counts WHERE s.sku = counts.sku
    RETURNING s.sku, s.event_seq - counts.n AS base
), inserted AS (
    INSERT INTO domain_event (event_id, event_type, sku, sequence, source, payload)
    SELECT ev.event_id, ev.event_type, ev.sku,
           bumped.base + row_number() OVER (PARTITION BY ev.sku ORDER BY ev.ord),
           ev.source, ev.payload::jsonb
    FROM ev LEFT JOIN bumped ON bumped.sku = ev.sku
    ORDER BY ev.ord
    RETURNING 1
)
-- Wake the dispatchers in the same round trip. Delivered at commit, only if the
-- transaction commits; repeats in one transaction fold into one notification.
SELECT pg_notify($6, '') FROM (SELECT count(*) FROM inserted) AS c;

-- name: outbox_backlog
SELECT count(*) FROM domain_event WHERE status = 'PENDING';

-- name: outbox_pending_ingest
-- The pollers' backpressure: ingest messages still in the outbox.
SELECT count(*) FROM domain_event WHERE status = 'PENDING' AND event_type LIKE 'ingest.%';
