ALTER TABLE applications
    ADD COLUMN status TEXT NOT NULL DEFAULT 'submitted'
        CHECK (status IN ('submitted', 'in_review', 'awaiting_approver',
                          'approved', 'rejected', 'failed', 'withdrawn')),
    ADD COLUMN current_level TEXT,
    ADD COLUMN seq INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN offer JSONB,
    ADD COLUMN score INTEGER,
    ADD COLUMN updated_at TIMESTAMPTZ NOT NULL DEFAULT now();
UPDATE applications a SET status = s.status, current_level = s.current_level, seq = s.seq,
       offer = s.offer, score = s.score, updated_at = s.updated_at
FROM application_status s WHERE s.reference = a.reference;
CREATE INDEX applications_waiting ON applications (current_level, updated_at)
    WHERE status = 'awaiting_approver';
DROP TABLE awaiting;
DROP TABLE application_status;
