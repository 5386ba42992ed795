-- Per channel, SKU and location of the channel (a Shopify location gid), for channels
-- with several locations (D-280): the figure we last sent there and what the location
-- shows as far as we know (what it acknowledged, or what a read-back found; NULL: never
-- told). The per-SKU row in channel_sync_state keeps the claim, lease and fencing of
-- the SKU's push; these rows only remember each location's figures.
CREATE TABLE channel_location_state (
    channel      text NOT NULL,
    sku          text NOT NULL,
    location_id  text NOT NULL,
    figure       bigint NOT NULL CHECK (figure >= 0),
    shown        bigint,
    pushed_at    timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, sku, location_id)
);
