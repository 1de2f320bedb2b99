-- The trace an application waiting for a person belongs to, so that the person's
-- decision, when it comes, continues it. NULL while tracing is off.
ALTER TABLE waiting ADD COLUMN traceparent TEXT;
