-- stockkeeper schema, version 1: stock, ledger, reservations, outbox, idempotency.

CREATE TABLE location (
    code        text PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    name        text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO location (code, name) VALUES ('default', 'Default location');

CREATE TABLE sku (
    sku         text PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 128),
    -- Bumped once per transaction that changes any batch of this SKU; carried by
    -- inventory.level_changed so consumers can drop anything older.
    version     bigint NOT NULL DEFAULT 0,
    -- Per-SKU sequence of outbox events, for ordered delivery.
    event_seq   bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sku_batch (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sku         text NOT NULL REFERENCES sku (sku),
    location    text NOT NULL REFERENCES location (code),
    lot_number  text CHECK (lot_number IS NULL OR length(lot_number) BETWEEN 1 AND 128),
    expires_at  timestamptz,
    on_hand     bigint NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    unavailable bigint NOT NULL DEFAULT 0 CHECK (unavailable >= 0),
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    committed   bigint NOT NULL DEFAULT 0 CHECK (committed >= 0),
    version     bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- One batch per SKU, location and lot; COALESCE so "no lot" is a single batch too
-- (NULLS NOT DISTINCT needs PostgreSQL 15; we support 14).
CREATE UNIQUE INDEX sku_batch_identity ON sku_batch (sku, location, COALESCE(lot_number, ''));
CREATE INDEX sku_batch_expiry ON sku_batch (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE inventory_ledger (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id      bigint NOT NULL REFERENCES sku_batch (id),
    sku           text NOT NULL,
    entry_type    text NOT NULL CHECK (entry_type IN ('RECEIPT', 'ORDER_ALLOCATE',
                      'ORDER_RELEASE', 'ORDER_CONFIRM', 'ORDER_EXPIRE', 'FULFIL',
                      'ADJUSTMENT', 'SALE')),
    d_on_hand     bigint NOT NULL DEFAULT 0,
    d_unavailable bigint NOT NULL DEFAULT 0,
    d_reserved    bigint NOT NULL DEFAULT 0,
    d_committed   bigint NOT NULL DEFAULT 0,
    source        text NOT NULL,
    reference_id  text,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inventory_ledger_sku ON inventory_ledger (sku, id);
CREATE INDEX inventory_ledger_batch ON inventory_ledger (batch_id);

-- The ledger is append-only: history is corrected by new entries, never rewritten.
CREATE FUNCTION inventory_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'inventory_ledger is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER inventory_ledger_no_update BEFORE UPDATE OR DELETE ON inventory_ledger
    FOR EACH ROW EXECUTE FUNCTION inventory_ledger_append_only();
CREATE TRIGGER inventory_ledger_no_truncate BEFORE TRUNCATE ON inventory_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION inventory_ledger_append_only();

CREATE TABLE reservation (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id      text NOT NULL UNIQUE CHECK (length(order_id) BETWEEN 1 AND 128),
    status        text NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED',
                      'EXPIRED', 'FULFILLED')),
    location      text,
    -- The requested lines, as asked: [{sku, quantity}], to recognise a repeat.
    lines         jsonb NOT NULL,
    expires_at    timestamptz NOT NULL,
    reason        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- The expiry worker's scan: only PENDING rows, by due time.
CREATE INDEX reservation_pending_due ON reservation (expires_at) WHERE status = 'PENDING';

-- One row per (reservation, line, batch): the allocation of part of a line to a batch.
CREATE TABLE reservation_line (
    reservation_id bigint NOT NULL REFERENCES reservation (id),
    line_no        integer NOT NULL,
    sku            text NOT NULL,
    batch_id       bigint NOT NULL REFERENCES sku_batch (id),
    quantity       bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, line_no, batch_id)
);
CREATE INDEX reservation_line_batch ON reservation_line (batch_id);

-- The transactional outbox.
CREATE TABLE domain_event (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    event_type   text NOT NULL,
    sku          text,
    sequence     bigint,
    source       text,
    payload      jsonb NOT NULL,
    status       text NOT NULL DEFAULT 'PENDING' CHECK (status IN ('PENDING', 'SENT', 'FAILED')),
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    CHECK ((sku IS NULL) = (sequence IS NULL))
);
CREATE UNIQUE INDEX domain_event_sku_sequence ON domain_event (sku, sequence) WHERE sku IS NOT NULL;
CREATE INDEX domain_event_pending ON domain_event (id) WHERE status = 'PENDING';

-- "Applied once" for requests that carry their own reference (receipts, adjustments).
CREATE TABLE applied_reference (
    kind          text NOT NULL,
    reference_id  text NOT NULL CHECK (length(reference_id) BETWEEN 1 AND 200),
    request_hash  text NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, reference_id)
);

-- HTTP Idempotency-Key: the first response, replayed for a repeat.
CREATE TABLE idempotency_key (
    principal     text NOT NULL,
    key           text NOT NULL,
    method        text NOT NULL,
    path          text NOT NULL,
    request_hash  text NOT NULL,
    status_code   integer NOT NULL,
    response      jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_key_created ON idempotency_key (created_at);
