-- The mutable part of an application in a narrow row of its own. A status event
-- changes only this row, and since no index covers its changing columns, PostgreSQL
-- updates it in place (a HOT update, in the room the fill factor leaves): the
-- application itself, with its personal data, is written once and never rewritten.
CREATE TABLE application_status (
    reference     TEXT PRIMARY KEY REFERENCES applications (reference) ON DELETE CASCADE,
    status        TEXT NOT NULL CHECK (status IN ('submitted', 'in_review', 'awaiting_approver',
                                                  'approved', 'rejected', 'failed', 'withdrawn')),
    current_level TEXT,
    -- The seq of the last status event applied (0 = as submitted); events with a
    -- lower or equal seq are stale or repeated and change nothing.
    seq           INTEGER NOT NULL DEFAULT 0,
    offer         JSONB,
    -- What an approver needs that the application does not hold: the credit score.
    score         INTEGER,
    updated_at    TIMESTAMPTZ NOT NULL
) WITH (fillfactor = 70);

-- The approver inbox: the applications waiting at a human level, kept by the status
-- projection. Its index lives here, so that it does not stop the status row from
-- being updated in place.
CREATE TABLE awaiting (
    reference TEXT PRIMARY KEY REFERENCES applications (reference) ON DELETE CASCADE,
    level     TEXT NOT NULL,
    since     TIMESTAMPTZ NOT NULL
);
CREATE INDEX awaiting_oldest_first ON awaiting (level, since);

INSERT INTO application_status (reference, status, current_level, seq, offer, score, updated_at)
    SELECT reference, status, current_level, seq, offer, score, updated_at FROM applications;
INSERT INTO awaiting (reference, level, since)
    SELECT reference, current_level, updated_at FROM applications
    WHERE status = 'awaiting_approver' AND current_level IS NOT NULL;

DROP INDEX applications_waiting;
ALTER TABLE applications
    DROP COLUMN status, DROP COLUMN current_level, DROP COLUMN seq,
    DROP COLUMN offer, DROP COLUMN score, DROP COLUMN updated_at;
