ALTER TABLE entitlements DROP COLUMN seeded_usage, DROP COLUMN seeded_at;
