-- The ops page's sessions (D-464). The cookie holds a random id; only its SHA-256 is
-- kept here, so a read of this table gives no usable cookie. A row is the session:
-- logout deletes it, and past expires_at it is no session (the row goes at the next
-- login). The token is named by its fingerprint, so a token removed from api.tokens
-- ends its sessions too.
CREATE TABLE ui_session (
    id_hash            bytea PRIMARY KEY,
    token_fingerprint  text NOT NULL,
    principal          text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL
);
CREATE INDEX ui_session_expires ON ui_session (expires_at);
