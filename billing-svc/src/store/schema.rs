// @generated automatically by Diesel CLI.

pub mod billing {
    diesel::table! {
        billing.entitlement_outbox (outbox_id) {
            outbox_id -> Int8,
            subject -> Uuid,
            version -> Int8,
            plan_code -> Text,
            quota_limits -> Jsonb,
            period_start -> Nullable<Timestamptz>,
            period_end -> Nullable<Timestamptz>,
            created_at -> Timestamptz,
            attempts -> Int4,
            next_attempt_at -> Timestamptz,
            last_error -> Nullable<Text>,
            delivered_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        billing.entitlement_versions (subject) {
            subject -> Uuid,
            version -> Int8,
        }
    }

    diesel::table! {
        billing.idempotency_keys (user_id, operation, idempotency_key) {
            user_id -> Uuid,
            operation -> Text,
            idempotency_key -> Text,
            request_fingerprint -> Bytea,
            payment_id -> Uuid,
            response -> Nullable<Bytea>,
            created_at -> Timestamptz,
        }
    }

    diesel::table! {
        billing.payment_events (event_id) {
            event_id -> Uuid,
            provider -> Text,
            notification_id -> Nullable<Text>,
            payment_id -> Nullable<Uuid>,
            content_type -> Text,
            headers -> Jsonb,
            body -> Bytea,
            verdict -> Text,
            detail -> Text,
            received_at -> Timestamptz,
        }
    }

    diesel::table! {
        billing.payments (payment_id) {
            payment_id -> Uuid,
            user_id -> Uuid,
            subscription_id -> Uuid,
            plan_code -> Text,
            purpose -> Text,
            provider -> Text,
            provider_trade_no -> Nullable<Text>,
            amount_minor -> Int8,
            currency -> Text,
            refunded_amount_minor -> Int8,
            billing_interval -> Text,
            interval_count -> Int4,
            status -> Text,
            checkout_kind -> Nullable<Text>,
            checkout_url -> Nullable<Text>,
            expires_at -> Timestamptz,
            paid_at -> Nullable<Timestamptz>,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
            checked_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        billing.plans (plan_code) {
            plan_code -> Text,
            name -> Text,
            description -> Text,
            price_amount_minor -> Int8,
            currency -> Text,
            billing_interval -> Text,
            interval_count -> Int4,
            quota_limits -> Jsonb,
            active -> Bool,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        billing.refunds (refund_id) {
            refund_id -> Uuid,
            payment_id -> Uuid,
            idempotency_key -> Text,
            request_fingerprint -> Bytea,
            out_refund_no -> Text,
            amount_minor -> Int8,
            currency -> Text,
            reason -> Text,
            status -> Text,
            provider_refund_id -> Nullable<Text>,
            requested_by -> Uuid,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        billing.subscriptions (subscription_id) {
            subscription_id -> Uuid,
            user_id -> Uuid,
            plan_code -> Text,
            status -> Text,
            current_period_start -> Nullable<Timestamptz>,
            current_period_end -> Nullable<Timestamptz>,
            cancel_at_period_end -> Bool,
            canceled_at -> Nullable<Timestamptz>,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
        }
    }

    diesel::joinable!(idempotency_keys -> payments (payment_id));
    diesel::joinable!(payment_events -> payments (payment_id));
    diesel::joinable!(payments -> plans (plan_code));
    diesel::joinable!(payments -> subscriptions (subscription_id));
    diesel::joinable!(refunds -> payments (payment_id));
    diesel::joinable!(subscriptions -> plans (plan_code));

    diesel::allow_tables_to_appear_in_same_query!(
        entitlement_outbox,
        entitlement_versions,
        idempotency_keys,
        payment_events,
        payments,
        plans,
        refunds,
        subscriptions,
    );
}
