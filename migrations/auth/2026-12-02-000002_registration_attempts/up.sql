-- Every Register call, whatever its outcome, counted per client address: a refused registration
-- (a taken email) must cost an enumerating client as much as a successful one. The overall limit
-- bounds argon2 work, so it counts only the attempts that got as far as hashing (refused probes
-- from many addresses must not close sign-up for everyone).
CREATE TABLE registration_attempts (
    id uuid PRIMARY KEY,
    attempted_at timestamptz NOT NULL,
    -- The limit key of the client address (IPv6: its /64); empty when unknown.
    client_address text NOT NULL,
    hashed boolean NOT NULL DEFAULT false
);

CREATE INDEX registration_attempts_by_address ON registration_attempts (client_address, attempted_at);
CREATE INDEX registration_attempts_by_time ON registration_attempts (attempted_at);
CREATE INDEX registration_attempts_hashed ON registration_attempts (attempted_at) WHERE hashed;

-- A registration that names a taken email or username counts as a failed password attempt, on
-- the key `registration:` and the keyed hash of the email (so probing one address locks that
-- probe, not the owner's own sign-in) and on the client address.
ALTER TABLE login_attempts DROP CONSTRAINT login_attempts_account_key_form;
ALTER TABLE login_attempts ADD CONSTRAINT login_attempts_account_key_form CHECK (
    account_key ~ '^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|(name|registration):[0-9a-f]{64})$'
);
