-- The W3C trace context (`traceparent`) of the act that queued a message (a submission,
-- an approver's decision, a withdrawal), so that the message the relay publishes later
-- continues that act's trace. NULL while tracing is off.
ALTER TABLE outbox ADD COLUMN traceparent TEXT;
