-- Ed25519 keys that sign access tokens. The private half is sealed with AES-256-GCM under
-- AUTH_MASTER_KEY (12-byte nonce followed by ciphertext and tag; the kid is the associated data,
-- so a sealed key cannot be moved to another row).
CREATE TABLE signing_keys (
    kid text PRIMARY KEY,
    public_key bytea NOT NULL CHECK (octet_length(public_key) = 32),
    private_key_sealed bytea NOT NULL,
    created_at timestamptz NOT NULL,
    -- Set when a newer key took over; the public half stays published until every token it
    -- signed has expired.
    rotated_at timestamptz
);

-- Exactly one current key: concurrent first starts or rotations cannot both win.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys ((true)) WHERE rotated_at IS NULL;
