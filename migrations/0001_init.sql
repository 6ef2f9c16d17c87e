-- ContainerPub control plane: users and API tokens, functions, deployments,
-- and the route revision that proxies long-poll on.

CREATE TABLE users (
    id            BIGSERIAL PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    user_id      BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- sha256 hex of the token; the token itself is never stored
    token_hash   TEXT NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    -- where it came from: 'bootstrap', 'login'
    kind         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE functions (
    id                   BIGSERIAL PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    owner_id             BIGINT NOT NULL REFERENCES users (id),
    visibility           TEXT NOT NULL DEFAULT 'private' CHECK (visibility IN ('public', 'private')),
    -- manifest (cpub.toml as JSON) of the active deployment; NULL until one is active
    config               JSONB,
    active_deployment_id BIGINT,
    -- highest version handed out; bumped under the row lock of this row
    last_version         INTEGER NOT NULL DEFAULT 0,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE deployments (
    id          BIGSERIAL PRIMARY KEY,
    function_id BIGINT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version > 0),
    -- 'sha256:<hex>' of the uploaded .tar.gz
    digest      TEXT NOT NULL,
    -- path of the stored .tar.gz (content-addressed, may be shared)
    artifact    TEXT NOT NULL,
    -- Podman image reference, set once the build succeeded
    image       TEXT,
    -- the bundle's manifest as JSON
    config      JSONB NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('building', 'active', 'superseded', 'failed')),
    build_log   TEXT NOT NULL DEFAULT '',
    created_by  BIGINT REFERENCES users (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    UNIQUE (function_id, version)
);
-- At most one active deployment per function.
CREATE UNIQUE INDEX deployments_one_active ON deployments (function_id) WHERE status = 'active';

ALTER TABLE functions
    ADD CONSTRAINT functions_active_deployment_fk
    FOREIGN KEY (active_deployment_id) REFERENCES deployments (id) ON DELETE SET NULL;

-- One row: the revision of the route table. Bumped (never lowered) in the
-- same transaction as every change proxies must see, with NOTIFY cpub_routes.
CREATE TABLE route_revision (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    revision  BIGINT NOT NULL CHECK (revision >= 0)
);
INSERT INTO route_revision (singleton, revision) VALUES (TRUE, 0);
