-- Quota limits, counters, idempotency keys and the usage log of quota-svc.

-- One row per (subject, metric) with its counter for the current period. Plan rows come from
-- ApplyEntitlements; default rows are created on first use from default_entitlements.
CREATE TABLE entitlements (
    subject uuid NOT NULL,
    metric text NOT NULL,
    source text NOT NULL CHECK (source IN ('plan', 'default')),
    -- NULL means unlimited.
    quota_limit bigint CHECK (quota_limit >= 0),
    used bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    plan_code text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (subject, metric),
    CHECK (period_start < period_end),
    -- Backstop: whatever the application does, a counter never passes its limit.
    CHECK (quota_limit IS NULL OR used <= quota_limit)
);

-- Per-subject ordering of ApplyEntitlements.
CREATE TABLE subject_versions (
    subject uuid PRIMARY KEY,
    version bigint NOT NULL CHECK (version >= 1),
    plan_code text NOT NULL,
    updated_at timestamptz NOT NULL
);

-- The free tier, per calendar month (UTC).
CREATE TABLE default_entitlements (
    metric text PRIMARY KEY,
    -- NULL means unlimited.
    quota_limit bigint CHECK (quota_limit >= 0)
);

-- The version of the free tier (a single row).
CREATE TABLE default_version (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version bigint NOT NULL CHECK (version >= 1),
    updated_at timestamptz NOT NULL
);

-- The first answer to every allowed Consume, per (subject, key); also the record a Refund finds.
-- Kept at least 24 hours and until the period it counted in has ended.
CREATE TABLE idempotency_keys (
    subject uuid NOT NULL,
    idempotency_key text NOT NULL,
    usage_id uuid NOT NULL UNIQUE,
    metric text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    quota_limit bigint,
    used bigint NOT NULL,
    resets_at timestamptz NOT NULL,
    -- Equals the consumption's usage_events.occurred_at (finds its partition).
    created_at timestamptz NOT NULL,
    refunded_at timestamptz,
    PRIMARY KEY (subject, idempotency_key)
);
-- No index on created_at: expiry runs hourly and may scan; every consume would pay for one.

-- Every consumption and refund, partitioned by month so old months can be detached.
CREATE TABLE usage_events (
    occurred_at timestamptz NOT NULL,
    usage_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('consume', 'refund')),
    subject uuid NOT NULL,
    metric text NOT NULL,
    amount bigint NOT NULL CHECK (amount > 0),
    idempotency_key text NOT NULL,
    attributes jsonb,
    -- The one index (inserts are the hot path): usage series, event pages and a refund's
    -- lookup of its consumption all filter by subject and time.
    PRIMARY KEY (subject, occurred_at, usage_id, kind)
) PARTITION BY RANGE (occurred_at);

-- Creates the monthly partitions of usage_events from the month of `first` for `months` months.
CREATE FUNCTION ensure_usage_partitions(first timestamptz, months integer) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamptz := date_trunc('month', first AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    next_start timestamptz;
BEGIN
    FOR i IN 1..months LOOP
        next_start := ((month_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC';
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF usage_events FOR VALUES FROM (%L) TO (%L)',
            'usage_events_' || to_char(month_start AT TIME ZONE 'UTC', 'YYYY_MM'),
            month_start, next_start);
        month_start := next_start;
    END LOOP;
END;
$$;

SELECT ensure_usage_partitions(now(), 3);
