-- The login a token was made from (`cpub token create` with a login's
-- token, or with a token so made), when it was made without the user's
-- password: it goes with that login (ON DELETE CASCADE), so a password
-- change, which revokes the user's logins, also ends what a leaked login
-- made. Tokens made with the password, from the bootstrap token or a token
-- without a login behind it, and those from before this migration, have
-- none: they stay until revoked one by one.
ALTER TABLE api_tokens
    ADD COLUMN login_id BIGINT REFERENCES api_tokens (id) ON DELETE CASCADE;
CREATE INDEX api_tokens_login_id ON api_tokens (login_id) WHERE login_id IS NOT NULL;
