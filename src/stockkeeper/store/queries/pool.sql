-- The connection itself.

-- name: ping
-- One round trip: a health check of a connection held open for a long time (LISTEN).
SELECT 1;
