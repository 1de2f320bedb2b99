-- What an approver needs that the application itself does not hold: the credit
-- score found by the chain (arrives with the awaiting_approver event).
ALTER TABLE applications ADD COLUMN score INTEGER;

-- The approver inbox: applications waiting at a level, oldest first.
CREATE INDEX applications_waiting ON applications (current_level, updated_at)
    WHERE status = 'awaiting_approver';
