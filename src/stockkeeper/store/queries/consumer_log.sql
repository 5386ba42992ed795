-- Consumer idempotency: the messages each consumer applied, and its position per SKU.

-- name: mark_processed
INSERT INTO processed_message (consumer, message_id) VALUES ($1, $2)
ON CONFLICT DO NOTHING
RETURNING message_id;

-- name: advance_position
-- Per consumer and SKU, only a newer sequence moves on; an older one is stale.
INSERT INTO consumer_position (consumer, sku, sequence) VALUES ($1, $2, $3)
ON CONFLICT (consumer, sku) DO UPDATE SET sequence = EXCLUDED.sequence
WHERE consumer_position.sequence < EXCLUDED.sequence
RETURNING sequence;
