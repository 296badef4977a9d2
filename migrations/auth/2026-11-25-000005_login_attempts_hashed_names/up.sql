-- account_key held the name typed for an unknown account in clear, which may be a password typed
-- into the wrong box. It is now the user id of the matched account, else `name:` and the SHA-256
-- (hex) of the normalised name; the constraint keeps anything else out. Attempts only count for
-- 15 minutes, so the old rows on names are simply dropped.
DELETE FROM login_attempts WHERE account_key LIKE 'name:%';
ALTER TABLE login_attempts ADD CONSTRAINT login_attempts_account_key_form CHECK (
    account_key ~ '^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|name:[0-9a-f]{64})$'
);
