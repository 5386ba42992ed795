-- Channel trust (issue 13): a fencing token per claim, the UNLISTED recheck, and the
-- divergence sampler's place per channel.

-- Every claim of a row takes the next claim_seq: its fencing token. Settling a push
-- (acknowledged, retried, unlisted, dead, released) and every write after a push's first
-- try is checked against it, so a sender whose lease ran out and whose row another
-- sender claimed changes nothing. Drift repair compares it too: what it read back is
-- applied only if no push of that SKU was claimed since the read.
ALTER TABLE channel_sync_state
    ADD COLUMN claim_seq bigint NOT NULL DEFAULT 0,
    -- When the channel last said it does not list the SKU: a new level probes it again
    -- once the channel's unlisted_recheck_s has passed.
    ADD COLUMN unlisted_at timestamptz;

-- The admin list of a channel's UNLISTED SKUs (keyset on the SKU).
CREATE INDEX channel_sync_unlisted ON channel_sync_state (channel, sku)
    WHERE status = 'UNLISTED';

-- The divergence sampler: where its walk through the channel's SKUs stands, when it
-- last sampled, and how many differences it found.
ALTER TABLE channel_state
    ADD COLUMN sample_after text NOT NULL DEFAULT '',
    ADD COLUMN last_sampled_at timestamptz,
    ADD COLUMN divergence_found bigint NOT NULL DEFAULT 0;
