DROP TABLE entitlement_outbox;
DROP TABLE entitlement_versions;
DROP TABLE idempotency_keys;
DROP TABLE payment_events;
DROP TABLE payments;
DROP TABLE subscriptions;
DROP TABLE plans;
