-- What `cpub status` and `cpub stats` read, without splitting what they
-- do not use. Both read the view `executions`, whose `unnest` splits all
-- fourteen fields of every chunk in the window (migration 0015) although
-- they use two and seven of them: a million records in the window took
-- `cpub status`'s count 2.9 s, and `cpub stats` 3.3-3.5 s
-- (docs/BENCHMARKS.md, "Status from the chunks' counts").
--
-- `errors`: how many of the chunk's records count as errors in `cpub
-- status` (a status of 500 or more, or below 100: no answer), written by
-- the control plane with the chunk. The status counts a chunk wholly in
-- its window by `n` and `errors` and splits only the one or two chunks per
-- function that straddle its start. NULL in chunks stored before this
-- migration (or by an older control plane during an upgrade): those are
-- split, as before. Adding a column without a default rewrites nothing.
ALTER TABLE execution_chunks
    ADD COLUMN errors INTEGER CHECK (errors BETWEEN 0 AND n);

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
