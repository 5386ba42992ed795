-- name: guard_levels
-- Newer wins: a level is recorded (and returned, to be applied) only when it is newer
-- than what this connector last told us for the SKU and location. In key order, so two
-- ingest consumers wait on each other in order.
INSERT INTO source_record_version AS v (connector, sku, location, source_updated_at, on_hand)
SELECT $1, l.sku, l.location, l.at, l.on_hand
FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::bigint[])
     AS l (sku, location, at, on_hand)
ORDER BY l.sku, l.location
ON CONFLICT (connector, sku, location) DO UPDATE
SET source_updated_at = EXCLUDED.source_updated_at,
    on_hand = EXCLUDED.on_hand,
    applied_at = now()
WHERE v.source_updated_at < EXCLUDED.source_updated_at
RETURNING v.sku, v.location;

-- name: claim_sales
-- Once per (source, transaction_id): the sales returned are new; the rest were applied.
INSERT INTO ingested_sale (source, transaction_id, sku, delta)
SELECT s.source, s.tid, s.sku, s.delta
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS s (source, tid, sku, delta)
ORDER BY s.source, s.tid
ON CONFLICT DO NOTHING
RETURNING source, transaction_id;

-- name: set_unbooked
UPDATE ingested_sale SET unbooked = $3 WHERE source = $1 AND transaction_id = $2;

-- name: set_unbooked_many
UPDATE ingested_sale s SET unbooked = u.units
FROM unnest($1::text[], $2::text[], $3::int[]) AS u (source, transaction_id, units)
WHERE s.source = u.source AND s.transaction_id = u.transaction_id;

-- name: lock_sku_batches
-- Every batch of the SKUs, locked in id order (the global lock order).
SELECT id, sku, location, lot_number, expires_at, on_hand, unavailable, reserved,
       committed, oversold, version
FROM sku_batch
WHERE sku = ANY($1::text[])
ORDER BY id
FOR NO KEY UPDATE;

-- name: upsert_prices
INSERT INTO sku_price AS p (sku, connector, source_price, price, source_updated_at)
SELECT x.sku, $1, x.source_price, x.price, x.at
FROM unnest($2::text[], $3::numeric[], $4::numeric[], $5::timestamptz[])
     AS x (sku, source_price, price, at)
ORDER BY x.sku
ON CONFLICT (sku, connector) DO UPDATE
SET source_price = EXCLUDED.source_price, price = EXCLUDED.price,
    source_updated_at = EXCLUDED.source_updated_at, updated_at = now()
WHERE p.source_updated_at < EXCLUDED.source_updated_at;

-- name: get_cursor
SELECT * FROM source_cursor WHERE connector = $1;

-- name: save_cursor
INSERT INTO source_cursor AS c (connector, last_modified, sku, location, token, pages, records)
VALUES ($1, $2, $3, $4, $5, 1, $6)
ON CONFLICT (connector) DO UPDATE
SET last_modified = EXCLUDED.last_modified, sku = EXCLUDED.sku,
    location = EXCLUDED.location, token = EXCLUDED.token,
    pages = c.pages + 1, records = c.records + EXCLUDED.records, updated_at = now();

-- name: claim_delivery
-- A concurrent first delivery of the id is waited for: its commit makes this a conflict.
INSERT INTO webhook_delivery (connector, event_id, digest) VALUES ($1, $2, $3)
ON CONFLICT DO NOTHING
RETURNING event_id;

-- name: delivery_digest
-- What the id's first delivery carried (NULL for one kept from before digests); read
-- after claim_delivery found it taken, so it sees the first delivery's commit.
SELECT digest FROM webhook_delivery WHERE connector = $1 AND event_id = $2;

-- name: circuit_state
SELECT * FROM connector_state WHERE connector = $1;

-- name: save_circuit
INSERT INTO connector_state AS s (connector, circuit, failures, opened_at, last_error)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (connector) DO UPDATE
SET circuit = EXCLUDED.circuit, failures = EXCLUDED.failures,
    opened_at = EXCLUDED.opened_at, last_error = EXCLUDED.last_error, updated_at = now();

-- name: record_failure
-- A poll, push or sync of the connector failed: keep the last one and its time.
INSERT INTO connector_state AS s (connector, last_failure, last_failure_at)
VALUES ($1, $2, $3)
ON CONFLICT (connector) DO UPDATE
SET last_failure = EXCLUDED.last_failure, last_failure_at = EXCLUDED.last_failure_at,
    updated_at = now()
WHERE s.last_failure_at IS NULL OR s.last_failure_at <= EXCLUDED.last_failure_at;

-- name: last_failures
SELECT connector, last_failure, last_failure_at
FROM connector_state
WHERE connector = ANY($1::text[]) AND last_failure_at IS NOT NULL;

-- name: connector_states
SELECT k.connector, c.last_modified, c.sku, c.token, c.pages, c.records, c.updated_at,
       s.circuit, s.failures, s.opened_at, s.last_error, s.last_failure, s.last_failure_at
FROM unnest($1::text[]) AS k (connector)
LEFT JOIN source_cursor c ON c.connector = k.connector
LEFT JOIN connector_state s ON s.connector = k.connector;

-- name: create_level_batches
-- A level for a place that has no batch at all (the first sync of a catalogue): its
-- lotless batch is created holding the level, with its ADJUSTMENT ledger entry, instead
-- of created empty and then moved (an UPDATE of a row inserted in the same transaction
-- runs its foreign-key checks again, one per row). A place taken meanwhile by another
-- transaction is left alone (ON CONFLICT): apply_plain_levels moves it. Returns the SKUs
-- whose new batch holds units.
WITH l AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS l (sku, location, on_hand)
),
created AS (
    INSERT INTO sku_batch (sku, location, on_hand)
    SELECT l.sku, l.location, l.on_hand
    FROM l
    WHERE NOT EXISTS (
        SELECT 1 FROM sku_batch b WHERE b.sku = l.sku AND b.location = l.location
    )
    ORDER BY l.sku, l.location
    ON CONFLICT (sku, location, COALESCE(lot_number, '')) DO NOTHING
    RETURNING id, sku, on_hand
),
ledger AS (
    INSERT INTO inventory_ledger (batch_id, sku, entry_type, d_on_hand, source, reference_id,
                                  reason)
    SELECT c.id, c.sku, 'ADJUSTMENT', c.on_hand, $4, $5, $6
    FROM created c
    WHERE c.on_hand > 0
    ORDER BY c.id
)
SELECT c.sku FROM created c WHERE c.on_hand > 0;

-- name: lock_sku_batches_quietly
-- lock_sku_batches without sending the rows back: the page's levels are computed in
-- SQL (apply_plain_levels), so only the locks, taken in id order, are needed here.
SELECT count(*) FROM (
    SELECT 1 FROM sku_batch WHERE sku = ANY($1::text[]) ORDER BY id FOR NO KEY UPDATE
) AS locked;

-- name: apply_plain_levels
-- The page's new levels at places whose one batch is the lotless one (a place with lots
-- is left to domain.ingest.level_moves), in one statement: the batch takes the level
-- (on_hand := level, what it had oversold settled, D-120) and gets its ADJUSTMENT
-- ledger entry. The caller holds every batch's lock (lock_sku_batches_quietly), so the
-- join may visit them in any order. Returns each batch moved (kind 'moved': its SKU and
-- how much its shortfall grew) and each place left to the caller (kind 'lots').
WITH l AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS l (sku, location, on_hand)
),
lots AS MATERIALIZED (
    SELECT l.sku, l.location
    FROM l
    WHERE EXISTS (
        SELECT 1 FROM sku_batch o
        WHERE o.sku = l.sku AND o.location = l.location AND o.lot_number IS NOT NULL
    )
),
moved AS MATERIALIZED (
    SELECT b.id, b.sku, l.on_hand - b.on_hand AS d_on_hand, -b.oversold AS d_oversold,
           -- The shortfall after (oversold settled) minus before, each as
           -- domain/quantities.Figures.shortfall (D-475).
           GREATEST(b.reserved + b.committed - GREATEST(l.on_hand - b.unavailable, 0), 0)
           - GREATEST(b.reserved + b.committed + b.oversold
                      - GREATEST(b.on_hand - b.unavailable, 0), 0)
           AS short_grew
    FROM l
    JOIN sku_batch b ON b.sku = l.sku AND b.location = l.location AND b.lot_number IS NULL
    WHERE (b.on_hand <> l.on_hand OR b.oversold <> 0)
      AND NOT EXISTS (SELECT 1 FROM lots WHERE lots.sku = l.sku AND lots.location = l.location)
),
updated AS (
    UPDATE sku_batch b
    SET on_hand = b.on_hand + m.d_on_hand,
        oversold = b.oversold + m.d_oversold,
        version = b.version + 1,
        updated_at = now()
    FROM moved m
    WHERE b.id = m.id
),
ledger AS (
    INSERT INTO inventory_ledger (batch_id, sku, entry_type, d_on_hand, source, reference_id,
                                  reason, d_oversold)
    SELECT m.id, m.sku, 'ADJUSTMENT', m.d_on_hand, $4, $5, $6, m.d_oversold
    FROM moved m
    ORDER BY m.id
)
SELECT 'moved' AS kind, m.sku, NULL::text AS location, GREATEST(m.short_grew, 0) AS oversell
FROM moved m
UNION ALL
SELECT 'lots', lots.sku, lots.location, 0 FROM lots;
