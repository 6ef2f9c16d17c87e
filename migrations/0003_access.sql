-- Tenancy and access (issue 10): user roles, named and expiring API tokens
-- with an optional narrower role, node credentials for proxies, and the
-- append-only audit log.

-- Roles: 'admin' (everything), 'developer' (deploys and manages the
-- functions it owns), 'viewer' (reads). Users that existed before are
-- developers, but the first user ('admin', the bootstrap user) is an admin.
ALTER TABLE users
    ADD COLUMN role TEXT NOT NULL DEFAULT 'developer'
        CHECK (role IN ('admin', 'developer', 'viewer'));
UPDATE users SET role = 'admin' WHERE username = 'admin';
ALTER TABLE users ALTER COLUMN role DROP DEFAULT;

-- Tokens: a name to tell them apart, an optional expiry, and an optional
-- scope that narrows the user's role (never widens it: the effective role is
-- the lower of the two, computed on every call).
ALTER TABLE api_tokens
    ADD COLUMN name TEXT NOT NULL DEFAULT '' CHECK (length(name) <= 64),
    ADD COLUMN expires_at TIMESTAMPTZ,
    ADD COLUMN role_scope TEXT CHECK (role_scope IN ('admin', 'developer', 'viewer'));
UPDATE api_tokens SET name = kind WHERE name = '';

-- Node credentials: what a proxy authenticates with. One per node name; it
-- may only watch routes and report crashes for its own node.
CREATE TABLE node_credentials (
    id           BIGSERIAL PRIMARY KEY,
    node         TEXT NOT NULL UNIQUE CHECK (length(node) BETWEEN 1 AND 63),
    -- sha256 hex of the credential; the credential itself is never stored
    token_hash   TEXT NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    created_by   TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ
);

-- Every mutating call on the API (and every login), whatever its result.
-- Names are copied, not referenced: rows outlive users and functions.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    -- 'user' (a user's token or a login), 'node' (a node credential),
    -- 'anonymous' (no valid credentials)
    actor_kind  TEXT NOT NULL CHECK (actor_kind IN ('user', 'node', 'anonymous')),
    -- username, node name, or the username a login named
    actor       TEXT,
    -- the effective role of the call (users only)
    role        TEXT,
    -- e.g. 'deployment.create', or 'POST /api/v1/...' for a route without a name
    action      TEXT NOT NULL,
    -- the path the call named (e.g. /api/v1/functions/hello/deployments)
    target      TEXT NOT NULL,
    -- the function the call named, if any
    function    TEXT,
    -- the HTTP status answered
    status      INTEGER NOT NULL,
    -- the error message answered, for a refused or failed call
    error       TEXT,
    -- the TCP peer address
    source      TEXT,
    request_id  TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, at);
CREATE INDEX audit_log_function ON audit_log (function, at);

-- Append-only: no UPDATE, DELETE or TRUNCATE, for any role (the control
-- plane's own included; only DDL by the database owner could remove this).
CREATE FUNCTION audit_log_append_only() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
