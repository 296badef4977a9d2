-- An attempt is recorded as a failure before its password is checked, so concurrent guesses see
-- each other; `checking` marks those still being checked (they may turn into a success).
ALTER TABLE login_attempts ADD COLUMN checking boolean NOT NULL DEFAULT false;
