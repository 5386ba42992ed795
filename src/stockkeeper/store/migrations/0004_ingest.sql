-- stockkeeper schema, version 4: ingestion from ERPs, webhooks and marketplaces.

-- Where each polling connector goes on from: an ERP's keyset position, or a
-- marketplace's `since` token. Written in the transaction that queues the page.
CREATE TABLE source_cursor (
    connector      text PRIMARY KEY,
    last_modified  timestamptz,
    sku            text,
    location       text,
    token          text,
    pages          bigint NOT NULL DEFAULT 0,
    records        bigint NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The newest source timestamp applied per connector, SKU and location: an absolute
-- level older than this is stale and dropped.
CREATE TABLE source_record_version (
    connector          text NOT NULL,
    sku                text NOT NULL,
    location           text NOT NULL,
    source_updated_at  timestamptz NOT NULL,
    on_hand            bigint NOT NULL,
    applied_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector, sku, location)
);

-- Sales reported by a channel, applied once per (source, transaction_id).
CREATE TABLE ingested_sale (
    source          text NOT NULL,
    transaction_id  text NOT NULL CHECK (length(transaction_id) BETWEEN 1 AND 200),
    sku             text NOT NULL,
    delta           bigint NOT NULL,
    unbooked        bigint NOT NULL DEFAULT 0,
    applied_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, transaction_id)
);

-- Webhook deliveries already queued, by the sender's event id.
CREATE TABLE webhook_delivery (
    connector    text NOT NULL,
    event_id     text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 200),
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector, event_id)
);
CREATE INDEX webhook_delivery_received ON webhook_delivery (received_at);

-- A connector's circuit breaker, shared by every process (the admin API shows it).
CREATE TABLE connector_state (
    connector   text PRIMARY KEY,
    circuit     text NOT NULL DEFAULT 'closed' CHECK (circuit IN ('closed', 'open', 'half_open')),
    failures    integer NOT NULL DEFAULT 0,
    opened_at   timestamptz,
    last_error  text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Prices a source carries, and ours after the connector's pricing rules.
CREATE TABLE sku_price (
    sku                text NOT NULL,
    connector          text NOT NULL,
    source_price       numeric(14, 4) NOT NULL CHECK (source_price >= 0),
    price              numeric(14, 4) NOT NULL CHECK (price >= 0),
    source_updated_at  timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, connector)
);
