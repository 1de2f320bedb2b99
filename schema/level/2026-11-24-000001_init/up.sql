-- Applications waiting for a person at a human level (manager). The waiting state
-- lives here, never as an unacked delivery: a delivery held for hours would be
-- closed by the broker's consumer timeout.
CREATE TABLE waiting (
    reference     TEXT PRIMARY KEY,
    -- The work item as received, to be forwarded once a person decides.
    work          JSONB NOT NULL,
    waiting_since TIMESTAMPTZ NOT NULL DEFAULT now()
);
