ALTER TABLE waiting DROP COLUMN traceparent;
