-- What `cpub status` and `cpub stats` read, without splitting what they
-- do not use. Both read the view `executions`, whose `unnest` splits all
-- fourteen fields of every chunk in the window (migration 0015) although
-- they use two and seven of them: with a million records in the window,
-- `cpub status`'s count took 3.0-3.3 s and `cpub stats --by minute`
-- 6.1-9.3 s (docs/BENCHMARKS.md, "Status from the chunks' counts").
--
-- `errors`: how many of the chunk's records count as errors in `cpub
-- status` (a status of 500 or more, or below 100: no answer), written by
-- the control plane with the chunk. The status counts a chunk wholly in
-- its window by `n` and `errors` and splits only the chunks that straddle
-- its start. NULL in chunks stored before this migration (or by a control
-- plane from before it that is still running during an upgrade): those
-- are split, as before. Adding a column without a default or a constraint
-- neither rewrites nor scans the table. `cpub executions --status 5xx`
-- skips chunks without errors by it.
ALTER TABLE execution_chunks ADD COLUMN errors INTEGER;

-- The chunks of the last minutes, of every function (the status): the
-- index `(function, max_at DESC)` serves one function's. One entry per
-- chunk, not per record; building it reads each partition once, under a
-- lock that holds ingest back meanwhile.
CREATE INDEX execution_chunks_max_at ON execution_chunks (max_at);

-- The view of migration 0015 with the chunk's `errors` as its last column.
CREATE OR REPLACE VIEW executions AS
SELECT c.min_at + r.at_offset_us * interval '1 microsecond' AS at,
       c.node, c.function, c.deployment_id, c.version, r.instance, r.request_id,
       CASE WHEN r.trace_id = '=' THEN r.request_id ELSE r.trace_id END AS trace_id,
       r.method, r.status, r.start_kind, r.queue_us, r.start_us,
       r.upstream_us, r.total_us, r.bytes_in, r.bytes_out, r.rejection,
       c.max_at AS chunk_max_at, c.errors AS chunk_errors
FROM execution_chunks c,
     unnest(execution_chunk_field(c.at_offsets_us)::bigint[],
            execution_chunk_field(c.instances),
            execution_chunk_field(c.request_ids),
            execution_chunk_field(c.trace_ids),
            execution_chunk_field(c.methods),
            execution_chunk_field(c.statuses)::smallint[],
            execution_chunk_field(c.start_kinds),
            execution_chunk_field(c.queue_us)::bigint[],
            execution_chunk_field(c.start_us)::bigint[],
            execution_chunk_field(c.upstream_us)::bigint[],
            execution_chunk_field(c.total_us)::bigint[],
            execution_chunk_field(c.bytes_in)::bigint[],
            execution_chunk_field(c.bytes_out)::bigint[],
            execution_chunk_field(c.rejections))
         AS r(at_offset_us, instance, request_id, trace_id, method, status, start_kind,
              queue_us, start_us, upstream_us, total_us, bytes_in, bytes_out, rejection);

-- The view `executions` with only the fields `cpub stats` uses (and the
-- status, for the chunks it splits): the same rows and, for these columns,
-- the same values; and the chunk's first time and `errors`.
CREATE VIEW execution_outcomes AS
SELECT c.min_at + r.at_offset_us * interval '1 microsecond' AS at,
       c.function, c.deployment_id, r.status, r.start_kind, r.queue_us,
       r.start_us, r.total_us, r.rejection, c.min_at AS chunk_min_at,
       c.max_at AS chunk_max_at, c.errors AS chunk_errors
FROM execution_chunks c,
     unnest(execution_chunk_field(c.at_offsets_us)::bigint[],
            execution_chunk_field(c.statuses)::smallint[],
            execution_chunk_field(c.start_kinds),
            execution_chunk_field(c.queue_us)::bigint[],
            execution_chunk_field(c.start_us)::bigint[],
            execution_chunk_field(c.total_us)::bigint[],
            execution_chunk_field(c.rejections))
         AS r(at_offset_us, status, start_kind, queue_us, start_us, total_us, rejection);
