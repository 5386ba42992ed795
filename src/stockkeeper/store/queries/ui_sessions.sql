-- The ops page's sessions (D-464): one row per logged-in browser.

-- name: open_ui_session
INSERT INTO ui_session (id_hash, token_fingerprint, principal, expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
RETURNING expires_at;

-- name: find_ui_session
-- Every request of the page: one primary-key lookup; an expired row is no session.
SELECT token_fingerprint FROM ui_session WHERE id_hash = $1 AND expires_at > now();

-- name: close_ui_session
DELETE FROM ui_session WHERE id_hash = $1;

-- name: prune_ui_sessions
-- Expired sessions, a bounded batch (run at each login, so the table never outgrows
-- the logins of the last session lifetime).
DELETE FROM ui_session
WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM ui_session
    WHERE expires_at <= now()
    ORDER BY expires_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
));
