-- No planner statistics for the arrays of the chunk tables. ANALYZE
-- (autovacuum's, after every few dozen chunks) decompressed every sampled
-- chunk's arrays and hashed their elements to build statistics no query
-- uses (queries select chunks by their scalar columns): perf during
-- scripts/ingest-bench.sh put 45 % of PostgreSQL's CPU in analyze_rel, and
-- a sample grows with the day's partition. The arrays still get their
-- values' statistics-free defaults; the scalar columns keep theirs.
-- `cpub-control` sets the same on each new day partition of
-- execution_chunks (a partition does not inherit it).

ALTER TABLE execution_chunks
    ALTER COLUMN ats SET STATISTICS 0,
    ALTER COLUMN instances SET STATISTICS 0,
    ALTER COLUMN request_ids SET STATISTICS 0,
    ALTER COLUMN trace_ids SET STATISTICS 0,
    ALTER COLUMN methods SET STATISTICS 0,
    ALTER COLUMN statuses SET STATISTICS 0,
    ALTER COLUMN start_kinds SET STATISTICS 0,
    ALTER COLUMN queue_us SET STATISTICS 0,
    ALTER COLUMN start_us SET STATISTICS 0,
    ALTER COLUMN upstream_us SET STATISTICS 0,
    ALTER COLUMN total_us SET STATISTICS 0,
    ALTER COLUMN bytes_in SET STATISTICS 0,
    ALTER COLUMN bytes_out SET STATISTICS 0,
    ALTER COLUMN rejections SET STATISTICS 0;

-- request_ids (each id once per chunk) keeps its statistics: the planner
-- weighs the GIN index of `cpub logs --request-id` with them.
ALTER TABLE function_log_chunks
    ALTER COLUMN ats SET STATISTICS 0,
    ALTER COLUMN streams SET STATISTICS 0,
    ALTER COLUMN line_request_ids SET STATISTICS 0,
    ALTER COLUMN lines SET STATISTICS 0;
