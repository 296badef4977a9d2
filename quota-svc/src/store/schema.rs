// @generated automatically by Diesel CLI.

pub mod quota {
    diesel::table! {
        quota.default_entitlements (metric) {
            metric -> Text,
            quota_limit -> Nullable<Int8>,
        }
    }

    diesel::table! {
        quota.default_version (singleton) {
            singleton -> Bool,
            version -> Int8,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        quota.entitlements (subject, metric) {
            subject -> Uuid,
            metric -> Text,
            source -> Text,
            quota_limit -> Nullable<Int8>,
            used -> Int8,
            period_start -> Timestamptz,
            period_end -> Timestamptz,
            plan_code -> Text,
            updated_at -> Timestamptz,
            counting_since -> Timestamptz,
            seed_held -> Int8,
            seed_usage -> Int8,
        }
    }

    diesel::table! {
        quota.idempotency_keys (subject, idempotency_key) {
            subject -> Uuid,
            idempotency_key -> Text,
            usage_id -> Uuid,
            metric -> Text,
            amount -> Int8,
            quota_limit -> Nullable<Int8>,
            used -> Int8,
            resets_at -> Timestamptz,
            created_at -> Timestamptz,
            refunded_at -> Nullable<Timestamptz>,
            consumed_by -> Nullable<Uuid>,
            consumed_with -> Nullable<Text>,
        }
    }

    diesel::table! {
        quota.subject_versions (subject) {
            subject -> Uuid,
            version -> Int8,
            plan_code -> Text,
            updated_at -> Timestamptz,
        }
    }

    diesel::table! {
        quota.usage_events (subject, occurred_at, usage_id, kind) {
            occurred_at -> Timestamptz,
            usage_id -> Uuid,
            kind -> Text,
            subject -> Uuid,
            metric -> Text,
            amount -> Int8,
            idempotency_key -> Text,
            attributes -> Nullable<Jsonb>,
        }
    }

    diesel::allow_tables_to_appear_in_same_query!(
        default_entitlements,
        default_version,
        entitlements,
        idempotency_keys,
        subject_versions,
        usage_events,
    );
}
