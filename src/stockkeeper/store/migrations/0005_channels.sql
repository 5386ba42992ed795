-- stockkeeper schema, version 5: propagation of availability to sales channels.

-- Per channel and SKU: the newest level we know (desired) and what the channel was last
-- told (pushed). Written by the channel.propagation consumer (newest version wins) and
-- by the senders, which claim due rows with a lease. A push is due while the status is
-- PENDING; several changes that arrive before it is sent travel as one push.
CREATE TABLE channel_sync_state (
    channel           text NOT NULL,
    sku               text NOT NULL,
    desired_version   bigint NOT NULL DEFAULT 0,
    desired_quantity  bigint NOT NULL DEFAULT 0 CHECK (desired_quantity >= 0),
    pushed_version    bigint NOT NULL DEFAULT 0,
    -- What the channel shows as far as we know (what we told it, or read back);
    -- NULL: we never told it anything.
    pushed_quantity   bigint,
    pushed_at         timestamptz,
    status            text NOT NULL DEFAULT 'SYNCED'
                          CHECK (status IN ('PENDING', 'SYNCED', 'UNLISTED', 'DEAD')),
    -- Commit time of the oldest change the channel has not acknowledged (lag runs from
    -- it), and how many changes are waiting: one push carries them all.
    pending_since     timestamptz,
    pending_changes   integer NOT NULL DEFAULT 0,
    -- Set while a sender holds the row: the version it is pushing, the changes that
    -- push carries, and the commit time of the first change that arrived meanwhile.
    claimed_version   bigint,
    claimed_changes   integer,
    late_since        timestamptz,
    leased_until      timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error        text,
    -- The channel's own id for the SKU (Shopify's inventory item gid), once known.
    channel_ref       text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, sku)
);
-- The senders' scan: due rows of one channel, oldest change first.
CREATE INDEX channel_sync_due ON channel_sync_state (channel, pending_since)
    WHERE status = 'PENDING';

-- Every acknowledged push: lag percentiles for /admin/status and the alert, and audit.
-- Pruned by the propagator after propagation.push_log_retention_s.
CREATE TABLE channel_push (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel     text NOT NULL,
    sku         text NOT NULL,
    version     bigint NOT NULL,
    quantity    bigint NOT NULL,
    -- Level changes this push carried (1, or more when changes were coalesced).
    changes     integer NOT NULL,
    attempts    integer NOT NULL,
    -- From the commit of the oldest change carried to the channel's acknowledgement.
    lag_ms      double precision NOT NULL,
    acked_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX channel_push_recent ON channel_push (channel, acked_at);

-- Per channel, shared by every propagator: the lag alert and drift repair.
CREATE TABLE channel_state (
    channel             text PRIMARY KEY,
    alerting            boolean NOT NULL DEFAULT false,
    alert_since         timestamptz,
    last_p50_ms         double precision,
    last_p99_ms         double precision,
    last_checked_at     timestamptz,
    last_reconciled_at  timestamptz,
    drift_repaired      bigint NOT NULL DEFAULT 0
);
