-- Applications the ledger will never book: the applicant withdrew them before a loan
-- was booked. A reference is in `loans` or here, never both: both are written under
-- the same per-reference lock.
CREATE TABLE withdrawals (
    reference    TEXT PRIMARY KEY,
    reason       TEXT,
    requested_at TIMESTAMPTZ NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
