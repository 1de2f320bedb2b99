DROP TABLE approver_sessions;
