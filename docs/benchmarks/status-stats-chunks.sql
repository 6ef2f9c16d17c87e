-- The records of docs/BENCHMARKS.md, "Status from the chunks' counts":
-- 1,000,000 records in 200 chunks of 5,000 over the last five and a half
-- minutes, in a database of their own with migrations 0001-0016 applied by
-- psql (and a user, the function `hello` and its deployment 1 for the
-- status's joins). Run with `psql "$DB" -f`. For the list of 5xx, the
-- 500s were made only in the newest two chunks (`CASE WHEN c >= 199 AND
-- i % 100 = 0`).
SET TIME ZONE 'UTC';
CREATE TABLE IF NOT EXISTS execution_chunks_bench PARTITION OF execution_chunks
    FOR VALUES FROM (date_trunc('day', now())) TO (date_trunc('day', now()) + interval '1 day');
SET default_toast_compression = lz4;
INSERT INTO execution_chunks
SELECT 'node1', 'hello', 1, 1, 5000,
       now() - interval '5 minutes 30 seconds' + c * interval '1500 milliseconds',
       now() - interval '5 minutes 30 seconds' + c * interval '1500 milliseconds' + interval '999800 microseconds',
       (SELECT string_agg(' ' || (i * 200)::text, '' ORDER BY i) FROM generate_series(0, 4999) i),
       (SELECT string_agg(' abc123def456', '') FROM generate_series(1, 5000)),
       (SELECT string_agg(' ' || md5(c::text || i::text), '' ORDER BY i) FROM generate_series(1, 5000) i),
       (SELECT string_agg(' =', '') FROM generate_series(1, 5000)),
       (SELECT string_agg(' GET', '') FROM generate_series(1, 5000)),
       (SELECT string_agg(CASE WHEN i % 100 = 0 THEN ' 500' ELSE ' 200' END, '' ORDER BY i) FROM generate_series(1, 5000) i),
       (SELECT string_agg(' warm', '') FROM generate_series(1, 5000)),
       (SELECT string_agg(' ' || (i % 7)::text, '' ORDER BY i) FROM generate_series(1, 5000) i),
       (SELECT string_agg(' 0', '') FROM generate_series(1, 5000)),
       (SELECT string_agg(' ' || (100 + (i * 7919) % 400)::text, '' ORDER BY i) FROM generate_series(1, 5000) i),
       (SELECT string_agg(' ' || (150 + (i * 7919) % 400)::text, '' ORDER BY i) FROM generate_series(1, 5000) i),
       (SELECT string_agg(' 0', '') FROM generate_series(1, 5000)),
       (SELECT string_agg(' 13', '') FROM generate_series(1, 5000)),
       (SELECT string_agg(' ', '') FROM generate_series(1, 5000))
FROM generate_series(1, 200) c;
UPDATE execution_chunks c SET errors = (SELECT count(*) FROM unnest(execution_chunk_field(c.statuses)::int[]) s WHERE s >= 500 OR s < 100);
ANALYZE execution_chunks;
