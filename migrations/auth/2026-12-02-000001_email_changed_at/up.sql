-- When UpdateMe last changed the email; NULL while it is still the address the account registered
-- with. A password reset is mailed only to a verified address or to that original one (so an owner
-- can reclaim an address someone registered before them), never to an unverified changed address.
ALTER TABLE users ADD COLUMN email_changed_at timestamptz;
