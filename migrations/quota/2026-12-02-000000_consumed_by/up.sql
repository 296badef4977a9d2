-- Who made each consumption, so that only that caller, a service or an admin may refund it (a
-- user must not refund what a backend charged them). consumed_by is the caller's principal: the
-- user of a session or of the user's own API key, the service account of a backend or service
-- key. consumed_with says how it signed in. Both NULL on rows made before this migration: only a
-- service or an admin may refund those.
ALTER TABLE idempotency_keys
    ADD COLUMN consumed_by uuid,
    ADD COLUMN consumed_with text CHECK (consumed_with IN ('session', 'api_key')),
    ADD CONSTRAINT idempotency_keys_consumer_recorded_whole
        CHECK ((consumed_by IS NULL) = (consumed_with IS NULL));
