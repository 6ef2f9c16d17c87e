-- HMAC request signing (issue 10): a function's signing keys.
--
-- The proxy needs the secret itself to check a signature (a digest would
-- not do), so it is sealed like a function secret: ChaCha20-Poly1305 under
-- the control plane's master key, the associated data naming the function
-- id and "signing-key/<key_id>" (control/src/signing.rs). Proxies get the
-- opened secrets of live keys with the route table. A revoked key keeps
-- its row (revoked_at, ciphertext wiped) and leaves the table.
CREATE TABLE function_signing_keys (
    id          BIGSERIAL PRIMARY KEY,
    function_id BIGINT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    -- what callers put in keyid=: not secret
    key_id      TEXT NOT NULL UNIQUE CHECK (key_id ~ '^sk_[0-9a-f]{16}$'),
    label       TEXT NOT NULL DEFAULT '' CHECK (length(label) <= 64),
    -- which master key sealed it (see control/src/vault.rs)
    master_key_id TEXT NOT NULL CHECK (master_key_id ~ '^[0-9a-f]{16}$'),
    nonce       BYTEA NOT NULL CHECK (length(nonce) = 12),
    ciphertext  BYTEA NOT NULL,
    created_by  BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX function_signing_keys_live ON function_signing_keys (function_id) WHERE revoked_at IS NULL;
