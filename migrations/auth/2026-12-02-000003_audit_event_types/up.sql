-- The event types of the audit log are a closed set (auth-svc: domain::audit::EventType).
ALTER TABLE audit_events ADD CONSTRAINT audit_events_event_type_known CHECK (event_type IN (
    'user.registered',
    'email.verified',
    'email.changed',
    'login.succeeded',
    'login.failed',
    'login.locked',
    'logout',
    'token.reuse_detected',
    'session.revoked',
    'password.changed',
    'password.reset_requested',
    'password.reset',
    'user.updated',
    'user.deleted',
    'api_key.created',
    'api_key.revoked'
));
