-- Idempotency-Key of POST /api/loans: a retried submission with the same key gets
-- the first submission's reference. Kept in the database so that it holds across
-- intake instances and restarts.
CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY,
    reference  TEXT NOT NULL REFERENCES applications (reference) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
