-- stockkeeper schema, version 3: the WMS. What it last told us, its change token, force
-- sync requests, allocations and releases on their way to it, and every call made.

-- The WMS's figures for each batch as of the last sync that saw it.
CREATE TABLE wms_inventory_snapshot (
    connector        text NOT NULL,
    batch_id         bigint NOT NULL REFERENCES sku_batch (id),
    sku              text NOT NULL,
    on_hand          bigint NOT NULL CHECK (on_hand >= 0),
    unavailable      bigint NOT NULL CHECK (unavailable >= 0),
    wms_updated_at   timestamptz,
    sync_request_id  bigint,
    synced_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connector, batch_id)
);

-- Per WMS: where the next incremental sync starts, and when it is due.
CREATE TABLE wms_sync_state (
    connector            text PRIMARY KEY,
    token                text,
    next_incremental_at  timestamptz,
    last_full_at         timestamptz,
    last_incremental_at  timestamptz,
    updated_at           timestamptz NOT NULL DEFAULT now()
);

-- A sync to run: forced by an operator (batch, sku, full) or scheduled (incremental).
-- Also the durable job record: a sync whose worker died resumes from ``cursor``.
CREATE TABLE wms_sync_request (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector      text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('batch', 'sku', 'full', 'incremental')),
    sku            text,
    sku_batch_id   bigint REFERENCES sku_batch (id),
    reason         text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    requested_by   text NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 200),
    priority       smallint NOT NULL DEFAULT 1 CHECK (priority BETWEEN 0 AND 2),
    status         text NOT NULL DEFAULT 'PENDING'
                       CHECK (status IN ('PENDING', 'IN_PROGRESS', 'DONE', 'FAILED')),
    error          text,
    cursor         text,
    start_token    text,
    attempts       integer NOT NULL DEFAULT 0,
    pages          integer NOT NULL DEFAULT 0,
    rows_seen      bigint NOT NULL DEFAULT 0,
    rows_rejected  bigint NOT NULL DEFAULT 0,
    adjustments    bigint NOT NULL DEFAULT 0,
    shortfalls     bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    heartbeat_at   timestamptz,
    finished_at    timestamptz,
    CHECK ((kind = 'batch') = (sku_batch_id IS NOT NULL)),
    CHECK (kind NOT IN ('batch', 'sku') OR sku IS NOT NULL)
);
CREATE INDEX wms_sync_request_open ON wms_sync_request (priority DESC, id)
    WHERE status IN ('PENDING', 'IN_PROGRESS');

-- Allocations, releases and confirmations waiting for (or done with) the WMS. Written
-- by the wms.outbound consumer in the transaction that records the message, sent in
-- batches by the flusher; the WMS de-duplicates by event_id.
CREATE TABLE wms_outbound_item (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector        text NOT NULL,
    event_id         text NOT NULL,
    message_id       uuid NOT NULL,
    action           text NOT NULL CHECK (action IN ('allocate', 'release', 'confirm')),
    order_id         text NOT NULL,
    sku              text NOT NULL,
    location         text NOT NULL,
    lot_number       text,
    quantity         bigint NOT NULL CHECK (quantity > 0),
    status           text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'DEAD')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    last_error       text,
    wms_result       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    UNIQUE (connector, event_id)
);
CREATE INDEX wms_outbound_due ON wms_outbound_item (connector, next_attempt_at, id)
    WHERE status = 'PENDING';
CREATE INDEX wms_outbound_message ON wms_outbound_item (message_id);

-- Every call to a WMS, each try on its own, for audit.
CREATE TABLE wms_call (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector    text NOT NULL,
    operation    text NOT NULL,
    attempt      integer NOT NULL,
    status_code  integer,
    outcome      text NOT NULL,
    duration_ms  double precision NOT NULL,
    error        text,
    items        integer,
    first_item   bigint,
    last_item    bigint,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX wms_call_created ON wms_call (created_at);
