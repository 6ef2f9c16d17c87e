-- Private functions and function secrets (issue 10).
--
-- Invocation keys: only the sha256 of a key is stored (the key is shown
-- once, at creation); proxies get the digests of live keys with the route
-- table. A revoked key keeps its row (revoked_at) and leaves the table.
CREATE TABLE function_keys (
    id          BIGSERIAL PRIMARY KEY,
    function_id BIGINT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    label       TEXT NOT NULL DEFAULT '' CHECK (length(label) <= 64),
    key_hash    TEXT NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    -- the key's first characters, to recognise it in a list
    prefix      TEXT NOT NULL CHECK (length(prefix) <= 16),
    created_by  BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at  TIMESTAMPTZ
);
CREATE INDEX function_keys_live ON function_keys (function_id) WHERE revoked_at IS NULL;

-- Secrets, sealed with ChaCha20-Poly1305 under the control plane's master
-- key (a file in its data directory, never in the database). The
-- associated data binds a ciphertext to its function and name, so a row
-- copied elsewhere does not open.
CREATE TABLE function_secrets (
    function_id BIGINT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    name        TEXT NOT NULL CHECK (name ~ '^[A-Z_][A-Z0-9_]{0,127}$'),
    -- which master key sealed it (see control/src/vault.rs)
    key_id      TEXT NOT NULL CHECK (key_id ~ '^[0-9a-f]{16}$'),
    nonce       BYTEA NOT NULL CHECK (length(nonce) = 12),
    ciphertext  BYTEA NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (function_id, name)
);
