-- Function logs in chunks: one row per batch, function deployment and
-- instance, its lines in arrays compressed with lz4, instead of one row
-- per line. A row per line cost PostgreSQL about 6 µs a line (heap tuple,
-- WAL and four index entries); a chunk of 1,000 lines costs one row and its
-- compressed arrays, about 0.3 µs a line (docs/BENCHMARKS.md, "Log lines in
-- chunks"). Queries select chunks by their columns (function, version,
-- instance, request ids, newest time) and read the lines out of the arrays.
--
-- A line's id (the cursor of `cpub logs -f`) is its chunk's `first_id` plus
-- its position: ids are drawn for a whole batch under the ingest's advisory
-- lock, so a chunk's lines have consecutive ids and ids commit in order.

CREATE TABLE function_log_chunks (
    function_id BIGINT NOT NULL,
    -- the id of the chunk's first line: its lines are first_id .. first_id + n - 1
    first_id    BIGINT NOT NULL,
    -- at most a batch (wire::logs::MAX_BATCH_LINES): a query's lower
    -- bound on first_id counts on it
    n           INTEGER NOT NULL CHECK (n BETWEEN 1 AND 10000),
    version     INTEGER NOT NULL,
    node        TEXT NOT NULL CHECK (length(node) BETWEEN 1 AND 253),
    -- short container id; empty for platform lines of no one instance
    instance    TEXT NOT NULL CHECK (length(instance) <= 64),
    min_at      TIMESTAMPTZ NOT NULL,
    max_at      TIMESTAMPTZ NOT NULL,
    -- the lines' octet_length plus 64 each, counted against the
    -- per-function byte limit
    bytes       BIGINT NOT NULL CHECK (bytes >= 0),
    -- the request ids of the chunk's lines, each once: a query by request
    -- id opens only the chunks that hold it
    request_ids TEXT[] NOT NULL,
    -- one element per line, in id order
    ats         TIMESTAMPTZ[] NOT NULL,
    streams     TEXT[] NOT NULL,
    line_request_ids TEXT[] NOT NULL,
    lines       TEXT[] NOT NULL,
    PRIMARY KEY (function_id, first_id),
    CHECK (cardinality(ats) = n AND cardinality(streams) = n
           AND cardinality(line_request_ids) = n AND cardinality(lines) = n)
);
-- lz4 where the server has it (Debian's and most builds), else the default
-- (pglz: a few times the CPU, measured in docs/BENCHMARKS.md).
DO $$
BEGIN
    ALTER TABLE function_log_chunks
        ALTER COLUMN ats SET COMPRESSION lz4,
        ALTER COLUMN streams SET COMPRESSION lz4,
        ALTER COLUMN line_request_ids SET COMPRESSION lz4,
        ALTER COLUMN lines SET COMPRESSION lz4,
        ALTER COLUMN request_ids SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'no lz4 in this server: log chunks compressed with pglz';
END $$;
-- the age sweep
CREATE INDEX function_log_chunks_max_at ON function_log_chunks (max_at);
-- `cpub logs --request-id` (`request_ids @> ARRAY[id]`)
CREATE INDEX function_log_chunks_request_ids ON function_log_chunks USING gin (request_ids);

-- Line ids, drawn a batch at a time.
CREATE SEQUENCE function_log_ids AS BIGINT;
SELECT setval('function_log_ids', greatest(
    (SELECT last_value FROM function_logs_id_seq),
    (SELECT coalesce(max(id), 1) FROM function_logs)));

-- The lines stored so far, in chunks of consecutive ids of one function
-- deployment and instance (at most 1,000 lines), keeping their ids.
INSERT INTO function_log_chunks
    (function_id, first_id, n, version, node, instance, min_at, max_at, bytes,
     request_ids, ats, streams, line_request_ids, lines)
SELECT function_id, min(id), count(*)::int, version, node, instance, min(at), max(at),
       sum(bytes),
       coalesce(array_agg(DISTINCT request_id) FILTER (WHERE request_id IS NOT NULL), '{}'),
       array_agg(at ORDER BY id), array_agg(stream ORDER BY id),
       array_agg(request_id ORDER BY id), array_agg(line ORDER BY id)
FROM (SELECT l.*,
             id - row_number() OVER (PARTITION BY function_id, version, node, instance ORDER BY id) AS run
      FROM function_logs l) t
GROUP BY function_id, version, node, instance, run, id / 1000;

DROP TABLE function_logs;

-- One row per line, for reading with SQL (psql, tests); the control plane
-- reads the chunks.
CREATE VIEW function_log_lines AS
SELECT c.first_id + u.pos - 1 AS id, c.function_id, c.version, c.node, c.instance,
       u.stream, u.at, u.request_id, u.line
FROM function_log_chunks c,
     unnest(c.ats, c.streams, c.line_request_ids, c.lines)
         WITH ORDINALITY AS u(at, stream, request_id, line, pos);
