DROP INDEX applications_waiting;
ALTER TABLE applications DROP COLUMN score;
