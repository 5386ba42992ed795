-- Propagation to sales channels: per channel and SKU sync state, pushes, lag, alerts.

-- name: ensure_sync_rows
-- A row per channel for a SKU we have news of; new rows mean "never told anything".
INSERT INTO channel_sync_state (channel, sku)
SELECT c, $2 FROM unnest($1::text[]) AS c
ON CONFLICT (channel, sku) DO NOTHING;

-- name: lock_sync_rows
-- One SKU's rows across the channels, locked in channel order. A consumer transaction
-- touches one SKU and a sender's acknowledgement one channel, so they cannot deadlock.
SELECT channel, desired_version, pushed_version, pushed_quantity, status,
       EXTRACT(EPOCH FROM now() - unlisted_at)::float8 AS unlisted_for_s
FROM channel_sync_state
WHERE sku = $1 AND channel = ANY($2::text[])
ORDER BY channel
FOR UPDATE;

-- name: lock_sync_rows_bulk
-- Many SKUs' rows across the channels, those that exist, locked in the order of the
-- (sku, channel) pairs given, which the caller sorts (apply_levels inserts the others in
-- the same order): one SKU's consumer locks a prefix of that order, and a sender's
-- acknowledgement (one channel) locks in SKU order too, so none of them can deadlock
-- with another. One primary-key probe per pair, whatever the planner knows of the
-- table: `sku = ANY(..) AND channel = ANY(..)` on a table not analyzed since it grew
-- (a first sync of a catalogue, autovacuum behind) was planned as a scan of the
-- channels' whole key range filtered by the SKU array, 170 ms a 500-SKU message at
-- 600,000 rows and growing with the table (D-420). $1: the pairs as a JSON array of
-- [sku, channel] (store.sql.rows_param).
SELECT s.sku, s.channel, s.desired_version, s.pushed_version, s.pushed_quantity, s.status,
       EXTRACT(EPOCH FROM now() - s.unlisted_at)::float8 AS unlisted_for_s
FROM jsonb_array_elements($1::text::jsonb) AS p
CROSS JOIN LATERAL (
    SELECT * FROM channel_sync_state s
    WHERE s.channel = p->>1 AND s.sku = p->>0
    FOR UPDATE
) AS s;

-- name: apply_levels
-- Newer levels of SKUs ($1: a JSON array of rows [sku, version, quantity, channel,
-- verdict, rule, committed_at, trace, fresh], store.sql.rows_param), one row per (sku,
-- channel) with its version, the channel's figure (from its availability rule, whose
-- text is the rule) and its (non-stale) verdict, each committed at its committed_at,
-- its push continuing its trace: push (due, joining any push already due), echo or
-- noop (the channel already shows it), held (kept, not pushed). A due push keeps its
-- backoff; a new one is due now. A row that was not there when the caller locked
-- (fresh) is inserted holding its level, judged as never told: one write per row for a
-- SKU new to the channel, not an insert and an update (D-420). If another transaction
-- inserted it meanwhile, it is left alone and returned, for the caller to judge again
-- against what that one wrote. When a push became due, the senders listening on $2
-- are woken at commit.
WITH u AS (
    SELECT e->>0 AS sku, (e->>1)::bigint AS version, (e->>2)::bigint AS quantity,
           e->>3 AS channel, e->>4 AS verdict, e->>5 AS rule,
           (e->>6)::timestamptz AS committed_at, e->>7 AS trace, (e->>8)::bool AS fresh
    FROM jsonb_array_elements($1::text::jsonb) AS e
), applied AS (
UPDATE channel_sync_state s SET
    desired_version = u.version,
    desired_quantity = u.quantity,
    desired_rule = u.rule,
    status = CASE WHEN u.verdict = 'push' THEN 'PENDING'
                  WHEN u.verdict IN ('echo', 'noop') THEN 'SYNCED' ELSE s.status END,
    attempts = CASE WHEN u.verdict = 'push' AND s.status = 'DEAD' THEN 0 ELSE s.attempts END,
    next_attempt_at = CASE WHEN u.verdict = 'push' AND s.status <> 'PENDING' THEN now()
                           ELSE s.next_attempt_at END,
    pending_since = CASE WHEN u.verdict = 'push' THEN COALESCE(s.pending_since, u.committed_at)
                         WHEN u.verdict IN ('echo', 'noop') THEN NULL
                         ELSE s.pending_since END,
    pending_changes = CASE WHEN u.verdict = 'push' THEN s.pending_changes + 1
                           WHEN u.verdict IN ('echo', 'noop') THEN 0
                           ELSE s.pending_changes END,
    late_since = CASE WHEN u.verdict = 'push' AND s.claimed_version IS NOT NULL
                      THEN COALESCE(s.late_since, u.committed_at) ELSE s.late_since END,
    pushed_version = CASE WHEN u.verdict IN ('echo', 'noop') THEN u.version
                          ELSE s.pushed_version END,
    pushed_quantity = CASE WHEN u.verdict = 'echo' THEN u.quantity ELSE s.pushed_quantity END,
    trace_context = CASE WHEN u.verdict = 'push' THEN u.trace ELSE s.trace_context END,
    updated_at = now()
FROM u
WHERE s.channel = u.channel AND s.sku = u.sku AND NOT u.fresh
RETURNING u.verdict
), inserted AS (
INSERT INTO channel_sync_state AS s
    (channel, sku, desired_version, desired_quantity, desired_rule, status,
     pending_since, pending_changes, pushed_version, pushed_quantity, trace_context)
SELECT u.channel, u.sku, u.version, u.quantity, u.rule,
       CASE WHEN u.verdict = 'push' THEN 'PENDING' ELSE 'SYNCED' END,
       CASE WHEN u.verdict = 'push' THEN u.committed_at END,
       CASE WHEN u.verdict = 'push' THEN 1 ELSE 0 END,
       CASE WHEN u.verdict IN ('echo', 'noop') THEN u.version ELSE 0 END,
       CASE WHEN u.verdict = 'echo' THEN u.quantity END,
       CASE WHEN u.verdict = 'push' THEN u.trace END
FROM u WHERE u.fresh
ORDER BY u.sku, u.channel
ON CONFLICT (channel, sku) DO NOTHING
RETURNING s.sku, s.channel, s.status
), woken AS (
SELECT pg_notify($2, '')
FROM (SELECT verdict FROM applied WHERE verdict = 'push'
      UNION ALL SELECT 'push' FROM inserted WHERE status = 'PENDING' LIMIT 1) AS due
)
SELECT (SELECT count(*) FROM woken) AS woken,
       ARRAY(SELECT sku FROM inserted) AS skus, ARRAY(SELECT channel FROM inserted) AS channels;

-- name: claim_pushes
-- Due rows of one channel, oldest change first, leased to this sender. The lease
-- outlasts every try of one call, and a sender renews it (hold_pushes) before each
-- write after the first, so two senders never push one SKU at once; each claim takes
-- the next claim_seq, the token every later statement of this push is checked against.
UPDATE channel_sync_state s
SET leased_until = now() + make_interval(secs => $3),
    attempts = s.attempts + 1,
    claim_seq = s.claim_seq + 1,
    claimed_version = s.desired_version,
    claimed_changes = s.pending_changes,
    late_since = NULL
WHERE s.channel = $1 AND s.sku = ANY(ARRAY(
    SELECT sku FROM channel_sync_state
    WHERE channel = $1 AND status = 'PENDING' AND next_attempt_at <= now()
      AND (leased_until IS NULL OR leased_until < now())
    ORDER BY pending_since
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING s.sku, s.desired_version, s.desired_quantity, s.pushed_quantity, s.channel_ref,
          s.attempts, s.claim_seq, s.trace_context;

-- name: count_due
-- How many pushes of one channel are due now, counted up to $2 (whether the backlog
-- reaches the feed threshold; the LIMIT bounds the walk of a large backlog).
SELECT count(*) FROM (
    SELECT 1 FROM channel_sync_state
    WHERE channel = $1 AND status = 'PENDING' AND next_attempt_at <= now()
      AND (leased_until IS NULL OR leased_until < now())
    LIMIT $2
) AS due;

-- name: hold_pushes
-- Before a write that is not a push's first try: the SKUs whose claim is still this
-- sender's (token $3), their lease renewed for $4 seconds. A SKU missing from the answer
-- was claimed by another sender after this one's lease ran out: do not write it.
UPDATE channel_sync_state s SET leased_until = now() + make_interval(secs => $4)
FROM unnest($2::text[], $3::bigint[]) AS h (sku, token)
WHERE s.channel = $1 AND s.sku = h.sku AND s.claim_seq = h.token
  AND s.claimed_version IS NOT NULL
RETURNING s.sku;

-- name: ack_pushes
-- The channel acknowledged (or, $6 false, needed no call: it already showed the
-- figure): remember what it shows, log the push with its lag (from the commit of the
-- oldest change it carries, on the database's clock), and leave the row due again if a
-- newer change arrived while the push was in flight.
WITH was AS (
    SELECT s.sku, s.pending_since, s.claimed_changes, s.attempts,
           a.version, a.quantity, a.ref, a.called
    FROM channel_sync_state s
    JOIN unnest($2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::bool[], $7::bigint[])
         AS a (sku, version, quantity, ref, called, token) ON s.sku = a.sku
    WHERE s.channel = $1 AND s.claim_seq = a.token AND s.claimed_version = a.version
    -- In SKU order, as a bulk level message locks its rows (D-220): no lock cycle.
    ORDER BY s.sku
    FOR UPDATE OF s
), acked AS (
    UPDATE channel_sync_state s SET
        pushed_version = w.version,
        pushed_quantity = w.quantity,
        pushed_at = now(),
        channel_ref = COALESCE(w.ref, s.channel_ref),
        status = CASE WHEN s.desired_version > w.version THEN 'PENDING' ELSE 'SYNCED' END,
        pending_since = CASE WHEN s.desired_version > w.version
                             THEN COALESCE(s.late_since, now()) END,
        pending_changes = GREATEST(0, s.pending_changes - COALESCE(s.claimed_changes, 0)),
        claimed_version = NULL, claimed_changes = NULL, late_since = NULL,
        leased_until = NULL, attempts = 0, next_attempt_at = now(), last_error = NULL,
        updated_at = now()
    FROM was w
    WHERE s.channel = $1 AND s.sku = w.sku
    RETURNING s.sku, w.version, w.quantity, w.attempts, w.called,
              GREATEST(1, COALESCE(w.claimed_changes, 1)) AS changes,
              GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp() - w.pending_since) * 1000)
                  AS lag_ms
), logged AS (
    INSERT INTO channel_push (channel, sku, version, quantity, changes, attempts, lag_ms)
    SELECT $1, sku, version, quantity, changes, attempts, lag_ms FROM acked WHERE called
)
SELECT sku, changes, called, lag_ms::float8 AS lag_ms FROM acked;

-- name: retry_pushes
-- The push failed: back to the queue after each row's delay (seconds), lease let go.
UPDATE channel_sync_state s SET
    leased_until = NULL, claimed_version = NULL, claimed_changes = NULL, late_since = NULL,
    next_attempt_at = now() + make_interval(secs => r.delay_s), last_error = $4,
    updated_at = now()
FROM unnest($2::text[], $3::float8[], $5::bigint[]) AS r (sku, delay_s, token)
WHERE s.channel = $1 AND s.sku = r.sku AND s.claim_seq = r.token
  AND s.claimed_version IS NOT NULL;

-- name: release_pushes
-- A stopping sender lets go of pushes it did not finish: due again at once, and the
-- attempt its claim counted is given back (a shutdown is not the channel failing).
UPDATE channel_sync_state s SET
    leased_until = NULL, claimed_version = NULL, claimed_changes = NULL, late_since = NULL,
    attempts = GREATEST(0, s.attempts - 1), next_attempt_at = now(), updated_at = now()
FROM unnest($2::text[], $3::bigint[]) AS r (sku, token)
WHERE s.channel = $1 AND s.sku = r.sku AND s.claim_seq = r.token
  AND s.claimed_version IS NOT NULL;

-- name: dead_pushes
-- Returns the SKUs marked: only a claim still held is, so booking it again marks nothing.
UPDATE channel_sync_state s SET
    status = 'DEAD', leased_until = NULL, claimed_version = NULL, claimed_changes = NULL,
    late_since = NULL, last_error = $4, updated_at = now()
FROM unnest($2::text[], $3::bigint[]) AS d (sku, token)
WHERE s.channel = $1 AND s.sku = d.sku AND s.claim_seq = d.token
  AND s.claimed_version IS NOT NULL
RETURNING s.sku;

-- name: unlisted_pushes
-- The channel does not list these SKUs: nothing to push until drift repair finds them
-- or a new level probes them again (after the channel's unlisted_recheck_s).
UPDATE channel_sync_state s SET
    status = 'UNLISTED', pending_since = NULL, pending_changes = 0, leased_until = NULL,
    claimed_version = NULL, claimed_changes = NULL, late_since = NULL, attempts = 0,
    last_error = NULL, unlisted_at = now(), updated_at = now()
FROM unnest($2::text[], $3::bigint[]) AS u (sku, token)
WHERE s.channel = $1 AND s.sku = u.sku AND s.claim_seq = u.token
  AND s.claimed_version IS NOT NULL;

-- name: rearm_pushes
-- A replayed dead letter: the SKUs are due again with a fresh count.
UPDATE channel_sync_state SET
    status = 'PENDING', attempts = 0, next_attempt_at = now(), last_error = NULL,
    pending_since = COALESCE(pending_since, now()), updated_at = now()
WHERE channel = $1 AND sku = ANY($2::text[]) AND status = 'DEAD';

-- name: channel_lag
-- Lag samples per channel over the window: every acknowledged push, and every change
-- still waiting, at its age so far (a channel that is down shows its lag growing
-- instead of no samples at all).
WITH samples AS (
    SELECT channel, lag_ms FROM channel_push
    WHERE channel = ANY($1::text[]) AND acked_at > now() - make_interval(secs => $2)
    UNION ALL
    SELECT channel, EXTRACT(EPOCH FROM now() - pending_since)::float8 * 1000
    FROM channel_sync_state
    WHERE channel = ANY($1::text[]) AND status = 'PENDING' AND pending_since IS NOT NULL
)
SELECT c.channel, count(s.lag_ms) AS samples,
       percentile_disc(0.5) WITHIN GROUP (ORDER BY s.lag_ms) AS p50_ms,
       percentile_disc(0.99) WITHIN GROUP (ORDER BY s.lag_ms) AS p99_ms
FROM unnest($1::text[]) AS c (channel)
LEFT JOIN samples s ON s.channel = c.channel
GROUP BY c.channel
ORDER BY c.channel;

-- name: channel_counts
SELECT c.channel,
       count(*) FILTER (WHERE s.status = 'PENDING') AS pending,
       count(*) FILTER (WHERE s.status = 'SYNCED') AS synced,
       count(*) FILTER (WHERE s.status = 'UNLISTED') AS unlisted,
       count(*) FILTER (WHERE s.status = 'DEAD') AS dead,
       EXTRACT(EPOCH FROM now() - min(s.pending_since) FILTER (WHERE s.status = 'PENDING'))
           ::float8 AS oldest_pending_s
FROM unnest($1::text[]) AS c (channel)
LEFT JOIN channel_sync_state s ON s.channel = c.channel
GROUP BY c.channel
ORDER BY c.channel;

-- name: channel_push_totals
SELECT c.channel, count(p.id) AS pushes, COALESCE(sum(p.changes), 0) AS changes
FROM unnest($1::text[]) AS c (channel)
LEFT JOIN channel_push p ON p.channel = c.channel
     AND p.acked_at > now() - make_interval(secs => $2)
GROUP BY c.channel
ORDER BY c.channel;

-- name: ensure_channel_states
INSERT INTO channel_state (channel) SELECT unnest($1::text[])
ON CONFLICT (channel) DO NOTHING;

-- name: channel_states
SELECT channel, alerting, alert_since, last_p50_ms, last_p99_ms, last_checked_at,
       last_reconciled_at, drift_repaired, last_sampled_at, divergence_found
FROM channel_state WHERE channel = ANY($1::text[]) ORDER BY channel;

-- name: lock_channel_state
SELECT channel, alerting, alert_since FROM channel_state WHERE channel = $1 FOR UPDATE;

-- name: set_channel_lag
UPDATE channel_state SET
    alerting = $2,
    alert_since = CASE WHEN $2 AND NOT alerting THEN now() WHEN $2 THEN alert_since END,
    last_p50_ms = $3, last_p99_ms = $4, last_checked_at = now()
WHERE channel = $1;

-- name: claim_reconcile
-- Whether this channel's scheduled drift repair is due; the one replica that gets the
-- row marks it started, the others skip it.
UPDATE channel_state SET last_reconciled_at = now()
WHERE channel = (
    SELECT channel FROM channel_state
    WHERE channel = $1
      AND (last_reconciled_at IS NULL
           OR last_reconciled_at < now() - make_interval(secs => $2))
    FOR UPDATE SKIP LOCKED
)
RETURNING channel;

-- name: count_drift
UPDATE channel_state SET drift_repaired = drift_repaired + $2, last_reconciled_at = now()
WHERE channel = $1;

-- name: sku_count
-- The total of a drift repair's walk, for its progress bar (one index-only count).
SELECT count(*) FROM sku;

-- name: reconcile_page
-- A page of SKUs (keyset on the name) with this channel's sync row, if any, and its
-- claim_seq as of now (0: no row yet), which the repair compares.
SELECT k.sku, s.channel_ref, s.status, s.claimed_version IS NOT NULL AS in_flight,
       COALESCE(s.claim_seq, 0) AS claim_seq
FROM sku k
LEFT JOIN channel_sync_state s ON s.channel = $1 AND s.sku = k.sku
WHERE k.sku > $2
ORDER BY k.sku
LIMIT $3;

-- name: repair_drift
-- What the channel really shows ($3, NULL: not listed) against our level now (version
-- $4, available $5). Left alone while a push is in flight, when a newer change is
-- already known, or when a push was claimed since the read (claim_seq no longer $6): a
-- push that succeeded after the read is newer than what the read saw.
INSERT INTO channel_sync_state AS s (channel, sku, desired_version, desired_quantity,
                                     pushed_version, pushed_quantity, status,
                                     pending_since, pending_changes)
VALUES ($1, $2, $4, $5, 0, $3,
        CASE WHEN $3::bigint IS NULL THEN 'UNLISTED'
             WHEN $3::bigint = $5 THEN 'SYNCED' ELSE 'PENDING' END,
        CASE WHEN $3::bigint IS NOT NULL AND $3::bigint <> $5 THEN now() END,
        CASE WHEN $3::bigint IS NOT NULL AND $3::bigint <> $5 THEN 1 ELSE 0 END)
ON CONFLICT (channel, sku) DO UPDATE SET
    desired_version = GREATEST(s.desired_version, $4),
    desired_quantity = $5,
    pushed_quantity = $3,
    unlisted_at = CASE WHEN $3::bigint IS NULL THEN now() END,
    status = CASE WHEN $3::bigint IS NULL THEN 'UNLISTED'
                  WHEN $3::bigint = $5 AND s.status <> 'PENDING' THEN 'SYNCED'
                  WHEN $3::bigint = $5 THEN s.status
                  ELSE 'PENDING' END,
    pending_since = CASE WHEN $3::bigint IS NOT NULL AND $3::bigint <> $5
                         THEN COALESCE(s.pending_since, now())
                         WHEN $3::bigint IS NULL THEN NULL
                         ELSE s.pending_since END,
    pending_changes = CASE WHEN $3::bigint IS NOT NULL AND $3::bigint <> $5
                           THEN GREATEST(1, s.pending_changes)
                           WHEN $3::bigint IS NULL THEN 0
                           ELSE s.pending_changes END,
    attempts = CASE WHEN $3::bigint IS NOT NULL AND $3::bigint <> $5 THEN 0 ELSE s.attempts END,
    next_attempt_at = now(),
    updated_at = now()
WHERE s.claimed_version IS NULL AND s.desired_version <= $4 AND s.claim_seq = $6
RETURNING s.status;

-- name: repair_drift_bulk
-- repair_drift for a page of SKUs in one statement: per SKU ($2) what the channel
-- shows ($3, NULL: not listed), our version ($4) and available ($5) now, and the
-- claim_seq seen when it was read ($6). A new row takes the claim_seq seen (0: there
-- was no row), so EXCLUDED.claim_seq is that value for the guard. Rows in SKU order.
INSERT INTO channel_sync_state AS s (channel, sku, desired_version, desired_quantity,
                                     pushed_version, pushed_quantity, status,
                                     pending_since, pending_changes, claim_seq)
SELECT $1, d.sku, d.version, d.available, 0, d.shown,
       CASE WHEN d.shown IS NULL THEN 'UNLISTED'
            WHEN d.shown = d.available THEN 'SYNCED' ELSE 'PENDING' END,
       CASE WHEN d.shown IS NOT NULL AND d.shown <> d.available THEN now() END,
       CASE WHEN d.shown IS NOT NULL AND d.shown <> d.available THEN 1 ELSE 0 END,
       d.seen_seq
FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
     AS d (sku, shown, version, available, seen_seq)
ORDER BY d.sku
ON CONFLICT (channel, sku) DO UPDATE SET
    desired_version = GREATEST(s.desired_version, EXCLUDED.desired_version),
    desired_quantity = EXCLUDED.desired_quantity,
    pushed_quantity = EXCLUDED.pushed_quantity,
    unlisted_at = CASE WHEN EXCLUDED.pushed_quantity IS NULL THEN now() END,
    status = CASE WHEN EXCLUDED.pushed_quantity IS NULL THEN 'UNLISTED'
                  WHEN EXCLUDED.pushed_quantity = EXCLUDED.desired_quantity
                       AND s.status <> 'PENDING' THEN 'SYNCED'
                  WHEN EXCLUDED.pushed_quantity = EXCLUDED.desired_quantity THEN s.status
                  ELSE 'PENDING' END,
    pending_since = CASE WHEN EXCLUDED.pushed_quantity IS NOT NULL
                              AND EXCLUDED.pushed_quantity <> EXCLUDED.desired_quantity
                         THEN COALESCE(s.pending_since, now())
                         WHEN EXCLUDED.pushed_quantity IS NULL THEN NULL
                         ELSE s.pending_since END,
    pending_changes = CASE WHEN EXCLUDED.pushed_quantity IS NOT NULL
                                AND EXCLUDED.pushed_quantity <> EXCLUDED.desired_quantity
                           THEN GREATEST(1, s.pending_changes)
                           WHEN EXCLUDED.pushed_quantity IS NULL THEN 0
                           ELSE s.pending_changes END,
    attempts = CASE WHEN EXCLUDED.pushed_quantity IS NOT NULL
                         AND EXCLUDED.pushed_quantity <> EXCLUDED.desired_quantity
                    THEN 0 ELSE s.attempts END,
    next_attempt_at = now(),
    updated_at = now()
WHERE s.claimed_version IS NULL AND s.desired_version <= EXCLUDED.desired_version
  AND s.claim_seq = EXCLUDED.claim_seq
RETURNING s.sku, s.status;

-- name: unlisted_page
-- A channel's UNLISTED SKUs after $2 (keyset on the SKU, on channel_sync_unlisted).
SELECT sku, unlisted_at FROM channel_sync_state
WHERE channel = $1 AND status = 'UNLISTED' AND sku > $2
ORDER BY sku
LIMIT $3;

-- name: claim_sample
-- Whether this channel's divergence sample is due; the one replica that gets the row
-- marks it started and gets where the walk through the SKUs stands.
UPDATE channel_state SET last_sampled_at = now()
WHERE channel = (
    SELECT channel FROM channel_state
    WHERE channel = $1
      AND (last_sampled_at IS NULL OR last_sampled_at < now() - make_interval(secs => $2))
    FOR UPDATE SKIP LOCKED
)
RETURNING sample_after;

-- name: sample_page
-- The next $3 SKUs after $2 that we believe the channel shows (SYNCED, no push in
-- flight), with what it should show and the claim_seq the repair compares.
SELECT sku, channel_ref, pushed_quantity, claim_seq FROM channel_sync_state
WHERE channel = $1 AND sku > $2 AND status = 'SYNCED' AND claimed_version IS NULL
  AND pushed_quantity IS NOT NULL
ORDER BY sku
LIMIT $3;

-- name: diverged
-- The channel shows $3 (NULL: no longer lists it), not what it acknowledged: a push of
-- our level is due from that figure (or the SKU is UNLISTED). Only if nothing was
-- claimed since the read (claim_seq still $4) and we still believe it in sync.
UPDATE channel_sync_state SET
    pushed_quantity = $3,
    status = CASE WHEN $3::bigint IS NULL THEN 'UNLISTED' ELSE 'PENDING' END,
    pending_since = CASE WHEN $3::bigint IS NULL THEN NULL ELSE now() END,
    pending_changes = CASE WHEN $3::bigint IS NULL THEN 0 ELSE GREATEST(1, pending_changes) END,
    unlisted_at = CASE WHEN $3::bigint IS NULL THEN now() END,
    attempts = 0, next_attempt_at = now(), updated_at = now()
WHERE channel = $1 AND sku = $2 AND claim_seq = $4 AND claimed_version IS NULL
  AND status = 'SYNCED'
RETURNING status;

-- name: sampled
UPDATE channel_state SET sample_after = $2, divergence_found = divergence_found + $3
WHERE channel = $1;
