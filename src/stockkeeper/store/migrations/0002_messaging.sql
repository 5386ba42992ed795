-- stockkeeper schema, version 2: consumer idempotency, dead letters, the embedded queue.

-- A consumer's effect and this row commit in one transaction; a redelivered message
-- finds its row and has no second effect.
CREATE TABLE processed_message (
    consumer      text NOT NULL,
    message_id    uuid NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX processed_message_at ON processed_message (processed_at);

-- Per consumer and SKU, the newest sequence applied: older events are stale.
CREATE TABLE consumer_position (
    consumer   text NOT NULL,
    sku        text NOT NULL,
    sequence   bigint NOT NULL,
    PRIMARY KEY (consumer, sku)
);

CREATE TABLE dead_letter (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text NOT NULL,
    message_id    uuid,
    routing_key   text NOT NULL,
    body          jsonb,
    raw_body      text,
    headers       jsonb NOT NULL DEFAULT '{}',
    error         text NOT NULL,
    attempts      integer NOT NULL,
    status        text NOT NULL DEFAULT 'DEAD' CHECK (status IN ('DEAD', 'REPLAYED', 'DISCARDED')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    resolved_at   timestamptz,
    resolved_by   text
);
CREATE INDEX dead_letter_open ON dead_letter (queue, id) WHERE status = 'DEAD';

-- The embedded broker: one row per message per bound queue.
CREATE TABLE queue_message (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text NOT NULL,
    message_id    uuid NOT NULL,
    exchange      text NOT NULL,
    routing_key   text NOT NULL,
    body          bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    available_at  timestamptz NOT NULL DEFAULT now(),
    -- Set while a consumer holds the message; past it the message is redelivered.
    leased_until  timestamptz,
    deliveries    integer NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX queue_message_ready ON queue_message (queue, available_at, id);
