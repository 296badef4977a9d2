-- Refunds of payments (admin RefundPayment). A refund's amount is reserved on its payment
-- (refunded_amount_minor) in the transaction that records it, before the provider is asked, so
-- concurrent refunds of one payment can never add up to more than was paid; a refund the
-- provider refuses or gives up on releases its reservation.
CREATE TABLE refunds (
    refund_id uuid PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments (payment_id),
    -- The caller's key, unique per payment: a retry finds its refund and resumes it.
    idempotency_key text NOT NULL,
    request_fingerprint bytea NOT NULL,
    -- The refund's name at the provider (Alipay out_request_no, WeChat Pay out_refund_no),
    -- derived from the payment and the idempotency key, so a retry can never refund twice.
    out_refund_no text NOT NULL UNIQUE CHECK (char_length(out_refund_no) BETWEEN 1 AND 64),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    reason text NOT NULL CHECK (char_length(reason) <= 256),
    -- pending: recorded, the provider not yet answering; processing: accepted by the provider,
    -- outcome to come; succeeded / failed: final.
    status text NOT NULL CHECK (status IN ('pending', 'processing', 'succeeded', 'failed')),
    provider_refund_id text,
    requested_by uuid NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (payment_id, idempotency_key)
);
-- The reconciliation worker's scan of refunds still waiting for the provider.
CREATE INDEX refunds_unsettled ON refunds (updated_at) WHERE status IN ('pending', 'processing');

-- When billing last asked the provider about a PENDING payment (a notification may never come):
-- the reconciliation worker and GetPayment ask at most once per interval per payment.
ALTER TABLE payments ADD COLUMN checked_at timestamptz;
CREATE INDEX payments_pending_by_creation ON payments (created_at) WHERE status = 'pending';
