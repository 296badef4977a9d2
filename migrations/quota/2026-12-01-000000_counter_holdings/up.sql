-- What a counter's `used` holds, so a refund gives back what the counter took and no more.
-- counting_since: consumptions made since then (before the period ends) count whole; set when
-- the count starts over (a new counter, a new plan period, a rollover, ResetQuota). A default-tier counter created
-- mid-month (a plan ended, or the metric came back to the free tier) also holds the month's
-- earlier consumptions as their usage capped at the free limit: seed_held units of seed_usage
-- (uncapped, less what has been refunded of it since).
ALTER TABLE entitlements
    ADD COLUMN counting_since timestamptz,
    ADD COLUMN seed_held bigint NOT NULL DEFAULT 0 CHECK (seed_held >= 0),
    ADD COLUMN seed_usage bigint NOT NULL DEFAULT 0 CHECK (seed_usage >= 0);
UPDATE entitlements SET counting_since = period_start;
ALTER TABLE entitlements ALTER COLUMN counting_since SET NOT NULL;
