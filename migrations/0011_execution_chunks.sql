-- Execution records in chunks: one row per batch, function deployment and
-- day, its records in arrays compressed with lz4, instead of one row per
-- record. A row per record cost PostgreSQL about 4.5-7.5 µs (heap tuple,
-- WAL, the (function, at) index entry); a chunk costs one row for all the
-- records of a batch (at most 10,000; a proxy sends 5,000) of one function
-- deployment and day (docs/BENCHMARKS.md, "Execution records in chunks").
--
-- Partitioned by day (UTC) as before: every record of a chunk is of one
-- day, and the control plane creates a day's partition
-- (`execution_chunks_pYYYYMMDD`) when its first record arrives and drops
-- the partitions past the retention. The view `executions` shows one row
-- per record, with the columns of the table it replaces, and the chunk's
-- newest time (`chunk_max_at`) for queries to skip old chunks by.

CREATE TABLE execution_chunks (
    node          TEXT NOT NULL,
    function      TEXT NOT NULL,
    deployment_id BIGINT NOT NULL,
    version       INTEGER NOT NULL,
    n             INTEGER NOT NULL CHECK (n >= 1),
    min_at        TIMESTAMPTZ NOT NULL,
    max_at        TIMESTAMPTZ NOT NULL,
    -- one element per record, in the order the proxy sent them
    ats           TIMESTAMPTZ[] NOT NULL,
    instances     TEXT[] NOT NULL,
    request_ids   TEXT[] NOT NULL,
    trace_ids     TEXT[] NOT NULL,
    methods       TEXT[] NOT NULL,
    -- 0: the client went away before a status was chosen
    statuses      SMALLINT[] NOT NULL,
    -- 'cold', 'paused', 'warm'; NULL when the call got no instance
    start_kinds   TEXT[] NOT NULL,
    queue_us      BIGINT[] NOT NULL,
    start_us      BIGINT[] NOT NULL,
    upstream_us   BIGINT[] NOT NULL,
    total_us      BIGINT[] NOT NULL,
    bytes_in      BIGINT[] NOT NULL,
    bytes_out     BIGINT[] NOT NULL,
    -- why the proxy refused the call ('queue_full', ...)
    rejections    TEXT[] NOT NULL
) PARTITION BY RANGE (min_at);

-- lz4 where the server has it, else the default (pglz), as in 0010.
DO $$
BEGIN
    ALTER TABLE execution_chunks
        ALTER COLUMN ats SET COMPRESSION lz4,
        ALTER COLUMN instances SET COMPRESSION lz4,
        ALTER COLUMN request_ids SET COMPRESSION lz4,
        ALTER COLUMN trace_ids SET COMPRESSION lz4,
        ALTER COLUMN methods SET COMPRESSION lz4,
        ALTER COLUMN statuses SET COMPRESSION lz4,
        ALTER COLUMN start_kinds SET COMPRESSION lz4,
        ALTER COLUMN queue_us SET COMPRESSION lz4,
        ALTER COLUMN start_us SET COMPRESSION lz4,
        ALTER COLUMN upstream_us SET COMPRESSION lz4,
        ALTER COLUMN total_us SET COMPRESSION lz4,
        ALTER COLUMN bytes_in SET COMPRESSION lz4,
        ALTER COLUMN bytes_out SET COMPRESSION lz4,
        ALTER COLUMN rejections SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'no lz4 in this server: execution chunks compressed with pglz';
END $$;

CREATE INDEX execution_chunks_function_max_at ON execution_chunks (function, max_at DESC);

-- The records stored so far, a chunk per day, function deployment and node
-- (at most 5,000 records), each day into a partition of its own.
DO $$
DECLARE
    day DATE;
BEGIN
    FOR day IN SELECT DISTINCT (at AT TIME ZONE 'UTC')::date FROM executions LOOP
        EXECUTE format(
            'CREATE TABLE execution_chunks_p%s PARTITION OF execution_chunks '
            'FOR VALUES FROM (%L) TO (%L)',
            to_char(day, 'YYYYMMDD'), day::text || ' 00:00:00+00',
            (day + 1)::text || ' 00:00:00+00');
    END LOOP;
END $$;

INSERT INTO execution_chunks
SELECT node, function, deployment_id, version, count(*)::int, min(at), max(at),
       array_agg(at ORDER BY k), array_agg(instance ORDER BY k),
       array_agg(request_id ORDER BY k), array_agg(trace_id ORDER BY k),
       array_agg(method ORDER BY k), array_agg(status ORDER BY k),
       array_agg(start_kind ORDER BY k), array_agg(queue_us ORDER BY k),
       array_agg(start_us ORDER BY k), array_agg(upstream_us ORDER BY k),
       array_agg(total_us ORDER BY k), array_agg(bytes_in ORDER BY k),
       array_agg(bytes_out ORDER BY k), array_agg(rejection ORDER BY k)
FROM (SELECT e.*, row_number() OVER (
          PARTITION BY node, function, deployment_id, version, (at AT TIME ZONE 'UTC')::date
          ORDER BY at) AS k
      FROM executions e) t
GROUP BY node, function, deployment_id, version, (at AT TIME ZONE 'UTC')::date, (k - 1) / 5000;

DROP TABLE executions;

CREATE VIEW executions AS
SELECT r.at, c.node, c.function, c.deployment_id, c.version, r.instance, r.request_id,
       r.trace_id, r.method, r.status, r.start_kind, r.queue_us, r.start_us,
       r.upstream_us, r.total_us, r.bytes_in, r.bytes_out, r.rejection,
       c.max_at AS chunk_max_at
FROM execution_chunks c,
     unnest(c.ats, c.instances, c.request_ids, c.trace_ids, c.methods, c.statuses,
            c.start_kinds, c.queue_us, c.start_us, c.upstream_us, c.total_us,
            c.bytes_in, c.bytes_out, c.rejections)
         AS r(at, instance, request_id, trace_id, method, status, start_kind, queue_us,
              start_us, upstream_us, total_us, bytes_in, bytes_out, rejection);
