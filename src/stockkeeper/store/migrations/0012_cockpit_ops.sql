-- The operator's cockpit (issue 16): "poll now" requests and the indexes the admin lists
-- page on.

-- A pending "poll now" per polled connector: at most one (the primary key), so a second
-- request while one is pending is the same request. The poller that holds the connector
-- deletes the row as it starts the poll it asked for; NOTIFY stockkeeper_poll wakes it.
CREATE TABLE poll_request (
    connector     text PRIMARY KEY,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    requested_by  text NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 200)
);

-- Reservations by status, keyset on id.
CREATE INDEX reservation_status ON reservation (status, id);
-- Orders by status, oldest first (their age), keyset on (created_at, id).
CREATE INDEX orders_status_created ON orders (status, created_at, id);
CREATE INDEX orders_created ON orders (created_at, id);
-- Sync requests by status, newest first.
CREATE INDEX wms_sync_request_status ON wms_sync_request (status, id);
-- A channel's SKUs that are not in sync (or failing), keyset on the SKU.
CREATE INDEX channel_sync_unsettled ON channel_sync_state (channel, sku)
    WHERE status <> 'SYNCED' OR last_error IS NOT NULL OR pushed_version < desired_version;
-- A SKU's reservations (the ops page's SKU view), newest first.
CREATE INDEX reservation_line_sku ON reservation_line (sku, reservation_id);
-- The SKU search: a prefix is a range of the SKU in byte order ("C"), whatever the
-- database's collation, so the scan starts at the prefix and stops after it.
CREATE INDEX sku_bytewise ON sku ((sku COLLATE "C"));
