-- What `cpub stats` needs of a chunk, stored with it: a window's figures
-- then add up the chunks it holds whole instead of splitting every record
-- (about 1.9 s of one backend per million records: a busy function's day
-- took minutes and was refused at the read's time limit; docs/BENCHMARKS.md,
-- "Stats from the chunks' figures"). Only the chunks a window's start or a
-- bucket's edge cuts through are split, as before.
--
-- Counts of the chunk's records by answer class (2xx, 3xx, 4xx, 5xx, and
-- no answer: below 200 or above 599), refused ones, cold and paused starts,
-- and those with a start kind (the queue mean's divisor); the sums of the
-- cold starts' start times and of those records' queue times (float8: a
-- sum of a hostile node's numbers cannot overflow), the longest queue
-- time; and the total times' buckets (control's `histogram.rs`: 16 per
-- power of two) as two spaced texts of the same length, the buckets in
-- order and their counts (migration 0015's form).
--
-- NULL in chunks stored before this migration, or by a control plane from
-- before it during an upgrade: those are split, as before. Adding columns
-- without a default neither rewrites nor scans the table.
ALTER TABLE execution_chunks
    ADD COLUMN n_2xx integer,
    ADD COLUMN n_3xx integer,
    ADD COLUMN n_4xx integer,
    ADD COLUMN n_5xx integer,
    ADD COLUMN n_no_answer integer,
    ADD COLUMN n_rejected integer,
    ADD COLUMN n_cold integer,
    ADD COLUMN n_paused integer,
    ADD COLUMN n_started integer,
    ADD COLUMN cold_us_sum float8,
    ADD COLUMN queue_us_sum float8,
    ADD COLUMN queue_us_max bigint,
    ADD COLUMN total_buckets text,
    ADD COLUMN total_counts text;

-- `histogram::bucket` in SQL, for the records of split chunks: below 32 a
-- value is its bucket; above, with e the highest set bit, 16 × (e − 3) plus
-- the four bits after it. `length(ltrim(bits, '0'))` is e + 1, exactly.
CREATE FUNCTION execution_total_bucket(us bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN us < 32 THEN us::integer
           ELSE 16 * (length(ltrim(us::bit(64)::text, '0')) - 4)
                + ((us >> (length(ltrim(us::bit(64)::text, '0')) - 5)) & 15)::integer
           END
$$;

-- The view of migration 0016 with whether the chunk has its figures (the
-- stats split only the records of chunks without, or cut through).
CREATE OR REPLACE VIEW execution_outcomes AS
SELECT c.min_at + r.at_offset_us * interval '1 microsecond' AS at,
       c.function, c.deployment_id, r.status, r.start_kind, r.queue_us,
       r.start_us, r.total_us, r.rejection, c.min_at AS chunk_min_at,
       c.max_at AS chunk_max_at, c.errors AS chunk_errors,
       c.n_2xx IS NOT NULL AS chunk_figures
FROM execution_chunks c,
     unnest(execution_chunk_field(c.at_offsets_us)::bigint[],
            execution_chunk_field(c.statuses)::smallint[],
            execution_chunk_field(c.start_kinds),
            execution_chunk_field(c.queue_us)::bigint[],
            execution_chunk_field(c.start_us)::bigint[],
            execution_chunk_field(c.total_us)::bigint[],
            execution_chunk_field(c.rejections))
         AS r(at_offset_us, status, start_kind, queue_us, start_us, total_us, rejection);
