-- Idempotency: HTTP Idempotency-Key, and references applied once.

-- name: claim_idempotency_key
-- Inserted first, so a concurrent repeat waits here for the first one's commit and
-- then finds its response; if the first one rolled back, the repeat takes over.
INSERT INTO idempotency_key (principal, key, method, path, request_hash, status_code, response)
VALUES ($1, $2, $3, $4, $5, 0, 'null'::json)
ON CONFLICT (principal, key) DO NOTHING
RETURNING key;

-- name: get_idempotency_key
SELECT method, path, request_hash, status_code, response
FROM idempotency_key
WHERE principal = $1 AND key = $2;

-- name: store_idempotent_response
UPDATE idempotency_key SET status_code = $3, response = $4::json
WHERE principal = $1 AND key = $2;

-- name: claim_reference
INSERT INTO applied_reference (kind, reference_id, request_hash, response)
VALUES ($1, $2, $3, 'null'::json)
ON CONFLICT (kind, reference_id) DO NOTHING
RETURNING reference_id;

-- name: get_reference
SELECT request_hash, response FROM applied_reference WHERE kind = $1 AND reference_id = $2;

-- name: store_reference_response
UPDATE applied_reference SET response = $3::json WHERE kind = $1 AND reference_id = $2;

-- name: record_idempotency_key
-- The key with its answer, written last in the transaction of the effect it guards
-- (D-302). A conflict means another request holds the key: DO NOTHING waits for that
-- one's commit (or rollback, after which this insert goes in), then answers no row.
INSERT INTO idempotency_key (principal, key, method, path, request_hash, status_code, response)
VALUES ($1, $2, $3, $4, $5, $6, $7::json)
ON CONFLICT (principal, key) DO NOTHING
RETURNING key;
