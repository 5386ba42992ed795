-- The trace context of the change that wrote each outbox row (a W3C traceparent,
-- NULL when tracing is off): the dispatcher's publish span continues it (D-241).
ALTER TABLE domain_event ADD COLUMN IF NOT EXISTS trace_context text;

-- The same for a channel's due push: the newest change's context, which the channel
-- call continues.
ALTER TABLE channel_sync_state ADD COLUMN IF NOT EXISTS trace_context text;

-- A WMS sync's total, when the WMS says how many rows its snapshot has (the stock
-- page's optional `total`): GET /admin/wms/sync/{id} shows a percentage and an ETA.
ALTER TABLE wms_sync_request ADD COLUMN IF NOT EXISTS rows_total bigint
    CHECK (rows_total >= 0);
