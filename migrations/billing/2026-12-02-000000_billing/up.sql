-- billing: plans, subscriptions, payments, provider notifications, idempotency keys and the
-- entitlement outbox. States are text with CHECK constraints; every transition in the code is a
-- conditional UPDATE ... WHERE status = ..., so a late or repeated event cannot apply twice.

CREATE TABLE plans (
    plan_code text PRIMARY KEY CHECK (plan_code ~ '^[a-z0-9][a-z0-9_-]{0,63}$'),
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    description text NOT NULL DEFAULT '' CHECK (char_length(description) <= 2000),
    price_amount_minor bigint NOT NULL CHECK (price_amount_minor > 0),
    currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    billing_interval text NOT NULL CHECK (billing_interval IN ('month', 'year')),
    interval_count integer NOT NULL CHECK (interval_count BETWEEN 1 AND 36),
    -- [{"metric": "api.requests", "limit": 1000}, {"metric": "x", "limit": null}]; null: unlimited.
    quota_limits jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(quota_limits) = 'array'),
    active boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
-- ListPlans: cheapest first, then by code.
CREATE INDEX plans_by_price ON plans (price_amount_minor, plan_code);

CREATE TABLE subscriptions (
    subscription_id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    plan_code text NOT NULL REFERENCES plans (plan_code),
    status text NOT NULL
        CHECK (status IN ('pending_payment', 'active', 'past_due', 'canceled', 'expired')),
    current_period_start timestamptz,
    current_period_end timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    canceled_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    CHECK ((current_period_start IS NULL) = (current_period_end IS NULL)),
    CHECK (current_period_start IS NULL OR current_period_start < current_period_end),
    CHECK (status NOT IN ('active', 'past_due') OR current_period_end IS NOT NULL),
    CHECK ((status = 'canceled') = (canceled_at IS NOT NULL))
);
-- At most one current subscription per user: the database refuses a second, whatever races.
CREATE UNIQUE INDEX subscriptions_one_current ON subscriptions (user_id)
    WHERE status IN ('pending_payment', 'active', 'past_due');
-- The lifecycle worker's scans.
CREATE INDEX subscriptions_by_period_end ON subscriptions (current_period_end)
    WHERE status IN ('active', 'past_due');

CREATE TABLE payments (
    payment_id uuid PRIMARY KEY,
    user_id uuid NOT NULL,
    subscription_id uuid NOT NULL REFERENCES subscriptions (subscription_id),
    plan_code text NOT NULL REFERENCES plans (plan_code),
    -- What success does to the subscription: start it, extend it, or move it to plan_code.
    purpose text NOT NULL CHECK (purpose IN ('first_period', 'renewal', 'change_plan')),
    provider text NOT NULL CHECK (provider IN ('alipay', 'wechatpay')),
    provider_trade_no text,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    refunded_amount_minor bigint NOT NULL DEFAULT 0
        CHECK (refunded_amount_minor BETWEEN 0 AND amount_minor),
    -- The period bought, fixed when the payment is created (what the buyer saw).
    billing_interval text NOT NULL CHECK (billing_interval IN ('month', 'year')),
    interval_count integer NOT NULL CHECK (interval_count BETWEEN 1 AND 36),
    status text NOT NULL CHECK (status IN
        ('pending', 'succeeded', 'failed', 'canceled', 'refunded', 'partially_refunded')),
    -- Set once the provider created the checkout; a retry with the same idempotency key resumes
    -- a payment whose checkout is still missing.
    checkout_kind text CHECK (checkout_kind IN ('redirect_url', 'qr_code_url')),
    checkout_url text,
    expires_at timestamptz NOT NULL,
    paid_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    CHECK ((checkout_kind IS NULL) = (checkout_url IS NULL)),
    CHECK ((status IN ('succeeded', 'refunded', 'partially_refunded')) = (paid_at IS NOT NULL))
);
-- ListPayments: a user's payments newest first (keyset on created_at, payment_id).
CREATE INDEX payments_by_user ON payments (user_id, created_at DESC, payment_id DESC);
-- One open checkout per subscription: a newer one cancels the older in the same transaction.
CREATE UNIQUE INDEX payments_one_pending ON payments (subscription_id) WHERE status = 'pending';
-- The lifecycle worker's expiry scan.
CREATE INDEX payments_pending_by_expiry ON payments (expires_at) WHERE status = 'pending';

-- Every provider notification exactly as it arrived, with what was made of it (audit).
CREATE TABLE payment_events (
    event_id uuid PRIMARY KEY,
    provider text NOT NULL,
    -- The provider's notification id (the same on its retries); NULL when unparseable.
    notification_id text,
    payment_id uuid REFERENCES payments (payment_id),
    content_type text NOT NULL,
    headers jsonb NOT NULL,
    body bytea NOT NULL,
    verdict text NOT NULL CHECK (verdict IN ('applied', 'duplicate', 'refused')),
    detail text NOT NULL,
    received_at timestamptz NOT NULL
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_id, received_at);

-- Idempotency keys of the RPCs that create payments, scoped to the user and the RPC.
CREATE TABLE idempotency_keys (
    user_id uuid NOT NULL,
    operation text NOT NULL,
    idempotency_key text NOT NULL,
    -- SHA-256 of the request's parameters: the same key with other parameters is refused.
    request_fingerprint bytea NOT NULL,
    payment_id uuid NOT NULL REFERENCES payments (payment_id),
    -- The encoded protobuf response, once the checkout exists; replayed verbatim.
    response bytea,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, operation, idempotency_key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- The last entitlement version per subject; the all-zero UUID stands for the default (free
-- tier) limits. Bumped with the change that causes it, so versions follow commit order.
CREATE TABLE entitlement_versions (
    subject uuid PRIMARY KEY,
    version bigint NOT NULL CHECK (version >= 1)
);

-- Transactional outbox of entitlements for quota-svc: written in the transaction of the change,
-- delivered (at least once, newest per subject) by the dispatcher.
CREATE TABLE entitlement_outbox (
    outbox_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The user, or the all-zero UUID for the default limits (ApplyDefaultEntitlements).
    subject uuid NOT NULL,
    version bigint NOT NULL CHECK (version >= 1),
    -- Empty with empty limits: the plan limits are withdrawn.
    plan_code text NOT NULL,
    quota_limits jsonb NOT NULL CHECK (jsonb_typeof(quota_limits) = 'array'),
    period_start timestamptz,
    period_end timestamptz,
    created_at timestamptz NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error text,
    delivered_at timestamptz,
    UNIQUE (subject, version)
);
CREATE INDEX entitlement_outbox_undelivered ON entitlement_outbox (next_attempt_at)
    WHERE delivered_at IS NULL;
