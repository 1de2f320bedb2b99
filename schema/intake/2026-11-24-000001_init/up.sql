-- The intake owns applications and the status projection that answers
-- GET /api/loans/{reference}, plus the outbox that hands messages to the broker.

CREATE TABLE applications (
    reference     TEXT PRIMARY KEY,
    -- The validated application, personal data included. Only the intake reads it.
    application   JSONB NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('submitted', 'in_review', 'awaiting_approver',
                                                  'approved', 'rejected', 'failed', 'withdrawn')),
    current_level TEXT,
    -- The seq of the last status event applied (0 = as submitted); events with a
    -- lower or equal seq are stale or repeated and change nothing.
    seq           INTEGER NOT NULL DEFAULT 0,
    offer         JSONB,
    submitted_at  TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

CREATE TABLE decisions (
    reference  TEXT NOT NULL REFERENCES applications (reference) ON DELETE CASCADE,
    level      TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    outcome    TEXT NOT NULL CHECK (outcome IN ('approved', 'rejected')),
    reason     TEXT NOT NULL,
    decided_by TEXT NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL,
    -- One decision per level: a repeated event cannot add a second.
    PRIMARY KEY (reference, level)
);

-- Written in the same transaction as the application, so an accepted application
-- always has its message; the relay publishes with confirms and then deletes the row.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    message_id    UUID NOT NULL UNIQUE,
    reference     TEXT NOT NULL,
    exchange      TEXT NOT NULL,
    routing_key   TEXT NOT NULL,
    payload       BYTEA NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A relay's lease on the row while it publishes; an expired lease (a relay that
    -- died) makes the row available again.
    claimed_until TIMESTAMPTZ
);
