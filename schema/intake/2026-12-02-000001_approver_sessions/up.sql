-- Approver sessions of the pages, kept on the server so that signing out revokes one.
-- The cookie carries a random id; only its SHA-256 is stored, so this table does not
-- hand out sessions to whoever reads it. The CSRF token of a session's forms lives
-- with it (bound to the session, not to a second cookie).
CREATE TABLE approver_sessions (
    id_sha256  BYTEA PRIMARY KEY,
    approver   TEXT NOT NULL,
    csrf       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX approver_sessions_expiry ON approver_sessions (expires_at);
