-- A call's trace id is its request id whenever the proxy made both (it
-- makes the trace id of a new `traceparent` from the request id, see
-- proxy/src/trace.rs): the same 32 hex digits were stored twice per record,
-- about a third of a chunk's compressed bytes. From this migration on the
-- control plane stores such a trace id as '' (never a valid trace id, so
-- no chunk stored before holds one), and the view `executions` shows the
-- request id in its place. A record without a trace id stays NULL; a trace
-- id of its own (from the caller's `traceparent`) is stored as it is.

CREATE OR REPLACE VIEW executions AS
SELECT r.at, c.node, c.function, c.deployment_id, c.version, r.instance, r.request_id,
       CASE WHEN r.trace_id = '' THEN r.request_id ELSE r.trace_id END AS trace_id,
       r.method, r.status, r.start_kind, r.queue_us, r.start_us,
       r.upstream_us, r.total_us, r.bytes_in, r.bytes_out, r.rejection,
       c.max_at AS chunk_max_at
FROM execution_chunks c,
     unnest(c.ats, c.instances, c.request_ids, c.trace_ids, c.methods, c.statuses,
            c.start_kinds, c.queue_us, c.start_us, c.upstream_us, c.total_us,
            c.bytes_in, c.bytes_out, c.rejections)
         AS r(at, instance, request_id, trace_id, method, status, start_kind, queue_us,
              start_us, upstream_us, total_us, bytes_in, bytes_out, rejection);
