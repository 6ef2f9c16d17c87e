-- Where the last line stored from each log file ends, per node, instance,
-- file and stream, so that lines a proxy reads again are stored once. A
-- proxy saves how far it shipped at most once a second; killed, it leaves
-- the next one to read again up to a second of lines the control plane
-- already stored (four runs of `tests/logs.rs` stored 11-90 of 600 lines
-- twice). Proxies since this migration send each line's end in its file
-- (`LogEntry::end`) and which file it is (`LogGroup::file`: its inode and
-- its first record's time; an inode alone is reused by a later file after
-- conmon's rotation frees it). A line that ends at or before `end_offset`
-- of its stream is not stored again: a stream's lines come in file order,
-- while the two streams' lines interleave (a line held back unfinished on
-- one ends before lines of the other stored meanwhile). Written in the
-- batch's transaction, under the log ingest lock; a row's time is set when
-- a batch moves it, and the log retention sweep removes rows older than
-- the lines' retention (`control/src/logs.rs`; a later kill may then store
-- a stream's lines twice, as before).
CREATE TABLE log_positions (
    node       TEXT NOT NULL,
    instance   TEXT NOT NULL,
    file       TEXT NOT NULL,
    stream     TEXT NOT NULL,
    end_offset BIGINT NOT NULL CHECK (end_offset >= 0),
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (node, instance, file, stream)
);

CREATE INDEX log_positions_at ON log_positions (at);
