ALTER TABLE entitlements DROP COLUMN seed_usage, DROP COLUMN seed_held, DROP COLUMN counting_since;
