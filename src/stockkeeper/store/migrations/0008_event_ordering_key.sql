-- stockkeeper schema, version 8: every outbox event has an ordering key (D-130).
--
-- The dispatcher keeps events of one key in id order across dispatchers; the SKU of
-- SKU-bound events, the order of reservation and order events, the event type of the
-- rest. `sku` and `sequence` stay as they are: consumers rely on the per-SKU sequence.
--
-- The default makes the new column instant on a large table (no rewrite); only rows
-- that can still be claimed or replayed get their real key. SENT rows keep '' (their
-- key no longer matters).
ALTER TABLE domain_event ADD COLUMN ordering_key text NOT NULL DEFAULT '';

UPDATE domain_event
SET ordering_key = CASE
        WHEN sku IS NOT NULL THEN 'sku:' || sku
        WHEN payload ? 'order_id' THEN 'order:' || (payload ->> 'order_id')
        ELSE event_type
    END
WHERE status <> 'SENT';

ALTER TABLE domain_event ALTER COLUMN ordering_key DROP DEFAULT;

-- No index of its own: the claim's hold-back (outbox_blocked_keys) looks only at PENDING
-- rows below the claim's highest id, which domain_event_pending finds by range; those
-- are the claim's own rows and the ones other dispatchers hold, a few batches at most
-- (tests/integration/test_explain.py). A key index would only cost every insert.
