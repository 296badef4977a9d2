-- A default-tier counter created mid-month (a plan ended, or the metric came back to the free
-- tier) starts from the month's usage capped at the free limit. It keeps when that was and that
-- usage uncapped, less what has been refunded of it since: a refund of a consumption made before
-- gives back only what the capped usage drops by. NULL for other counters.
ALTER TABLE entitlements
    ADD COLUMN seeded_at timestamptz,
    ADD COLUMN seeded_usage bigint,
    ADD CHECK ((seeded_at IS NULL) = (seeded_usage IS NULL));
