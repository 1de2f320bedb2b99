DROP TABLE outbox;
DROP TABLE decisions;
DROP TABLE applications;
