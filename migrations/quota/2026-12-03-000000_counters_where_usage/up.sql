-- From now on a subject without a counter of a default-tier metric has consumed none of it this
-- month, so CheckQuota and ListQuotas read counters alone and never sum the usage log. Before,
-- a plan's metric falling back to the free tier (or a metric added back to it) left the month's
-- usage without a counter until the next Consume created one. Those counters are created here,
-- holding what that Consume would have seeded them with: the month's consumptions not refunded,
-- capped at the free limit.
WITH month AS (
    SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS start,
           (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
               AS finish
), uncounted AS (
    SELECT DISTINCT u.subject, u.metric
    FROM usage_events u
    JOIN default_entitlements d ON d.metric = u.metric
    CROSS JOIN month
    WHERE u.kind = 'consume'
      AND u.occurred_at >= month.start AND u.occurred_at < month.finish
      AND NOT EXISTS (SELECT FROM entitlements e WHERE e.subject = u.subject AND e.metric = u.metric)
), held AS (
    SELECT k.subject, k.metric, d.quota_limit, COALESCE(SUM(n.net), 0)::int8 AS used
    FROM uncounted k
    JOIN default_entitlements d ON d.metric = k.metric
    CROSS JOIN month
    LEFT JOIN LATERAL (
        SELECT SUM(CASE u.kind WHEN 'consume' THEN u.amount ELSE -u.amount END) AS net,
               bool_or(u.kind = 'consume') AS consumed
        FROM usage_events u
        WHERE u.subject = k.subject AND u.metric = k.metric
          AND u.occurred_at >= month.start AND u.occurred_at < month.finish
        GROUP BY u.usage_id
    ) n ON n.consumed
    GROUP BY k.subject, k.metric, d.quota_limit
)
INSERT INTO entitlements
    (subject, metric, source, quota_limit, used, period_start, period_end, updated_at,
     counting_since, seed_held, seed_usage)
SELECT h.subject, h.metric, 'default', h.quota_limit,
       LEAST(h.used, COALESCE(h.quota_limit, h.used)), month.start, month.finish, now(),
       now(), LEAST(h.used, COALESCE(h.quota_limit, h.used)), h.used
FROM held h CROSS JOIN month
ON CONFLICT (subject, metric) DO NOTHING;
