-- stockkeeper schema, version 7: retention of the append-heavy tables, and an index for
-- the outbox's FAILED count.
--
-- IF NOT EXISTS: on a large domain_event an operator may build these indexes first with
-- CREATE INDEX CONCURRENTLY (same names) so the migration does not block writers while
-- it builds them.

-- Pruning SENT outbox rows walks them oldest sent first.
CREATE INDEX IF NOT EXISTS domain_event_sent ON domain_event (sent_at) WHERE status = 'SENT';

-- outbox_stats counts FAILED rows without reading the SENT ones (the PENDING count uses
-- domain_event_pending).
CREATE INDEX IF NOT EXISTS domain_event_failed ON domain_event (id) WHERE status = 'FAILED';

-- When a consumer last moved its position on a SKU: a position untouched for longer than
-- retention.consumer_position_s is pruned.
ALTER TABLE consumer_position ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX IF NOT EXISTS consumer_position_updated ON consumer_position (updated_at);
