-- Retention: each statement deletes at most $2 rows older than $1 seconds, in its own
-- short transaction. The subquery walks the table's time index oldest first and stops
-- at the limit; ctid lets the DELETE go straight to those tuples (a TID scan, no second
-- index lookup) on every table, whatever its key. SKIP LOCKED: a row a consumer or a
-- second pruner holds is left for the next batch, so pruning never waits on a lock.
-- ARRAY(...) runs the subquery once (see queue_claim). The inventory ledger has no
-- statement here: it is kept forever.

-- name: prune_sent_events
DELETE FROM domain_event
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM domain_event
    WHERE status = 'SENT' AND sent_at < now() - make_interval(secs => $1)
    ORDER BY sent_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_processed_messages
DELETE FROM processed_message
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM processed_message
    WHERE processed_at < now() - make_interval(secs => $1)
    ORDER BY processed_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_consumer_positions
DELETE FROM consumer_position
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM consumer_position
    WHERE updated_at < now() - make_interval(secs => $1)
    ORDER BY updated_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_idempotency_keys
DELETE FROM idempotency_key
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_key
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_wms_calls
-- The log of every try of every WMS call (on wms_call_created).
DELETE FROM wms_call
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM wms_call
    WHERE created_at < now() - make_interval(secs => $1)
    ORDER BY created_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_webhook_deliveries
-- Webhook delivery ids taken once (on webhook_delivery_received); a delivery older than
-- its connector's tolerance_s is refused before its id is looked up.
DELETE FROM webhook_delivery
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM webhook_delivery
    WHERE received_at < now() - make_interval(secs => $1)
    ORDER BY received_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_channel_pushes
-- The channel push log (lag percentiles, the ops page's chart). Its index leads with
-- the channel, so the batch walks the primary key instead: ids are given in the order
-- pushes are acknowledged, so the oldest come first.
DELETE FROM channel_push
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM channel_push
    WHERE acked_at < now() - make_interval(secs => $1)
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_resolved_dead_letters
-- Dead letters an operator replayed or discarded (on dead_letter_resolved), counted
-- from the resolution. Open (DEAD) ones are never pruned: they wait for an operator.
DELETE FROM dead_letter
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM dead_letter
    WHERE status IN ('REPLAYED', 'DISCARDED')
      AND resolved_at < now() - make_interval(secs => $1)
    ORDER BY resolved_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_sent_wms_items
-- Outbound items the WMS accepted (on wms_outbound_sent), counted from the send. The
-- row's (connector, event_id) keeps a redelivered allocation from being queued again,
-- so retention.wms_outbound_sent_s outlasts every redelivery (checked at load).
-- PENDING items are still to go, DEAD ones wait for a dead letter's replay: never here.
DELETE FROM wms_outbound_item
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM wms_outbound_item
    WHERE status = 'SENT' AND sent_at < now() - make_interval(secs => $1)
    ORDER BY sent_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));

-- name: prune_finished_wms_syncs
-- WMS syncs that ended, DONE or FAILED (on wms_sync_request_finished), counted from
-- the end. A PENDING or IN_PROGRESS one is still to run or resume from its cursor.
DELETE FROM wms_sync_request
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM wms_sync_request
    WHERE status IN ('DONE', 'FAILED') AND finished_at < now() - make_interval(secs => $1)
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
));
