-- stockkeeper schema, version 20: the indexes retention walks to prune resolved dead
-- letters, WMS outbound items the WMS accepted, and finished WMS syncs (D-461).
--
-- IF NOT EXISTS: on large tables an operator may build these first with CREATE INDEX
-- CONCURRENTLY (same names) so the migration does not block writers while it builds
-- them. Each is partial: open rows (DEAD letters, PENDING or DEAD items, PENDING or
-- IN_PROGRESS syncs) are never pruned and are not in it.

-- Dead letters an operator replayed or discarded, by when they did.
CREATE INDEX IF NOT EXISTS dead_letter_resolved ON dead_letter (resolved_at)
    WHERE status IN ('REPLAYED', 'DISCARDED');

-- Outbound items the WMS accepted, by when they were sent.
CREATE INDEX IF NOT EXISTS wms_outbound_sent ON wms_outbound_item (sent_at)
    WHERE status = 'SENT';

-- Syncs that ended (DONE or FAILED), by when they ended.
CREATE INDEX IF NOT EXISTS wms_sync_request_finished ON wms_sync_request (finished_at)
    WHERE status IN ('DONE', 'FAILED');
