-- stockkeeper schema, version 6: orders and the state of their saga.
-- (Version 5 belongs to the channel work; versions are applied in order, gaps allowed.)

CREATE TABLE orders (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Also the order_id of the order's reservation, once the saga has made it.
    order_id               text NOT NULL UNIQUE CHECK (length(order_id) BETWEEN 1 AND 128),
    status                 text NOT NULL CHECK (status IN ('PENDING', 'AWAITING_PAYMENT',
                               'FAILED', 'PAID', 'READY_TO_SHIP', 'SHIPPED', 'CANCELLED',
                               'EXPIRED')),
    -- As placed: [{sku, quantity}], and the address {name, line1, ..., country}.
    lines                  jsonb NOT NULL,
    ship_to                jsonb NOT NULL,
    required_delivery_date date,
    -- Why it FAILED, was CANCELLED, or has no carrier; the short lines when out of stock.
    reason                 text,
    shortages              jsonb,
    -- The chosen quote: {id, cost, reliability, transit_days, estimated_delivery}.
    carrier                jsonb,
    payment_reference      text,
    -- When the reservation (and so the wait for payment) runs out.
    payment_due_at         timestamptz,
    created_at             timestamptz NOT NULL,
    -- When it left PENDING (AWAITING_PAYMENT or FAILED): what a polling client waits for.
    decided_at             timestamptz,
    updated_at             timestamptz NOT NULL
);
