-- Channels with several locations (Shopify locations): each location's figures per SKU.

-- name: location_states
-- What we last sent to each location of the channel for these SKUs, and what it shows.
SELECT sku, location_id, figure, shown, pushed_at
FROM channel_location_state
WHERE channel = $1 AND sku = ANY($2::text[])
ORDER BY sku, location_id;

-- name: location_pushed
-- The channel acknowledged these figures per (sku, location): remembered as sent and
-- shown. Run in the transaction of the SKUs' acknowledgement, for the SKUs it settled.
INSERT INTO channel_location_state AS l (channel, sku, location_id, figure, shown, pushed_at)
SELECT $1, p.sku, p.location_id, p.figure, p.shown, now()
FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])
     AS p (sku, location_id, figure, shown)
ORDER BY p.sku, p.location_id
ON CONFLICT (channel, sku, location_id) DO UPDATE SET
    figure = EXCLUDED.figure, shown = EXCLUDED.shown, pushed_at = now(), updated_at = now();

-- name: location_read_back
-- A read-back found what each (sku, location) shows ($5, NULL: not stocked there)
-- against our figure for it now ($4): the next push compares from what it shows.
INSERT INTO channel_location_state AS l (channel, sku, location_id, figure, shown)
SELECT $1, r.sku, r.location_id, r.figure, r.shown
FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])
     AS r (sku, location_id, figure, shown)
ORDER BY r.sku, r.location_id
ON CONFLICT (channel, sku, location_id) DO UPDATE SET
    figure = EXCLUDED.figure, shown = EXCLUDED.shown, updated_at = now();

-- name: location_drift
-- repair_drift_bulk for a channel with several locations: the drift is decided per
-- location by the caller ($7: some location shows something else than its figure), the
-- per-SKU row gets the total shown ($3, NULL: no mapped location stocks it) and our
-- total figure ($5). Same guards as repair_drift_bulk: left alone while a push is in
-- flight, when a newer change is known, or when a push was claimed since the read.
INSERT INTO channel_sync_state AS s (channel, sku, desired_version, desired_quantity,
                                     pushed_version, pushed_quantity, status,
                                     pending_since, pending_changes, claim_seq)
SELECT $1, d.sku, d.version, d.figure, 0, d.shown,
       CASE WHEN d.shown IS NULL THEN 'UNLISTED' WHEN d.drifted THEN 'PENDING'
            ELSE 'SYNCED' END,
       CASE WHEN d.shown IS NOT NULL AND d.drifted THEN now() END,
       CASE WHEN d.shown IS NOT NULL AND d.drifted THEN 1 ELSE 0 END,
       d.seen_seq
FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bool[])
     AS d (sku, shown, version, figure, seen_seq, drifted)
ORDER BY d.sku
ON CONFLICT (channel, sku) DO UPDATE SET
    desired_version = GREATEST(s.desired_version, EXCLUDED.desired_version),
    desired_quantity = EXCLUDED.desired_quantity,
    pushed_quantity = EXCLUDED.pushed_quantity,
    unlisted_at = CASE WHEN EXCLUDED.pushed_quantity IS NULL THEN now() END,
    status = CASE WHEN EXCLUDED.pushed_quantity IS NULL THEN 'UNLISTED'
                  WHEN EXCLUDED.status = 'PENDING' THEN 'PENDING'
                  WHEN s.status <> 'PENDING' THEN 'SYNCED'
                  ELSE s.status END,
    pending_since = CASE WHEN EXCLUDED.status = 'PENDING' THEN COALESCE(s.pending_since, now())
                         WHEN EXCLUDED.pushed_quantity IS NULL THEN NULL
                         ELSE s.pending_since END,
    pending_changes = CASE WHEN EXCLUDED.status = 'PENDING' THEN GREATEST(1, s.pending_changes)
                           WHEN EXCLUDED.pushed_quantity IS NULL THEN 0
                           ELSE s.pending_changes END,
    attempts = CASE WHEN EXCLUDED.status = 'PENDING' THEN 0 ELSE s.attempts END,
    next_attempt_at = now(),
    updated_at = now()
WHERE s.claimed_version IS NULL AND s.desired_version <= EXCLUDED.desired_version
  AND s.claim_seq = EXCLUDED.claim_seq
RETURNING s.sku, s.status;
