-- The last crash of each function on each proxy node, as the node reports
-- it (POST /api/v1/functions/{name}/crashes); shown by `cpub describe`.
-- Rows go with their function (and deployment).

CREATE TABLE function_crashes (
    function_id   BIGINT NOT NULL REFERENCES functions (id) ON DELETE CASCADE,
    node          TEXT NOT NULL CHECK (length(node) BETWEEN 1 AND 253),
    deployment_id BIGINT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    exit_code     INTEGER,
    -- the tail of the instance's output (at most 4 KiB)
    output        TEXT NOT NULL,
    during_start  BOOLEAN NOT NULL,
    -- crashes the node reported for this function so far
    crashes       BIGINT NOT NULL CHECK (crashes > 0),
    at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (function_id, node)
);
