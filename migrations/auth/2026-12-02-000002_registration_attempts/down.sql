DELETE FROM login_attempts WHERE account_key LIKE 'registration:%';
ALTER TABLE login_attempts DROP CONSTRAINT login_attempts_account_key_form;
ALTER TABLE login_attempts ADD CONSTRAINT login_attempts_account_key_form CHECK (
    account_key ~ '^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|name:[0-9a-f]{64})$'
);
DROP TABLE registration_attempts;
