// @generated automatically by Diesel CLI.

pub mod auth {
    diesel::table! {
        auth.api_keys (id) {
            id -> Uuid,
            user_id -> Uuid,
            name -> Text,
            prefix -> Text,
            key_hash -> Bytea,
            scopes -> Array<Nullable<Text>>,
            created_at -> Timestamptz,
            expires_at -> Nullable<Timestamptz>,
            last_used_at -> Nullable<Timestamptz>,
            revoked_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        auth.audit_events (id) {
            id -> Uuid,
            occurred_at -> Timestamptz,
            event_type -> Text,
            actor_user_id -> Nullable<Uuid>,
            subject_user_id -> Nullable<Uuid>,
            client_address -> Text,
            details -> Jsonb,
        }
    }

    diesel::table! {
        auth.email_tokens (token_hash) {
            token_hash -> Bytea,
            user_id -> Uuid,
            purpose -> Text,
            email -> Text,
            created_at -> Timestamptz,
            expires_at -> Timestamptz,
            used_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        auth.login_attempts (id) {
            id -> Uuid,
            attempted_at -> Timestamptz,
            account_key -> Text,
            client_address -> Text,
            succeeded -> Bool,
            checking -> Bool,
        }
    }

    diesel::table! {
        auth.outbox (id) {
            id -> Uuid,
            recipient -> Text,
            subject -> Text,
            body -> Text,
            created_at -> Timestamptz,
        }
    }

    diesel::table! {
        auth.refresh_tokens (token_hash) {
            token_hash -> Bytea,
            session_id -> Uuid,
            issued_at -> Timestamptz,
            expires_at -> Timestamptz,
            rotated_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        auth.registration_attempts (id) {
            id -> Uuid,
            attempted_at -> Timestamptz,
            client_address -> Text,
            hashed -> Bool,
        }
    }

    diesel::table! {
        auth.sessions (id) {
            id -> Uuid,
            user_id -> Uuid,
            created_at -> Timestamptz,
            last_used_at -> Timestamptz,
            expires_at -> Timestamptz,
            revoked_at -> Nullable<Timestamptz>,
            revoke_reason -> Nullable<Text>,
            client_address -> Text,
            user_agent -> Text,
        }
    }

    diesel::table! {
        auth.signing_keys (kid) {
            kid -> Text,
            public_key -> Bytea,
            private_key_sealed -> Bytea,
            created_at -> Timestamptz,
            rotated_at -> Nullable<Timestamptz>,
        }
    }

    diesel::table! {
        auth.users (id) {
            id -> Uuid,
            email -> Text,
            username -> Text,
            display_name -> Text,
            password_hash -> Nullable<Text>,
            roles -> Array<Nullable<Text>>,
            status -> Text,
            email_verified_at -> Nullable<Timestamptz>,
            created_at -> Timestamptz,
            updated_at -> Timestamptz,
            last_login_at -> Nullable<Timestamptz>,
            deleted_at -> Nullable<Timestamptz>,
            pending_email -> Nullable<Text>,
        }
    }

    diesel::joinable!(api_keys -> users (user_id));
    diesel::joinable!(email_tokens -> users (user_id));
    diesel::joinable!(refresh_tokens -> sessions (session_id));
    diesel::joinable!(sessions -> users (user_id));

    diesel::allow_tables_to_appear_in_same_query!(
        api_keys,
        audit_events,
        email_tokens,
        login_attempts,
        outbox,
        refresh_tokens,
        registration_attempts,
        sessions,
        signing_keys,
        users,
    );
}
