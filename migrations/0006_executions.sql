-- Execution records: one row per call of a function through a proxy, posted
-- in batches (POST /api/v1/executions) and written with COPY. Partitioned by
-- day (UTC): the control plane creates a day's partition when a record of
-- that day arrives (`executions_pYYYYMMDD`) and drops the partitions past
-- the retention (CPUB_EXECUTIONS_RETENTION_DAYS). Rows name the function and
-- its deployment; the views only show rows whose deployment still belongs
-- to the function, so a deleted function's rows are never shown again and
-- leave with their partition.

CREATE TABLE executions (
    at            TIMESTAMPTZ NOT NULL,
    node          TEXT NOT NULL,
    function      TEXT NOT NULL,
    deployment_id BIGINT NOT NULL,
    version       INTEGER NOT NULL,
    instance      TEXT,
    request_id    TEXT NOT NULL,
    trace_id      TEXT,
    method        TEXT NOT NULL,
    -- 0: the client went away before a status was chosen
    status        SMALLINT NOT NULL,
    -- 'cold', 'paused', 'warm'; NULL when the call got no instance
    start_kind    TEXT,
    queue_us      BIGINT NOT NULL,
    start_us      BIGINT NOT NULL,
    upstream_us   BIGINT NOT NULL,
    total_us      BIGINT NOT NULL,
    bytes_in      BIGINT NOT NULL,
    bytes_out     BIGINT NOT NULL,
    -- why the proxy refused the call ('queue_full', ...)
    rejection     TEXT
) PARTITION BY RANGE (at);

CREATE INDEX executions_function_at ON executions (function, at DESC);

-- Batches stored, so that a batch a proxy sends again (its answer was lost)
-- is stored once. Pruned with the retention.
CREATE TABLE execution_batches (
    node  TEXT NOT NULL,
    batch TEXT NOT NULL CHECK (length(batch) BETWEEN 1 AND 128),
    at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node, batch)
);
