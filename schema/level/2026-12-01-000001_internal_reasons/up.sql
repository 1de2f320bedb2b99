-- The precise reason of a decision whose public reason is neutral on purpose (a
-- sanctions hit must not be told to the applicant). Only this level reads it; the
-- status, the events and the logs carry the public reason alone.
CREATE TABLE internal_reasons (
    reference  TEXT PRIMARY KEY,
    reason     TEXT NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL
);
