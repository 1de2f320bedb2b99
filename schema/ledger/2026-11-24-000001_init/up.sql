-- The ledger's book of approved loans: one row per loan, whatever is redelivered.
CREATE TABLE loans (
    reference       TEXT PRIMARY KEY,
    amount          NUMERIC(12, 2) NOT NULL CHECK (amount > 0),
    currency        TEXT NOT NULL,
    annual_rate     NUMERIC(6, 4) NOT NULL,
    term_months     INTEGER NOT NULL CHECK (term_months > 0),
    monthly_payment NUMERIC(12, 2) NOT NULL,
    -- The decisions that approved it, in chain order, as the audit trail.
    decisions       JSONB NOT NULL,
    submitted_at    TIMESTAMPTZ NOT NULL,
    booked_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
