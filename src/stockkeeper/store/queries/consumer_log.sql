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

-- name: mark_processed_many
-- A batch's marks in one statement: the ids returned are the ones not seen before (a
-- repeat inside the batch is returned once).
INSERT INTO processed_message (consumer, message_id)
SELECT $1, m FROM unnest($2::uuid[]) AS m
ON CONFLICT (consumer, message_id) DO NOTHING
RETURNING message_id;

-- name: unmark_processed
-- Takes back a mark of a batch whose message's effect was rolled back to its savepoint.
DELETE FROM processed_message WHERE consumer = $1 AND message_id = $2;
