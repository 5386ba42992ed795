-- The trace context of the change that wrote each outbox row (a W3C traceparent,
-- NULL when tracing is off): the dispatcher's publish span continues it (D-241).
ALTER TABLE domain_event ADD COLUMN IF NOT EXISTS trace_context text;

-- The same for a channel's due push: the newest change's context, which the channel
-- call continues.
ALTER TABLE channel_sync_state ADD COLUMN IF NOT EXISTS trace_context text;
