-- Log batches stored, so that a batch a proxy sends again (the answer to
-- its first copy was lost, e.g. a client timeout) is stored once. The id is
-- unique per proxy process and batch; the row is written in the batch's
-- own transaction, before its lines. Batches without an id (proxies from
-- before this migration) are stored as they come. Ids are forgotten a day
-- after they were stored (`control/src/logs.rs`, `BATCH_ID_KEEP`), by the
-- log retention sweep, a thousand rows at a time by `at`.
CREATE TABLE log_batches (
    node  TEXT NOT NULL,
    batch TEXT NOT NULL CHECK (length(batch) BETWEEN 1 AND 128),
    at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node, batch)
);

CREATE INDEX log_batches_at ON log_batches (at);
