-- The inbox: ids of the messages this service has fully handled (its writes
-- committed, its outgoing messages confirmed). A delivery whose id is here is a
-- duplicate and is acknowledged without doing anything again.
CREATE TABLE processed_messages (
    message_id   UUID PRIMARY KEY,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
