-- The loan office: withdrawals, dual control, claims, escalation and the audit trail.

-- The timeline holds one entry per decision made (two at the manager level under dual
-- control), the applicant's withdrawal and escalations: keyed by its order, not its level.
ALTER TABLE decisions DROP CONSTRAINT decisions_pkey;
ALTER TABLE decisions ADD PRIMARY KEY (reference, seq);
ALTER TABLE decisions DROP CONSTRAINT decisions_outcome_check;
ALTER TABLE decisions ADD CONSTRAINT decisions_outcome_check
    CHECK (outcome IN ('approved', 'rejected', 'withdrawn', 'escalated'));

-- An applicant's withdrawal, from the moment it is requested: from then on the status
-- takes only the ledger's final answer (withdrawn, or approved if it booked first), and
-- shows no decision made after it. The request's time is also kept in the status row,
-- which every status change locks and re-checks, so a change racing the request cannot
-- slip past it.
CREATE TABLE withdrawals (
    reference    TEXT PRIMARY KEY REFERENCES applications (reference) ON DELETE CASCADE,
    reason       TEXT,
    requested_at TIMESTAMPTZ NOT NULL
);
ALTER TABLE application_status ADD COLUMN withdrawal_requested_at TIMESTAMPTZ;

-- Who works a waiting case, until when.
CREATE TABLE claims (
    reference     TEXT PRIMARY KEY REFERENCES applications (reference) ON DELETE CASCADE,
    approver      TEXT NOT NULL,
    claimed_until TIMESTAMPTZ NOT NULL
);

-- Approvals given to a case that needs more than one (dual control), until the last
-- one hands them all to the level together.
CREATE TABLE approvals_given (
    reference  TEXT NOT NULL REFERENCES applications (reference) ON DELETE CASCADE,
    level      TEXT NOT NULL,
    approver   TEXT NOT NULL,
    reason     TEXT NOT NULL,
    decided_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (reference, level, approver)
);

-- When a waiting case was escalated (NULL: not yet). The timer is this row: it lives
-- in the database, so it survives every restart and holds no broker delivery.
ALTER TABLE awaiting ADD COLUMN escalated_at TIMESTAMPTZ;

-- Every human act, each row chained to the one before by a SHA-256 hash over both, so
-- that a changed or removed row breaks the chain (`loanflow audit verify`). `detail`
-- is text, kept byte for byte as hashed.
CREATE TABLE audit_trail (
    id        BIGINT PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    reference TEXT,
    detail    TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash      BYTEA NOT NULL
);
