-- Consumer idempotency: the messages each consumer applied, and its position per SKU.

-- name: mark_processed
-- The conflict target is the primary key, named so the duplicate check is one probe of
-- it (test_explain.py); processed_at's index only serves retention.
INSERT INTO processed_message (consumer, message_id) VALUES ($1, $2)
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING message_id;

-- name: advance_position
-- Per consumer and SKU, only a newer sequence moves on; an older one is stale.
-- updated_at is what retention.consumer_position_s counts from.
INSERT INTO consumer_position (consumer, sku, sequence) VALUES ($1, $2, $3)
ON CONFLICT (consumer, sku) DO UPDATE SET sequence = EXCLUDED.sequence, updated_at = now()
WHERE consumer_position.sequence < EXCLUDED.sequence
RETURNING sequence;
