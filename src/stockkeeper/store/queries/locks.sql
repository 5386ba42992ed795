-- name: try_advisory_lock
-- Session level: held until advisory_unlock or until the connection closes.
SELECT pg_try_advisory_lock($1);

-- name: advisory_unlock
SELECT pg_advisory_unlock($1);
