DROP TABLE usage_events;
DROP FUNCTION ensure_usage_partitions(timestamptz, integer);
DROP TABLE idempotency_keys;
DROP TABLE default_version;
DROP TABLE default_entitlements;
DROP TABLE subject_versions;
DROP TABLE entitlements;
