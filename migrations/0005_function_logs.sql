-- Function logs: every line an instance printed, as its node shipped it
-- (POST /api/v1/logs), read by `cpub logs`. Rows go with their function.
-- Kept for CPUB_LOG_RETENTION_DAYS and at most CPUB_LOG_RETENTION_BYTES of
-- line text per function (the oldest lines go first).

CREATE TABLE function_logs (
    -- the cursor of `cpub logs -f`: ids are taken under one advisory lock
    -- per batch, so they are committed in order
    id          BIGSERIAL PRIMARY KEY,
    function_id BIGINT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL,
    node        TEXT NOT NULL CHECK (length(node) BETWEEN 1 AND 253),
    -- short container id; empty for platform lines of no one instance
    instance    TEXT NOT NULL CHECK (length(instance) <= 64),
    stream      TEXT NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
    at          TIMESTAMPTZ NOT NULL,
    request_id  TEXT CHECK (length(request_id) BETWEEN 1 AND 128),
    line        TEXT NOT NULL,
    -- octet_length(line) plus a fixed overhead per row, counted against
    -- the per-function byte limit
    bytes       INTEGER NOT NULL CHECK (bytes >= 0)
);
CREATE INDEX function_logs_function ON function_logs (function_id, id);
CREATE INDEX function_logs_request ON function_logs (function_id, request_id)
    WHERE request_id IS NOT NULL;
CREATE INDEX function_logs_at ON function_logs (at);

-- Bytes of log lines stored per function, kept with every insert and
-- deletion, so the byte limit is checked without a scan.
CREATE TABLE function_log_usage (
    function_id BIGINT PRIMARY KEY REFERENCES functions (id) ON DELETE CASCADE,
    bytes       BIGINT NOT NULL DEFAULT 0
);
