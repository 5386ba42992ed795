-- Per-channel availability rules (docs/channels.md), their change log, and the figures
-- the rules are computed from.

-- name: rules_for_sku
-- The stored rules that bear on SKU $2 in channels $1: each channel's row (sku '') and
-- the SKU's override rows.
SELECT channel, sku, locations, buffer, cap, share_percent, clear_cap
FROM channel_rule
WHERE channel = ANY($1::text[]) AND sku IN ('', $2);

-- name: rules_for_skus
-- rules_for_sku for many SKUs ($2) at once (a bulk level message).
SELECT channel, sku, locations, buffer, cap, share_percent, clear_cap
FROM channel_rule
WHERE channel = ANY($1::text[]) AND (sku = '' OR sku = ANY($2::text[]));

-- name: rules_of_channel
-- One channel's stored rule (sku '') and every override, by SKU.
SELECT channel, sku, locations, buffer, cap, share_percent, clear_cap
FROM channel_rule
WHERE channel = $1
ORDER BY sku;

-- name: lock_rule
SELECT channel, sku, locations, buffer, cap, share_percent, clear_cap
FROM channel_rule
WHERE channel = $1 AND sku = $2
FOR UPDATE;

-- name: put_rule
INSERT INTO channel_rule (channel, sku, locations, buffer, cap, share_percent, clear_cap,
                          updated_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (channel, sku) DO UPDATE SET
    locations = EXCLUDED.locations, buffer = EXCLUDED.buffer, cap = EXCLUDED.cap,
    share_percent = EXCLUDED.share_percent, clear_cap = EXCLUDED.clear_cap,
    updated_by = EXCLUDED.updated_by, updated_at = now();

-- name: delete_rule
DELETE FROM channel_rule WHERE channel = $1 AND sku = $2;

-- name: log_rule_change
INSERT INTO channel_rule_change (channel, sku, before, after, changed_by, repushed)
VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $6);

-- name: rule_changes
SELECT id, channel, sku, before, after, changed_by, changed_at, repushed
FROM channel_rule_change
WHERE channel = $1 AND id > $2
ORDER BY id
LIMIT $3;

-- name: available_by_location
-- What each location has available per SKU; an expired lot counts for nothing (as in
-- sku_levels).
SELECT b.sku, b.location,
       COALESCE(sum(GREATEST(b.on_hand - b.unavailable - b.reserved - b.committed
                             - b.oversold, 0))
                FILTER (WHERE b.expires_at IS NULL OR b.expires_at > $2), 0)::bigint
           AS available
FROM sku_batch b
WHERE b.sku = ANY($1::text[])
GROUP BY b.sku, b.location;

-- name: sku_page
-- Every SKU we know, by name after $1: what a channel-wide rule change or a resync
-- walks through.
SELECT sku FROM sku WHERE sku > $1 ORDER BY sku LIMIT $2;

-- name: rule_stale_page
-- The channel's SKUs after $3 whose figure was made under another rule than $2 (the
-- channel's rule now, as text): what a config edit read at start must re-figure
-- (D-447). SKUs with an override always differ, and are re-figured too (a few).
SELECT sku FROM channel_sync_state
WHERE channel = $1 AND sku > $3 AND desired_rule IS DISTINCT FROM $2
ORDER BY sku
LIMIT $4;

-- name: refigure
-- New figures for SKUs $2 on channel $1 (quantities $3, the rules' text $4, the SKUs'
-- current versions $5). A row whose figure changed, or every row when $6 (force: a
-- resync), is due now; a SKU the channel has no row for gets one, due now (never told
-- anything). A row whose rule text alone changed only records it. Without force a DEAD
-- or UNLISTED row keeps its status (replay or the recheck moves it); with force it is
-- due again with a fresh count, and what we believed the channel shows is forgotten.
-- A push in flight whose figure changed loses its claim: claim_seq moves on, so its
-- later writes and its acknowledgement are fenced out, and the row is due at once.
-- $7: SKUs of a channel with several locations whose figure at some location changed
-- though their sum did not (D-445): they count as changed figures.
-- Answers one row per SKU made due.
WITH was AS (
    SELECT sku, desired_quantity FROM channel_sync_state
    WHERE channel = $1 AND sku = ANY($2::text[])
    ORDER BY sku
    FOR UPDATE
), put AS (
INSERT INTO channel_sync_state AS s (channel, sku, desired_version, desired_quantity,
                                     desired_rule, status, pending_since, pending_changes,
                                     next_attempt_at)
SELECT $1, n.sku, n.version, n.quantity, n.rule, 'PENDING', now(), 1, now()
FROM unnest($2::text[], $3::bigint[], $4::text[], $5::bigint[])
     AS n (sku, quantity, rule, version)
ON CONFLICT (channel, sku) DO UPDATE SET
    -- The figure is of the SKU's current stock: an older level change is stale now.
    desired_version = GREATEST(s.desired_version, EXCLUDED.desired_version),
    desired_quantity = EXCLUDED.desired_quantity,
    desired_rule = EXCLUDED.desired_rule,
    status = CASE WHEN $6 OR ((s.desired_quantity <> EXCLUDED.desired_quantity
                               OR s.sku = ANY($7::text[]))
                              AND s.status IN ('SYNCED', 'PENDING'))
                  THEN 'PENDING' ELSE s.status END,
    attempts = CASE WHEN $6 AND s.status IN ('DEAD', 'UNLISTED') THEN 0 ELSE s.attempts END,
    last_error = CASE WHEN $6 THEN NULL ELSE s.last_error END,
    -- A resync forgets what we believe the channel shows, so the figure is sent even
    -- where we think it is there already (Shopify: with changeFromQuantity null).
    -- So does a new figure while a push of the old one is in flight (D-487): that push
    -- may still land, its acknowledgement fenced out, so what the channel shows is not
    -- known, and the new figure must be sent even if it equals the one before.
    pushed_quantity = CASE WHEN $6 AND s.claimed_version IS NULL THEN NULL
                           WHEN s.claimed_version IS NOT NULL
                                AND (s.desired_quantity <> EXCLUDED.desired_quantity
                                     OR s.sku = ANY($7::text[])) THEN NULL
                           ELSE s.pushed_quantity END,
    next_attempt_at = CASE WHEN $6 OR ((s.desired_quantity <> EXCLUDED.desired_quantity
                                        OR s.sku = ANY($7::text[]))
                                       AND (s.status = 'SYNCED'
                                            OR s.claimed_version IS NOT NULL))
                           THEN now() ELSE s.next_attempt_at END,
    pending_since = CASE WHEN $6 OR ((s.desired_quantity <> EXCLUDED.desired_quantity
                                      OR s.sku = ANY($7::text[]))
                                     AND s.status IN ('SYNCED', 'PENDING'))
                         THEN COALESCE(s.pending_since, now()) ELSE s.pending_since END,
    pending_changes = CASE WHEN $6 OR ((s.desired_quantity <> EXCLUDED.desired_quantity
                                        OR s.sku = ANY($7::text[]))
                                       AND s.status IN ('SYNCED', 'PENDING'))
                           THEN s.pending_changes + 1 ELSE s.pending_changes END,
    claim_seq = CASE WHEN s.claimed_version IS NOT NULL
                          AND (s.desired_quantity <> EXCLUDED.desired_quantity
                               OR s.sku = ANY($7::text[]))
                     THEN s.claim_seq + 1 ELSE s.claim_seq END,
    claimed_version = CASE WHEN (s.desired_quantity <> EXCLUDED.desired_quantity
                                 OR s.sku = ANY($7::text[])) THEN NULL
                           ELSE s.claimed_version END,
    claimed_changes = CASE WHEN (s.desired_quantity <> EXCLUDED.desired_quantity
                                 OR s.sku = ANY($7::text[])) THEN NULL
                           ELSE s.claimed_changes END,
    late_since = CASE WHEN (s.desired_quantity <> EXCLUDED.desired_quantity
                            OR s.sku = ANY($7::text[])) THEN NULL
                      ELSE s.late_since END,
    leased_until = CASE WHEN (s.desired_quantity <> EXCLUDED.desired_quantity
                              OR s.sku = ANY($7::text[])) THEN NULL
                        ELSE s.leased_until END,
    updated_at = now()
WHERE (s.desired_quantity <> EXCLUDED.desired_quantity OR s.sku = ANY($7::text[]))
   OR s.desired_rule IS DISTINCT FROM EXCLUDED.desired_rule
   OR ($6 AND s.claimed_version IS NULL)
RETURNING s.sku, s.status, s.desired_quantity
)
SELECT put.sku FROM put
LEFT JOIN was ON was.sku = put.sku
WHERE put.status = 'PENDING'
  AND ($6 OR was.sku IS NULL OR was.desired_quantity <> put.desired_quantity
       OR put.sku = ANY($7::text[]));

-- name: sku_state
-- One channel's sync row for one SKU, as the admin API shows it.
SELECT channel, sku, status, desired_version, desired_quantity, desired_rule,
       pushed_version, pushed_quantity, pushed_at, attempts, last_error, channel_ref,
       pending_since, updated_at
FROM channel_sync_state
WHERE channel = $1 AND sku = $2;

-- name: due_count
SELECT count(*) FROM channel_sync_state
WHERE channel = $1 AND status = 'PENDING' AND ($2::text[] IS NULL OR sku = ANY($2::text[]));
