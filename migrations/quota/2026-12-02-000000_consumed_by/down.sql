ALTER TABLE idempotency_keys
    DROP CONSTRAINT idempotency_keys_consumer_recorded_whole,
    DROP COLUMN consumed_with,
    DROP COLUMN consumed_by;
