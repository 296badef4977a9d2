-- Accounts, sign-in sessions, refresh tokens, login attempts (lockout), single-use email tokens,
-- the development mail outbox and the audit log. Secrets (passwords, refresh and email tokens) are
-- only ever stored as hashes.

CREATE TABLE users (
    id uuid PRIMARY KEY,
    -- Trimmed and lower-cased by the service; empty once DELETED (released for reuse).
    email text NOT NULL,
    -- Lower-cased; empty once DELETED.
    username text NOT NULL,
    display_name text NOT NULL,
    -- argon2id PHC string; NULL for service accounts, which cannot log in.
    password_hash text,
    roles text[] NOT NULL DEFAULT '{}',
    status text NOT NULL CHECK (status IN ('active', 'disabled', 'deleted')),
    email_verified_at timestamptz,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    last_login_at timestamptz,
    deleted_at timestamptz
);

-- Unique among accounts that are not deleted, so a deleted account frees its email and username.
CREATE UNIQUE INDEX users_email_key ON users (email) WHERE status <> 'deleted';
CREATE UNIQUE INDEX users_username_key ON users (username) WHERE status <> 'deleted';
CREATE INDEX users_newest ON users (created_at DESC, id DESC);

-- One Login and the chain of refresh tokens that follow it.
CREATE TABLE sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    created_at timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    -- The expiry of the current refresh token.
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    revoke_reason text,
    client_address text NOT NULL,
    user_agent text NOT NULL
);

CREATE INDEX sessions_of_user ON sessions (user_id, created_at DESC, id DESC);

-- Every refresh token ever issued (SHA-256 only). A token with rotated_at set was exchanged
-- already: presenting it again means it was stolen, and its session is revoked.
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    session_id uuid NOT NULL REFERENCES sessions (id),
    issued_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    rotated_at timestamptz
);

CREATE INDEX refresh_tokens_of_session ON refresh_tokens (session_id);

-- Password attempts, kept in the database so lockout survives restarts and spans replicas.
-- account_key is the user id of the matched account, else the normalised name tried.
CREATE TABLE login_attempts (
    id uuid PRIMARY KEY,
    attempted_at timestamptz NOT NULL,
    account_key text NOT NULL,
    client_address text NOT NULL,
    succeeded boolean NOT NULL
);

CREATE INDEX login_attempts_by_account ON login_attempts (account_key, attempted_at);
CREATE INDEX login_attempts_by_address ON login_attempts (client_address, attempted_at)
    WHERE NOT succeeded;
-- Attempts older than the lockout window are pruned.
CREATE INDEX login_attempts_by_time ON login_attempts (attempted_at);

-- Single-use tokens sent by email (SHA-256 only): email verification and password reset.
CREATE TABLE email_tokens (
    token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    user_id uuid NOT NULL REFERENCES users (id),
    purpose text NOT NULL CHECK (purpose IN ('verify_email', 'password_reset')),
    -- The address the token was sent to; a verification token is void once the user's email
    -- changes.
    email text NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);

CREATE INDEX email_tokens_of_user ON email_tokens (user_id, purpose, created_at);

-- Mail that was not sent because no SMTP server is configured (development). The link with its
-- token is logged, not stored: the database never holds a usable token.
CREATE TABLE outbox (
    id uuid PRIMARY KEY,
    recipient text NOT NULL,
    subject text NOT NULL,
    body text NOT NULL,
    created_at timestamptz NOT NULL
);

-- Security events. actor/subject are not foreign keys: an event about an unknown account has no
-- subject, and events are kept whatever happens to the account.
CREATE TABLE audit_events (
    id uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL,
    event_type text NOT NULL,
    actor_user_id uuid,
    subject_user_id uuid,
    client_address text NOT NULL,
    details jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_events_newest ON audit_events (occurred_at DESC, id DESC);
CREATE INDEX audit_events_of_subject ON audit_events (subject_user_id, occurred_at DESC, id DESC);
-- Rate limits count recent events of one client (e.g. registrations).
CREATE INDEX audit_events_of_client ON audit_events (client_address, event_type, occurred_at);
