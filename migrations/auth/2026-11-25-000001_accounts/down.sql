DROP TABLE audit_events;
DROP TABLE outbox;
DROP TABLE email_tokens;
DROP TABLE login_attempts;
DROP TABLE refresh_tokens;
DROP TABLE sessions;
DROP TABLE users;
