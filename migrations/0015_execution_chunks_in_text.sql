-- A chunk's records as one text per field instead of one array element per
-- record and field. PostgreSQL received fourteen array elements a record,
-- each through its type's receive function (`array_recv` calls it once per
-- element), and that was most of what it spent on a record: COPY of 200,000
-- records in 40 chunks took 165 ms as arrays and 55 ms as the same values
-- in text, side by side (docs/BENCHMARKS.md, "Records as text per field").
-- Reading them back costs more instead (the view parses the numbers): about
-- 1.7 times the time per record read; records are written on every call
-- and read when someone asks.
--
-- Each field column holds the chunk's values in the order the proxy sent
-- them, each after one space, a NULL as nothing: ' a  c' is a, NULL, c. No
-- value holds a space (the control plane takes visible ASCII only), so
-- `execution_chunk_field` splits a column back into its values, and the
-- leading space keeps a chunk of one NULL (' ') apart from a chunk of none.
-- Numbers are decimal; a record's time is its microseconds after the
-- chunk's `min_at` (`at_offsets_us`); a trace id that is the record's
-- request id is '=' (never a trace id: migration 0013 stored '').
--
-- The view `executions` shows the same columns as before, of the same
-- types; the chunks stored so far are rewritten in place, in this one
-- transaction: the control plane starts serving when it is done (proxies
-- keep their records meanwhile, in memory and then in their spool file).

-- Not STRICT: a STRICT SQL function over a call that is not (this one)
-- is not inlined, and the view calls it fourteen times per chunk.
CREATE FUNCTION execution_chunk_field(field text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (string_to_array(field, ' ', ''))[2:] $$;

DROP VIEW executions;

-- The rewrite of the two fields that change form, as functions: an ALTER's
-- USING expression may not hold a subquery.
CREATE FUNCTION pg_temp.offsets_us(ats timestamptz[], base timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT string_agg(' ' || ((extract(epoch FROM a) * 1000000)::bigint
                              - (extract(epoch FROM base) * 1000000)::bigint)::text, '' ORDER BY o)
    FROM unnest(ats) WITH ORDINALITY AS u(a, o)
$$;

CREATE FUNCTION pg_temp.traces(ids text[]) RETURNS text
LANGUAGE sql IMMUTABLE
AS $$
    SELECT string_agg(' ' || coalesce(CASE WHEN t = '' THEN '=' ELSE t END, ''), '' ORDER BY o)
    FROM unnest(ids) WITH ORDINALITY AS u(t, o)
$$;

ALTER TABLE execution_chunks RENAME COLUMN ats TO at_offsets_us;

-- The rewrite compresses with the default method (a column of a new type
-- starts with it), so lz4 where the server has it, for this transaction.
DO $$
BEGIN
    PERFORM set_config('default_toast_compression', 'lz4', true);
EXCEPTION WHEN invalid_parameter_value OR feature_not_supported THEN
    RAISE NOTICE 'no lz4 in this server: execution chunks compressed with pglz';
END $$;

ALTER TABLE execution_chunks
    ALTER COLUMN at_offsets_us TYPE text USING pg_temp.offsets_us(at_offsets_us, min_at),
    ALTER COLUMN instances TYPE text USING ' ' || array_to_string(instances, ' ', ''),
    ALTER COLUMN request_ids TYPE text USING ' ' || array_to_string(request_ids, ' ', ''),
    ALTER COLUMN trace_ids TYPE text USING pg_temp.traces(trace_ids),
    ALTER COLUMN methods TYPE text USING ' ' || array_to_string(methods, ' ', ''),
    ALTER COLUMN statuses TYPE text USING ' ' || array_to_string(statuses, ' '),
    ALTER COLUMN start_kinds TYPE text USING ' ' || array_to_string(start_kinds, ' ', ''),
    ALTER COLUMN queue_us TYPE text USING ' ' || array_to_string(queue_us, ' '),
    ALTER COLUMN start_us TYPE text USING ' ' || array_to_string(start_us, ' '),
    ALTER COLUMN upstream_us TYPE text USING ' ' || array_to_string(upstream_us, ' '),
    ALTER COLUMN total_us TYPE text USING ' ' || array_to_string(total_us, ' '),
    ALTER COLUMN bytes_in TYPE text USING ' ' || array_to_string(bytes_in, ' '),
    ALTER COLUMN bytes_out TYPE text USING ' ' || array_to_string(bytes_out, ' '),
    ALTER COLUMN rejections TYPE text USING ' ' || array_to_string(rejections, ' ', '');

DROP FUNCTION pg_temp.offsets_us(timestamptz[], timestamptz);
DROP FUNCTION pg_temp.traces(text[]);

-- lz4 where the server has it (as 0011; the new type's column starts with
-- the default, and SET COMPRESSION does not reach the partitions: each is
-- set, and a partition made later copies the parent's), and no planner
-- statistics for the field columns (as 0012: ANALYZE would read every
-- sampled chunk's fields for statistics no query uses).
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT 'execution_chunks'::regclass
             UNION ALL
             SELECT inhrelid::regclass FROM pg_inherits
             WHERE inhparent = 'execution_chunks'::regclass LOOP
        EXECUTE format(
            'ALTER TABLE %s '
            'ALTER COLUMN at_offsets_us SET COMPRESSION lz4, '
            'ALTER COLUMN instances SET COMPRESSION lz4, '
            'ALTER COLUMN request_ids SET COMPRESSION lz4, '
            'ALTER COLUMN trace_ids SET COMPRESSION lz4, '
            'ALTER COLUMN methods SET COMPRESSION lz4, '
            'ALTER COLUMN statuses SET COMPRESSION lz4, '
            'ALTER COLUMN start_kinds SET COMPRESSION lz4, '
            'ALTER COLUMN queue_us SET COMPRESSION lz4, '
            'ALTER COLUMN start_us SET COMPRESSION lz4, '
            'ALTER COLUMN upstream_us SET COMPRESSION lz4, '
            'ALTER COLUMN total_us SET COMPRESSION lz4, '
            'ALTER COLUMN bytes_in SET COMPRESSION lz4, '
            'ALTER COLUMN bytes_out SET COMPRESSION lz4, '
            'ALTER COLUMN rejections SET COMPRESSION lz4', t);
    END LOOP;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'no lz4 in this server: execution chunks compressed with pglz';
END $$;

ALTER TABLE execution_chunks
    ALTER COLUMN at_offsets_us SET STATISTICS 0,
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

CREATE VIEW executions AS
SELECT c.min_at + r.at_offset_us * interval '1 microsecond' AS at,
       c.node, c.function, c.deployment_id, c.version, r.instance, r.request_id,
       CASE WHEN r.trace_id = '=' THEN r.request_id ELSE r.trace_id END AS trace_id,
       r.method, r.status, r.start_kind, r.queue_us, r.start_us,
       r.upstream_us, r.total_us, r.bytes_in, r.bytes_out, r.rejection,
       c.max_at AS chunk_max_at
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
