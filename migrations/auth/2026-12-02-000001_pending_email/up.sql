-- An email change waits here until the new address is verified; `email` stays the verified
-- address (or the one the account registered with), which is where password resets go. A pending
-- address claims nothing: it neither blocks someone else's registration nor receives resets, so
-- nobody can squat an address by "changing" to it.
ALTER TABLE users ADD COLUMN pending_email text;
