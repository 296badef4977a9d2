-- API keys. Only the SHA-256 of the secret is stored, plus a short prefix to recognise it.
CREATE TABLE api_keys (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id),
    name text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 64),
    prefix text NOT NULL,
    key_hash bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz
);

-- ListApiKeys (newest first) and the per-user limit read only the unrevoked keys of one user.
CREATE INDEX api_keys_user_unrevoked ON api_keys (user_id, created_at DESC, id DESC)
    WHERE revoked_at IS NULL;
