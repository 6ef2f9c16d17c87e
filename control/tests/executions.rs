//! Execution record ingest (`POST /api/v1/executions`) against a real
//! PostgreSQL: the real router (`Router::oneshot`, no socket) over a fresh
//! database per test (`CPUB_TEST_DATABASE_URL`, the harness of
//! `tests/support`, shared with `tests/api.rs`; no Podman). What the binary
//! COPY writes is read back through `GET …/executions` and SQL: every field
//! as sent, a full batch whole, a resent batch once, a refused batch not at
//! all; the chunks stored before migration 0015 read the same after it; and
//! `GET /status` and `…/stats` count what the view `executions` shows; and
//! the reads callers ask for are bounded (a time limit, permits, a caller
//! who hangs up).
//!
//! Over 600 lines: one test per way a batch is stored or refused, each with
//! the records it needs; splitting them would split the `TestApp` helpers
//! they share.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use containerpub_wire::executions::{
    ExecutionBatch, ExecutionInfo, ExecutionRecord, IngestResult, MAX_BATCH_RECORDS, StartKind,
    binary,
};
use http_body_util::BodyExt;
use sqlx::PgPool;
use tower::ServiceExt;

mod support;

use support::{TOKEN, TestApp, app};

/// What these tests ask of the application.
impl TestApp {
    async fn send(&self, method: &str, uri: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        self.send_as(method, uri, "application/json", body).await
    }

    async fn send_as(
        &self,
        method: &str,
        uri: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, "control.test")
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }

    async fn ingest(&self, batch: &ExecutionBatch) -> (StatusCode, Vec<u8>) {
        self.send(
            "POST",
            "/api/v1/executions",
            serde_json::to_vec(batch).unwrap(),
        )
        .await
    }

    /// Posts `batch` in the binary form (what proxies send).
    async fn ingest_binary(&self, batch: &ExecutionBatch) -> (StatusCode, Vec<u8>) {
        self.send_as(
            "POST",
            "/api/v1/executions",
            binary::CONTENT_TYPE,
            encode(batch),
        )
        .await
    }

    fn db(&self) -> &PgPool {
        &self.state.db
    }
}

fn encode(batch: &ExecutionBatch) -> Vec<u8> {
    let mut enc = binary::Encoder::default();
    for r in &batch.records {
        assert!(enc.push(&r.borrowed()));
    }
    enc.finish(&batch.node, &batch.batch)
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn record(i: usize, function: &str, deployment_id: i64) -> ExecutionRecord {
    ExecutionRecord {
        at_us: now_us() - 1_000_000 + i as i64,
        function: function.into(),
        deployment_id,
        version: 1,
        instance: Some("0123456789ab".into()),
        request_id: format!("req-{i}"),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
        method: "GET".into(),
        status: 200,
        start: Some(StartKind::Warm),
        queue_us: 1,
        start_us: 0,
        upstream_us: 300,
        total_us: 400,
        bytes_in: 80,
        bytes_out: 120,
        rejection: None,
    }
}

/// A function row and an active deployment of it (so the listing, the
/// status and the stats count its records); the deployment's id.
async fn real_function(app: &TestApp, name: &str) -> i64 {
    sqlx::query("INSERT INTO functions (name, owner_id) SELECT $1, min(id) FROM users")
        .bind(name)
        .execute(app.db())
        .await
        .unwrap();
    let (fid,): (i64,) = sqlx::query_as("SELECT id FROM functions WHERE name = $1")
        .bind(name)
        .fetch_one(app.db())
        .await
        .unwrap();
    let (did,): (i64,) = sqlx::query_as(
        "INSERT INTO deployments (function_id, version, digest, artifact, config, status) \
         VALUES ($1, 1, 'sha256:0', '/nonexistent', '{}', 'active') RETURNING id",
    )
    .bind(fid)
    .fetch_one(app.db())
    .await
    .unwrap();
    sqlx::query("UPDATE functions SET active_deployment_id = $1 WHERE id = $2")
        .bind(did)
        .bind(fid)
        .execute(app.db())
        .await
        .unwrap();
    did
}

/// The records in each chunk row of `function`, most first.
async fn chunk_sizes(db: &PgPool, function: &str) -> Vec<i32> {
    let sizes: Vec<(i32,)> =
        sqlx::query_as("SELECT n FROM execution_chunks WHERE function = $1 ORDER BY n DESC")
            .bind(function)
            .fetch_all(db)
            .await
            .unwrap();
    sizes.into_iter().map(|(n,)| n).collect()
}

async fn count(db: &PgPool, function: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM executions WHERE function = $1")
        .bind(function)
        .fetch_one(db)
        .await
        .unwrap();
    n
}

#[tokio::test]
async fn records_are_stored_as_sent_and_a_resent_batch_once() {
    let app = app().await;
    // A real function, so the listing shows its records.
    let did = real_function(&app, "exact").await;
    // Every field that has a NULL, an escape in JSON or an edge value.
    let mut odd = record(0, "exact", did);
    odd.at_us = now_us() - 5_000_000 + 7;
    odd.method = "G\\E\"T\t".replace('\t', "~");
    odd.instance = None;
    odd.trace_id = None;
    odd.start = None;
    odd.status = 0;
    odd.rejection = Some("queue_full".into());
    odd.bytes_out = i64::MAX as u64;
    odd.total_us = 86_400_000_000;
    let mut cold = record(1, "exact", did);
    cold.start = Some(StartKind::Cold);
    cold.status = 503;
    cold.request_id = "rid-with.dots_and-dashes".into();
    let batch = ExecutionBatch {
        node: "node-a".into(),
        batch: "boot-1".into(),
        records: vec![odd.clone(), cold.clone()],
    };
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.skipped, r.duplicate), (2, 0, false));

    let (status, body) = app
        .send(
            "GET",
            "/api/v1/functions/exact/executions?since=1h",
            Vec::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let listed: Vec<ExecutionInfo> = serde_json::from_slice(&body).unwrap();
    // Newest first: `cold` (1 s ago), then `odd` (5 s ago).
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].record, cold);
    assert_eq!(listed[1].record, odd);
    assert_eq!(listed[1].node, "node-a");
    assert_eq!(listed[1].at.timestamp_micros(), odd.at_us);

    // Sent again (its answer was lost): stored once.
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK);
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.duplicate), (0, true));
    assert_eq!(count(app.db(), "exact").await, 2);

    // Older calls: the listing's window (a minute back, growing) reaches
    // them, and a page is the newest records within `since`.
    let mut older = Vec::new();
    for (i, ago_s) in [(2, 20 * 60), (3, 3 * 3600)] {
        let mut r = record(i, "exact", did);
        r.at_us = now_us() - ago_s * 1_000_000;
        older.push(r);
    }
    let (status, _) = app
        .ingest(&ExecutionBatch {
            node: "node-b".into(),
            batch: "boot-2".into(),
            records: older.clone(),
        })
        .await;
    assert_eq!(status, StatusCode::OK);
    let app = &app;
    let list = |query: &'static str| async move {
        let (status, body) = app
            .send(
                "GET",
                &format!("/api/v1/functions/exact/executions?{query}"),
                Vec::new(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice::<Vec<ExecutionInfo>>(&body)
            .unwrap()
            .into_iter()
            .map(|e| e.record.request_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        list("since=1h").await,
        ["rid-with.dots_and-dashes", "req-0", "req-2"]
    );
    assert_eq!(
        list("since=6h").await,
        ["rid-with.dots_and-dashes", "req-0", "req-2", "req-3"]
    );
    assert_eq!(list("since=6h&limit=1").await, ["rid-with.dots_and-dashes"]);
    assert_eq!(
        list("since=6h&limit=3").await,
        ["rid-with.dots_and-dashes", "req-0", "req-2"]
    );
    assert_eq!(list("since=6h&status=2xx").await, ["req-2", "req-3"]);
}

#[tokio::test]
async fn a_full_batch_is_stored_whole_and_a_bad_one_not_at_all() {
    let app = app().await;
    let records: Vec<ExecutionRecord> = (0..MAX_BATCH_RECORDS)
        .map(|i| record(i, "many", 9))
        .collect();
    let batch = ExecutionBatch {
        node: "node-b".into(),
        batch: "boot-7".into(),
        records,
    };
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!(r.stored, MAX_BATCH_RECORDS as u64);
    assert_eq!(count(app.db(), "many").await, MAX_BATCH_RECORDS as i64);
    let (distinct,): (i64,) =
        sqlx::query_as("SELECT count(DISTINCT request_id) FROM executions WHERE function = 'many'")
            .fetch_one(app.db())
            .await
            .unwrap();
    assert_eq!(distinct, MAX_BATCH_RECORDS as i64);
    // A chunk row holds up to 5,000 records, also when the records of two
    // functions alternate.
    assert_eq!(chunk_sizes(app.db(), "many").await, [5_000, 5_000]);
    let mixed = ExecutionBatch {
        node: "node-b".into(),
        batch: "boot-mixed".into(),
        records: (0..7_000)
            .map(|i| record(i, if i % 7 == 3 { "mixed-b" } else { "mixed-a" }, 9))
            .collect(),
    };
    let (status, body) = app.ingest_binary(&mixed).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(chunk_sizes(app.db(), "mixed-a").await, [5_000, 1_000]);
    assert_eq!(chunk_sizes(app.db(), "mixed-b").await, [1_000]);
    assert_eq!(count(app.db(), "mixed-a").await, 6_000);

    // One more record than a batch holds: refused, nothing stored.
    let mut over = batch.clone();
    over.batch = "boot-8".into();
    over.records.push(record(0, "over", 9));
    let (status, _) = app.ingest(&over).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(count(app.db(), "over").await, 0);

    // A bad record late in a batch: 400 naming it, nothing of the batch
    // stored, and the batch id not used up (the fixed batch goes in).
    let mut bad = ExecutionBatch {
        node: "node-b".into(),
        batch: "boot-9".into(),
        records: (0..100).map(|i| record(i, "bad", 9)).collect(),
    };
    bad.records[99].trace_id = Some("NOT-HEX".into());
    let (status, body) = app.ingest(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "records[99].trace_id", "{e}");
    assert_eq!(count(app.db(), "bad").await, 0);
    bad.records[99].trace_id = None;
    // A function name that is not one, after records with a good one: the
    // name is checked though the record before had a valid one.
    bad.records[50].function = "Not A Name".into();
    let (status, body) = app.ingest_binary(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "records[50].function", "{e}");
    assert_eq!(count(app.db(), "bad").await, 0);
    bad.records[50].function = "bad".into();
    let (status, _) = app.ingest(&bad).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(count(app.db(), "bad").await, 100);
}

#[tokio::test]
async fn binary_batches_are_stored_as_json_ones_and_bad_ones_not_at_all() {
    let app = app().await;
    let mut records: Vec<ExecutionRecord> = (0..300)
        .map(|i| {
            record(
                i,
                if i % 2 == 0 { "bin-a" } else { "bin-b" },
                20 + (i % 2) as i64,
            )
        })
        .collect();
    records[7].instance = None;
    records[7].trace_id = None;
    records[7].start = None;
    records[7].rejection = Some("queue_full".into());
    records[7].status = 429;
    let batch = ExecutionBatch {
        node: "node-c".into(),
        batch: "boot-20".into(),
        records: records.clone(),
    };
    // The media type in another case, with a parameter: still binary.
    let (status, body) = app
        .send_as(
            "POST",
            "/api/v1/executions",
            "Application/VND.containerpub.executions-v1 ; q=1",
            encode(&batch),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.duplicate), (300, false));
    // The same batch id again, as JSON: one batch, stored once.
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK);
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.duplicate), (0, true));
    // Every field as sent, read back through the view.
    type Row = (
        String,
        i64,
        Option<String>,
        String,
        Option<String>,
        i16,
        Option<String>,
        i64,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
            "SELECT function, deployment_id, instance, request_id, trace_id, status, start_kind, \
             total_us, rejection FROM executions WHERE node = 'node-c' ORDER BY request_id COLLATE \"C\"",
        )
        .fetch_all(app.db())
        .await
        .unwrap();
    assert_eq!(rows.len(), 300);
    let mut sent = records.clone();
    sent.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    for (row, r) in rows.iter().zip(&sent) {
        assert_eq!(row.0, r.function);
        assert_eq!(row.1, r.deployment_id);
        assert_eq!(row.2, r.instance);
        assert_eq!(row.3, r.request_id);
        assert_eq!(row.4, r.trace_id);
        assert_eq!(row.5, r.status as i16);
        assert_eq!(row.6.as_deref(), r.start.map(StartKind::as_str));
        assert_eq!(row.7, r.total_us as i64);
        assert_eq!(row.8, r.rejection);
    }

    // A body cut short, or with a bad field: 400 naming where, nothing
    // stored, the batch id not used up.
    let mut bad = ExecutionBatch {
        node: "node-c".into(),
        batch: "boot-21".into(),
        records: (0..50).map(|i| record(i, "bin-bad", 30)).collect(),
    };
    let whole = encode(&bad);
    let (status, body) = app
        .send_as(
            "POST",
            "/api/v1/executions",
            binary::CONTENT_TYPE,
            whole[..whole.len() - 3].to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "body.records[49].bytes_out", "{e}");
    bad.records[49].method = "G ET".into();
    let (status, body) = app.ingest_binary(&bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "records[49].method", "{e}");
    // Binary sent as JSON: the answer the proxy takes for a control plane
    // without the binary form (`refused_as_json` in
    // proxy/src/executions.rs: 400, field `body`, "not an execution
    // batch…"), as an older control plane gives it.
    let (status, body) = app
        .send_as(
            "POST",
            "/api/v1/executions",
            "application/json",
            encode(&bad),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "body", "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .starts_with("not an execution batch"),
        "{e}"
    );
    // JSON sent as binary: refused by name.
    let (status, body) = app
        .send_as(
            "POST",
            "/api/v1/executions",
            binary::CONTENT_TYPE,
            serde_json::to_vec(&bad).unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "body.magic", "{e}");
    assert_eq!(count(app.db(), "bin-bad").await, 0);
    bad.records[49].method = "GET".into();
    let (status, _) = app.ingest_binary(&bad).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(count(app.db(), "bin-bad").await, 50);
}

#[tokio::test]
async fn a_trace_id_equal_to_the_request_id_is_stored_once() {
    let app = app().await;
    let same = "0af7651916cd43dd8448eb211c80319c";
    let mut records: Vec<ExecutionRecord> = (0..3).map(|i| record(i, "traced", 40)).collect();
    // The proxy made both ids: the trace id is the request id.
    records[0].request_id = same.into();
    records[0].trace_id = Some(same.into());
    // The caller's own traceparent: a trace id of its own.
    records[1].request_id = "4bf92f3577b34da6a3ce929d0e0e4737".into();
    // No trace id at all.
    records[2].trace_id = None;
    let batch = ExecutionBatch {
        node: "node-t".into(),
        batch: "boot-40".into(),
        records: records.clone(),
    };
    for (i, (status, body)) in [app.ingest(&batch).await, {
        let mut again = batch.clone();
        again.batch = "boot-41".into();
        again.node = "node-u".into();
        app.ingest_binary(&again).await
    }]
    .into_iter()
    .enumerate()
    {
        assert_eq!(
            status,
            StatusCode::OK,
            "post {i}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    for node in ["node-t", "node-u"] {
        // Stored: '=' for the first, the second's own, NULL for the third.
        let (stored,): (Vec<Option<String>>,) = sqlx::query_as(
            "SELECT execution_chunk_field(trace_ids) FROM execution_chunks WHERE node = $1",
        )
        .bind(node)
        .fetch_one(app.db())
        .await
        .unwrap();
        assert_eq!(
            stored,
            [
                Some("=".to_owned()),
                Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
                None
            ],
            "{node}"
        );
        // Read through the view: every trace id as sent.
        let rows: Vec<(String, Option<String>)> = sqlx::query_as(
            "SELECT request_id, trace_id FROM executions WHERE node = $1 ORDER BY at",
        )
        .bind(node)
        .fetch_all(app.db())
        .await
        .unwrap();
        let sent: Vec<(String, Option<String>)> = records
            .iter()
            .map(|r| (r.request_id.clone(), r.trace_id.clone()))
            .collect();
        assert_eq!(rows, sent, "{node}");
    }
}

#[tokio::test]
async fn records_land_in_their_day_and_old_ones_are_skipped() {
    let app = app().await;
    let day_us: i64 = 86_400_000_000;
    let mut yesterday = record(0, "days", 3);
    yesterday.at_us = now_us() - day_us;
    let mut ancient = record(1, "days", 3);
    ancient.at_us = now_us() - 400 * day_us;
    let mut future = record(2, "days", 3);
    future.at_us = now_us() + 2 * 3_600_000_000;
    let today = record(3, "days", 3);
    let batch = ExecutionBatch {
        node: "node-c".into(),
        batch: "days-1".into(),
        records: vec![yesterday, ancient, future, today],
    };
    let mut not_a_time = batch.clone();
    not_a_time.records[2].at_us = i64::MAX;
    let (status, body) = app.ingest_binary(&not_a_time).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let e: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(e["field"], "records[2].at_us", "{e}");
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.skipped), (2, 2));
    // Each record in a chunk of its own day, in that day's partition.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.tableoid::regclass::text, \
                to_char((c.min_at + r.off * interval '1 microsecond') AT TIME ZONE 'UTC', 'YYYYMMDD') \
         FROM execution_chunks c, unnest(execution_chunk_field(c.at_offsets_us)::bigint[]) r(off) \
         WHERE c.function = 'days' ORDER BY 2",
    )
    .fetch_all(app.db())
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (partition, day) in &rows {
        assert_eq!(partition, &format!("execution_chunks_p{day}"));
    }
    assert_ne!(rows[0].1, rows[1].1);
    // No planner statistics for any field column, of the parent and the
    // new partitions alike (migrations 0012 and 0015, `ensure_partition`),
    // and statistics for the scalar ones.
    let targets: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT a.attrelid::regclass::text, a.attname::text, \
         coalesce(a.attstattarget::int, -1) FROM pg_attribute a \
         WHERE a.attrelid::regclass::text LIKE 'execution_chunks%' AND a.attnum > 0 \
         AND NOT a.attisdropped",
    )
    .fetch_all(app.db())
    .await
    .unwrap();
    let fields = &containerpub_control::routes::executions::FIELD_COLUMNS;
    let without: Vec<&(String, String, i32)> = targets.iter().filter(|t| t.2 == 0).collect();
    assert_eq!(without.len(), fields.len() * 3, "{targets:?}");
    for (table, column, target) in &targets {
        assert_eq!(
            *target == 0,
            fields.contains(&column.as_str()),
            "{table}.{column}: statistics target {target}"
        );
    }
}

#[tokio::test]
async fn a_partition_dropped_behind_the_cache_is_made_again() {
    let app = app().await;
    let batch = |id: &str| ExecutionBatch {
        node: "node-d".into(),
        batch: id.into(),
        records: (0..10).map(|i| record(i, "gone", 4)).collect(),
    };
    let (status, _) = app.ingest(&batch("gone-1")).await;
    assert_eq!(status, StatusCode::OK);
    // Today's partition goes behind the control plane's back (it remembers
    // it exists).
    let (partition,): (String,) = sqlx::query_as(
        "SELECT tableoid::regclass::text FROM execution_chunks WHERE function = 'gone' LIMIT 1",
    )
    .fetch_one(app.db())
    .await
    .unwrap();
    sqlx::query(&format!("DROP TABLE {partition}"))
        .execute(app.db())
        .await
        .unwrap();
    let (status, body) = app.ingest(&batch("gone-2")).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let r: IngestResult = serde_json::from_slice(&body).unwrap();
    assert_eq!((r.stored, r.duplicate), (10, false));
    assert_eq!(count(app.db(), "gone").await, 10);
}

/// Chunks as migration 0011 stored them (a record's fields in arrays): two
/// days' partitions, NULLs in every column that takes them, a trace id
/// stored as '' (migration 0013), the largest `total_us`, a chunk of one,
/// and a chunk of 2,000 whose fields PostgreSQL compresses.
const CHUNKS_AS_ARRAYS: &str = r#"
CREATE TABLE execution_chunks_p20261201 PARTITION OF execution_chunks
    FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2026-12-02 00:00:00+00');
CREATE TABLE execution_chunks_p20261130 PARTITION OF execution_chunks
    FOR VALUES FROM ('2026-11-30 00:00:00+00') TO ('2026-12-01 00:00:00+00');
INSERT INTO execution_chunks VALUES
('n1', 'f', 1, 1, 3, '2026-12-01 10:00:00.000001+00', '2026-12-01 10:00:00.5+00',
 ARRAY['2026-12-01 10:00:00.5+00', '2026-12-01 10:00:00.000001+00',
       '2026-12-01 10:00:00.25+00']::timestamptz[],
 ARRAY['abc', NULL, 'x-y'], ARRAY['r1', 'r2', 'r3'],
 ARRAY['', NULL, '4bf92f3577b34da6a3ce929d0e0e4736'], ARRAY['GET', 'POST', 'G\T"'],
 ARRAY[200, 0, 503]::smallint[], ARRAY['warm', NULL, 'cold'], ARRAY[1, 2, 3]::bigint[],
 ARRAY[4, 5, 6]::bigint[], ARRAY[7, 8, 9]::bigint[],
 ARRAY[10, 11, 9223372036854775807]::bigint[], ARRAY[0, 0, 0]::bigint[],
 ARRAY[13, 13, 13]::bigint[], ARRAY[NULL, 'queue_full', NULL]),
('n1', 'f', 1, 1, 1, '2026-11-30 23:59:59.999999+00', '2026-11-30 23:59:59.999999+00',
 ARRAY['2026-11-30 23:59:59.999999+00']::timestamptz[], ARRAY[NULL]::text[], ARRAY['only'],
 ARRAY[NULL]::text[], ARRAY['GET'], ARRAY[200]::smallint[], ARRAY[NULL]::text[],
 ARRAY[0]::bigint[], ARRAY[0]::bigint[], ARRAY[0]::bigint[], ARRAY[0]::bigint[],
 ARRAY[0]::bigint[], ARRAY[0]::bigint[], ARRAY[NULL]::text[]);
INSERT INTO execution_chunks
SELECT 'n1', 'big', 2, 1, 2000, '2026-12-01 11:00:00+00', '2026-12-01 11:00:00.001999+00',
       array_agg('2026-12-01 11:00:00+00'::timestamptz + i * interval '1 microsecond' ORDER BY i),
       array_agg('abc'::text ORDER BY i), array_agg(md5(i::text) ORDER BY i),
       array_agg(''::text ORDER BY i), array_agg('GET'::text ORDER BY i),
       array_agg(200::smallint ORDER BY i), array_agg('warm'::text ORDER BY i),
       array_agg(i::bigint ORDER BY i), array_agg(0::bigint ORDER BY i),
       array_agg(i::bigint ORDER BY i), array_agg(i::bigint ORDER BY i),
       array_agg(0::bigint ORDER BY i), array_agg(13::bigint ORDER BY i),
       array_agg(NULL::text ORDER BY i)
FROM generate_series(0, 1999) AS i;
"#;

#[tokio::test]
async fn chunks_stored_as_arrays_read_the_same_after_migration_0015() {
    let db = support::TestDb::create().await;
    // The migrations before 0015, from a copy of their files.
    let before_0015 = tempfile::tempdir().unwrap();
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0015" {
            std::fs::copy(&path, before_0015.path().join(&name)).unwrap();
        }
    }
    sqlx::migrate::Migrator::new(before_0015.path())
        .await
        .unwrap()
        .run(&db.pool)
        .await
        .unwrap();
    sqlx::raw_sql(CHUNKS_AS_ARRAYS)
        .execute(&db.pool)
        .await
        .unwrap();
    // The view's columns of migration 0015 (0016 adds `chunk_errors`).
    let view = "SELECT (at, node, function, deployment_id, version, instance, request_id, \
                trace_id, method, status, start_kind, queue_us, start_us, upstream_us, \
                total_us, bytes_in, bytes_out, rejection, chunk_max_at)::text \
                FROM executions ORDER BY at";
    let before: Vec<String> = sqlx::query_scalar(view).fetch_all(&db.pool).await.unwrap();
    assert_eq!(before.len(), 2004);
    containerpub_control::db::MIGRATOR
        .run(&db.pool)
        .await
        .unwrap();
    let after: Vec<String> = sqlx::query_scalar(view).fetch_all(&db.pool).await.unwrap();
    assert_eq!(after, before);
    // Chunks stored before 0016 have no count of errors (the status splits
    // them).
    let (counted,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM execution_chunks WHERE errors IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(counted, 0);
    // Stored in the new form.
    let stored: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT at_offsets_us, trace_ids, rejections FROM execution_chunks \
         WHERE function = 'f' ORDER BY min_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        stored,
        [
            s(" 0", " ", " "),
            s(
                " 499999 0 249999",
                " =  4bf92f3577b34da6a3ce929d0e0e4736",
                "  queue_full "
            )
        ]
    );
    // The rewritten fields compressed with lz4, as the arrays were (the
    // server here has lz4; a column of a new type starts with the default).
    let methods: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT DISTINCT pg_column_compression(methods) FROM execution_chunks \
         WHERE function = 'big'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(methods, [Some("lz4".to_owned())]);
    let settings: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT attcompression::text FROM pg_attribute \
         WHERE attrelid::regclass::text LIKE 'execution_chunks%' AND attname = 'request_ids'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(settings, ["l"]);
}

/// `cpub status` counts a chunk wholly in its five minutes by the chunk's
/// `n` and `errors` (migration 0016) and splits the others (one straddling
/// the window's start, one stored without `errors` as before 0016); `cpub
/// stats` reads the narrower view `execution_outcomes` in one pass. Both
/// must show what the view `executions` shows.
#[tokio::test]
async fn status_and_stats_count_what_the_view_executions_shows() {
    let app = app().await;
    let did = real_function(&app, "counted").await;
    let now = now_us();
    let minute: i64 = 60_000_000;
    let mut n = 0;
    let mut records = |calls: &[(i64, u16)]| -> Vec<ExecutionRecord> {
        calls
            .iter()
            .map(|&(ago, status)| {
                n += 1;
                let mut r = record(n, "counted", did);
                r.at_us = now - ago;
                r.status = status;
                r.total_us = 100 + (n as u64 * 7919) % 1000;
                r.queue_us = n as u64 * 3;
                match n % 4 {
                    0 => {
                        r.start = Some(StartKind::Cold);
                        r.start_us = 10_000 + n as u64;
                    }
                    1 => r.start = Some(StartKind::Paused),
                    2 => {
                        r.start = None;
                        r.rejection = Some("queue_full".into());
                    }
                    _ => {}
                }
                r
            })
            .collect()
    };
    // From 8 minutes ago to 2 minutes ago: a chunk that straddles the
    // status's window (and the stats' of 4 minutes), errors of both kinds
    // on both sides (unless midnight UTC falls between, which splits it by
    // day).
    let straddling = records(&[
        (8 * minute, 0),
        (7 * minute, 503),
        (6 * minute, 200),
        (3 * minute, 99),
        (5 * minute / 2, 0),
        (2 * minute, 404),
        (2 * minute - 1_000, 500),
    ]);
    let cycle = [200u16, 503, 0, 404, 999, 500, 302, 99, 100];
    let inside = records(
        &(0..20)
            .map(|i| (minute + i * 1_000, cycle[i as usize % cycle.len()]))
            .collect::<Vec<_>>(),
    );
    let before_0016 = records(&[
        (90_000_000, 502),
        (80_000_000, 200),
        (70_000_000, 0),
        (60_000_000, 201),
    ]);
    // A node per batch: the chunks of each are told apart by it.
    for (i, records) in [straddling, inside, before_0016].into_iter().enumerate() {
        let batch = ExecutionBatch {
            node: format!("node-s{i}"),
            batch: format!("counted-{i}"),
            records,
        };
        let (status, body) = app.ingest_binary(&batch).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    // Each chunk knows its errors, counted as the status does.
    let (wrong,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM execution_chunks c WHERE c.function = 'counted' AND c.errors IS \
         DISTINCT FROM (SELECT count(*) FROM unnest(execution_chunk_field(c.statuses)::int[]) s \
         WHERE s >= 500 OR s < 100)",
    )
    .fetch_one(app.db())
    .await
    .unwrap();
    assert_eq!(wrong, 0);
    // The last batch as a control plane before migration 0016 stored it.
    let cleared = sqlx::query("UPDATE execution_chunks SET errors = NULL WHERE node = 'node-s2'")
        .execute(app.db())
        .await
        .unwrap();
    assert!(cleared.rows_affected() >= 1);
    let (straddles,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM execution_chunks WHERE function = 'counted' \
         AND min_at < now() - interval '5 minutes' AND max_at >= now() - interval '5 minutes'",
    )
    .fetch_one(app.db())
    .await
    .unwrap();
    let day: i64 = 86_400_000_000;
    if now.rem_euclid(day) > 9 * minute {
        assert_eq!(straddles, 1);
    }

    // What the view shows for the last five minutes (the records are a
    // minute or more away from its start).
    let (calls, errors): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE status >= 500 OR status < 100) FROM executions \
         WHERE function = 'counted' AND at >= now() - interval '5 minutes'",
    )
    .fetch_one(app.db())
    .await
    .unwrap();
    assert_eq!(calls, 4 + 20 + 4);
    assert!(errors > 0 && errors < calls, "{errors} of {calls}");
    let (code, body) = app.send("GET", "/api/v1/status", Vec::new()).await;
    assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let counted = status["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "counted")
        .expect("the function in the status");
    assert_eq!(counted["calls_5m"], calls, "{counted}");
    assert_eq!(counted["errors_5m"], errors, "{counted}");
    assert_eq!(counted["active_version"], 1);

    // The stats by minute, of the last hour and of the last 4 minutes (a
    // window that cuts through the first chunk), against the same figures
    // computed over the view `executions`.
    /// The figures of the stats, computed over the view `executions`.
    #[derive(sqlx::FromRow)]
    struct Figures {
        bucket: Option<chrono::DateTime<chrono::Utc>>,
        calls: i64,
        s2: i64,
        s3: i64,
        s4: i64,
        s5: i64,
        s0: i64,
        rejected: i64,
        p50: Option<f64>,
        p95: Option<f64>,
        p99: Option<f64>,
        cold: i64,
        paused: i64,
        cold_us: Option<f64>,
        queue_us: Option<f64>,
        queue_max: Option<i64>,
    }
    let figures = "count(*) AS calls, \
         count(*) FILTER (WHERE status BETWEEN 200 AND 299) AS s2, \
         count(*) FILTER (WHERE status BETWEEN 300 AND 399) AS s3, \
         count(*) FILTER (WHERE status BETWEEN 400 AND 499) AS s4, \
         count(*) FILTER (WHERE status BETWEEN 500 AND 599) AS s5, \
         count(*) FILTER (WHERE status < 200 OR status > 599) AS s0, \
         count(*) FILTER (WHERE rejection IS NOT NULL) AS rejected, \
         percentile_cont(0.5) WITHIN GROUP (ORDER BY total_us) AS p50, \
         percentile_cont(0.95) WITHIN GROUP (ORDER BY total_us) AS p95, \
         percentile_cont(0.99) WITHIN GROUP (ORDER BY total_us) AS p99, \
         count(*) FILTER (WHERE start_kind = 'cold') AS cold, \
         count(*) FILTER (WHERE start_kind = 'paused') AS paused, \
         (avg(start_us) FILTER (WHERE start_kind = 'cold'))::float8 AS cold_us, \
         (avg(queue_us) FILTER (WHERE start_kind IS NOT NULL))::float8 AS queue_us, \
         max(queue_us) AS queue_max";
    let check = |row: &serde_json::Value, f: &Figures| {
        let ms = |us: Option<f64>| us.map(|v| (v / 1000.0 * 1000.0).round() / 1000.0);
        let counts = [
            ("calls", f.calls),
            ("status_2xx", f.s2),
            ("status_3xx", f.s3),
            ("status_4xx", f.s4),
            ("status_5xx", f.s5),
            ("no_answer", f.s0),
            ("rejected", f.rejected),
            ("cold_starts", f.cold),
            ("paused_starts", f.paused),
        ];
        for (name, count) in counts {
            assert_eq!(row[name], count, "{name}: {row}");
        }
        // Percentiles come from the total times' buckets (16 per power of
        // two, `histogram.rs`): within 1/16 of percentile_cont's.
        for (name, us) in [("p50_ms", f.p50), ("p95_ms", f.p95), ("p99_ms", f.p99)] {
            let (got, exact) = (row[name].as_f64().unwrap(), us.unwrap() / 1000.0);
            assert!(
                (got - exact).abs() <= exact / 16.0 + 0.001,
                "{name}: {got} against {exact}: {row}"
            );
        }
        let times = [
            ("cold_start_ms", f.cold_us),
            ("queue_mean_ms", f.queue_us),
            ("queue_max_ms", f.queue_max.map(|v| v as f64)),
        ];
        for (name, us) in times {
            assert_eq!(row[name].as_f64(), ms(us), "{name}: {row}");
        }
    };
    let mut stats = serde_json::Value::Null;
    for (since, interval, calls) in [("1h", "1 hour", 31), ("4m", "4 minutes", 28)] {
        let uri = format!("/api/v1/functions/counted/stats?since={since}&by=minute");
        let (code, body) = app.send("GET", &uri, Vec::new()).await;
        assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let got: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let window = format!(
            "FROM executions WHERE function = 'counted' AND at >= now() - interval '{interval}'"
        );
        let total: Figures = sqlx::query_as(&format!(
            "SELECT NULL::timestamptz AS bucket, {figures} {window}"
        ))
        .fetch_one(app.db())
        .await
        .unwrap();
        assert_eq!(total.calls, calls);
        check(&got["total"], &total);
        let by_minute: Vec<Figures> = sqlx::query_as(&format!(
            "SELECT date_trunc('minute', at) AS bucket, {figures} {window} GROUP BY 1 ORDER BY 1"
        ))
        .fetch_all(app.db())
        .await
        .unwrap();
        let rows = got["rows"].as_array().unwrap();
        assert_eq!(rows.len(), by_minute.len(), "{got}");
        assert!(rows.len() >= 3, "{got}");
        for (row, m) in rows.iter().zip(&by_minute) {
            let from: chrono::DateTime<chrono::Utc> =
                serde_json::from_value(row["from"].clone()).unwrap();
            assert_eq!(Some(from), m.bucket);
            check(row, m);
        }
        if since == "1h" {
            stats = got;
        }
    }
    // `--status 5xx` lists what the view holds, and skips chunks that
    // stored no error without splitting them: a chunk made to say it has
    // none (it has) loses its 5xx from that list, not its 4xx from theirs.
    let listed = |filter: &'static str| {
        let app = &app;
        async move {
            let uri = format!("/api/v1/functions/counted/executions?status={filter}&since=1h");
            let (code, body) = app.send("GET", &uri, Vec::new()).await;
            assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            let list: Vec<ExecutionInfo> = serde_json::from_slice(&body).unwrap();
            list.len() as i64
        }
    };
    let in_view = |lo: i16, hi: i16, node: Option<&'static str>| {
        let app = &app;
        async move {
            let (count,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM execution_chunks c, \
                 unnest(execution_chunk_field(c.statuses)::smallint[]) s \
                 WHERE c.function = 'counted' AND s BETWEEN $1 AND $2 \
                 AND ($3::text IS NULL OR c.node = $3)",
            )
            .bind(lo)
            .bind(hi)
            .bind(node)
            .fetch_one(app.db())
            .await
            .unwrap();
            count
        }
    };
    let (fives, fours) = (in_view(500, 599, None).await, in_view(400, 499, None).await);
    assert!(fives > 0 && fours > 0);
    assert_eq!(listed("5xx").await, fives);
    assert_eq!(listed("4xx").await, fours);
    let inside_fives = in_view(500, 599, Some("node-s1")).await;
    assert!(inside_fives > 0);
    sqlx::query("UPDATE execution_chunks SET errors = 0 WHERE node = 'node-s1'")
        .execute(app.db())
        .await
        .unwrap();
    assert_eq!(listed("5xx").await, fives - inside_fives);
    assert_eq!(listed("4xx").await, fours);
    // Without `by`: the same total and no rows; a function without records:
    // zeros.
    let (_, body) = app
        .send(
            "GET",
            "/api/v1/functions/counted/stats?since=1h",
            Vec::new(),
        )
        .await;
    let mut alone: serde_json::Value = serde_json::from_slice(&body).unwrap();
    // Each request's window starts an hour before it.
    assert_eq!(alone["total"]["from"], alone["since"]);
    alone["total"]["from"] = stats["total"]["from"].clone();
    assert_eq!(alone["total"], stats["total"]);
    assert_eq!(alone["rows"], serde_json::json!([]));
    real_function(&app, "quiet").await;
    let (code, body) = app
        .send(
            "GET",
            "/api/v1/functions/quiet/stats?since=1h&by=minute",
            Vec::new(),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let quiet: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(quiet["total"]["calls"], 0, "{quiet}");
    assert_eq!(quiet["total"]["p99_ms"], serde_json::Value::Null, "{quiet}");
    assert_eq!(quiet["rows"], serde_json::json!([]));
    assert_eq!(quiet["total"]["from"], quiet["since"]);
}

/// Reads of records for callers are bounded (`containerpub_control::reads`):
/// a window whose records take longer than the read time limit is stopped
/// by PostgreSQL and the caller is told to ask for a shorter one (stats, and
/// an error listing that must open every chunk); the permit is given back;
/// and when every permit is held, a caller gets 429 instead of a database
/// connection.
#[tokio::test]
async fn reads_past_their_time_limit_or_beyond_the_permits_are_refused() {
    let app = app_limited(1, std::time::Duration::from_millis(100)).await;
    heavy_function(&app).await;

    for uri in [
        "/api/v1/functions/heavy/stats?since=1h",
        "/api/v1/functions/heavy/executions?since=1h&status=5xx",
    ] {
        let started = std::time::Instant::now();
        let (status, body) = app.send("GET", uri, Vec::new()).await;
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {error}");
        assert_eq!(error["field"], "since", "{error}");
        let message = error["error"].as_str().unwrap();
        assert!(
            message.contains("longer than the control plane's limit of 0.1 s")
                && message.contains("CPUB_READ_TIMEOUT_S"),
            "{message}"
        );
        // Stopped at the limit, not read to the end (the whole read takes
        // seconds; the bound is loose for slow machines).
        assert!(
            started.elapsed().as_secs_f64() < 5.0,
            "{uri}: {:?}",
            started.elapsed()
        );
    }

    // Every permit held (the only one, here): refused, not queued for a
    // database connection; given back, the next read runs.
    let held = app.state.reads.begin(app.db()).await.unwrap();
    let (status, body) = app
        .send("GET", "/api/v1/functions/heavy/stats?since=1s", Vec::new())
        .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body.contains("CPUB_READ_CONCURRENCY"), "{body}");
    drop(held);
    let (status, body) = app
        .send("GET", "/api/v1/functions/heavy/stats?since=1s", Vec::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

/// A caller who hangs up while its read runs: the read runs on to its end
/// and keeps its permit until then; given back when the request went, it
/// would let a caller who hangs up and asks again run more reads at once
/// than the permits, each holding a connection while its query ran on.
#[tokio::test]
async fn a_caller_who_hangs_up_leaves_the_permit_taken_until_the_read_ends() {
    let app = app_limited(1, std::time::Duration::from_secs(30)).await;
    heavy_function(&app).await;
    let reads = &app.state.reads;
    // Boxed, so that dropping it drops the request (a caller hanging up).
    let mut request =
        Box::pin(app.send("GET", "/api/v1/functions/heavy/stats?since=1h", Vec::new()));
    // Hung up once PostgreSQL runs the stats query (about 0.8 s; the
    // request is polled meanwhile, so it gets that far).
    let running = "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
                   AND query LIKE '/* cpub stats */%' AND datname = current_database() \
                   AND pid <> pg_backend_pid()";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(tokio::time::Instant::now() < deadline, "the read never ran");
        tokio::select! {
            (status, _) = &mut request => panic!("answered ({status}) before the hang-up"),
            n = sqlx::query_scalar::<_, i64>(running).fetch_one(app.db()) => {
                if n.unwrap() > 0 {
                    break;
                }
            }
        }
    }
    drop(request);
    assert_eq!(reads.available(), 0, "the permit went with the caller");
    eventually_true(
        || reads.available() == 1,
        "the permit given back once the read ended",
    )
    .await;
}

/// A read the database server cancels before the time limit (an operator's
/// `pg_cancel_backend`, a shutdown) is not blamed on the window: 503, try
/// again.
#[tokio::test]
async fn a_read_cancelled_on_the_server_is_not_called_too_large() {
    let app = app_limited(1, std::time::Duration::from_secs(30)).await;
    heavy_function(&app).await;
    let mut request =
        Box::pin(app.send("GET", "/api/v1/functions/heavy/stats?since=1h", Vec::new()));
    let cancel = "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity \
                  WHERE state = 'active' AND query LIKE '/* cpub stats */%' \
                  AND datname = current_database() AND pid <> pg_backend_pid()";
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, body) = loop {
        assert!(tokio::time::Instant::now() < deadline, "the read never ran");
        tokio::select! {
            answer = &mut request => break answer,
            _ = sqlx::query_scalar::<_, i64>(cancel).fetch_one(app.db()) => {}
        }
    };
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("cancelled or ended this read"), "{body}");
    assert!(!body.contains("since"), "not the window's fault: {body}");
}

/// How a read's failures are answered: past the time limit, 400 naming the
/// window, or 503 when the read has no window to blame (a follower's next
/// lines); a backend the server ends (a shutdown, an operator's
/// `pg_terminate_backend`), 503.
#[tokio::test]
async fn a_reads_failures_name_what_to_do() {
    use containerpub_control::error::Error;
    let app = app_limited(2, std::time::Duration::from_millis(100)).await;
    let reads = &app.state.reads;
    let mut read = reads.begin(app.db()).await.unwrap();
    let err = sqlx::query("SELECT pg_sleep(2)")
        .execute(read.conn())
        .await
        .unwrap_err();
    assert!(matches!(
        read.explain(err, Some("since")),
        Error::BadRequest { field: Some(f), .. } if f == "since"
    ));
    let mut read = reads.begin(app.db()).await.unwrap();
    let err = sqlx::query("SELECT pg_sleep(2)")
        .execute(read.conn())
        .await
        .unwrap_err();
    match read.explain(err, None) {
        Error::Unavailable(m) => assert!(m.contains("try again"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Ended by the server half-way.
    let app2 = app_limited(1, std::time::Duration::from_secs(30)).await;
    let mut read = app2.state.reads.begin(app2.db()).await.unwrap();
    let (pid,): (i32,) = sqlx::query_as("SELECT pg_backend_pid()")
        .fetch_one(read.conn())
        .await
        .unwrap();
    let sleeping = sqlx::query("SELECT pg_sleep(10)").execute(read.conn());
    let terminate = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(app2.db())
            .await
            .unwrap();
    };
    let (slept, ()) = tokio::join!(sleeping, terminate);
    let err = slept.unwrap_err();
    match read.explain(err, Some("since")) {
        Error::Unavailable(m) => assert!(m.contains("ended this read"), "{m}"),
        other => panic!("{other:?}"),
    }
}

/// `histogram::bucket` and the SQL function the stats use for split records
/// (migration 0019) put every value in the same bucket.
#[tokio::test]
async fn the_sql_buckets_are_the_rust_ones() {
    let app = app().await;
    let mut values: Vec<i64> = (0..2_100).collect();
    for shift in 0..63 {
        let p = 1i64 << shift;
        values.extend([p - 1, p, p + 1, p + p / 3]);
    }
    values.extend([i64::MAX - 1, i64::MAX, 900_000_000, 123_456_789_012]);
    let got: Vec<(i64, i32)> =
        sqlx::query_as("SELECT v, execution_total_bucket(v) FROM unnest($1::bigint[]) AS v")
            .bind(&values)
            .fetch_all(app.db())
            .await
            .unwrap();
    assert_eq!(got.len(), values.len());
    for (v, b) in got {
        let want = containerpub_control::histogram::bucket(v as u64);
        assert_eq!(b, i32::from(want), "{v}");
    }
}

/// A window's stats add up the figures stored with the chunks it holds
/// whole, and split the records of chunks stored without them (by a control
/// plane from before migration 0019) into the same figures.
#[tokio::test]
async fn stats_add_up_the_chunks_figures_and_split_chunks_without() {
    let app = app().await;
    let did = real_function(&app, "summed").await;
    let mut records: Vec<ExecutionRecord> = (0..50).map(|i| record(i, "summed", did)).collect();
    for (i, r) in records.iter_mut().enumerate() {
        r.at_us -= 600_000_000;
        r.total_us = 1_000 + 40 * i as u64;
        if i % 10 == 0 {
            r.status = 503;
            r.start = Some(StartKind::Cold);
            r.start_us = 20_000;
        }
    }
    let batch = ExecutionBatch {
        node: "node-a".into(),
        batch: "summed-1".into(),
        records,
    };
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let stats = || async {
        let (code, body) = app
            .send("GET", "/api/v1/functions/summed/stats?since=1h", Vec::new())
            .await;
        assert_eq!(code, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let mut stats: serde_json::Value = serde_json::from_slice(&body).unwrap();
        // The window's start: now, an hour ago.
        stats["total"].as_object_mut().unwrap().remove("from");
        stats["total"].clone()
    };
    let stored = stats().await;
    assert_eq!(
        (
            &stored["calls"],
            &stored["status_2xx"],
            &stored["status_5xx"]
        ),
        (
            &serde_json::json!(50),
            &serde_json::json!(45),
            &serde_json::json!(5)
        ),
        "{stored}"
    );
    assert_eq!(stored["cold_starts"], 5, "{stored}");
    assert_eq!(stored["cold_start_ms"], 20.0, "{stored}");
    // Exact: 1,000 + 40 × 24.5 µs; the buckets are 64 µs wide here.
    let p50 = stored["p50_ms"].as_f64().unwrap();
    assert!((p50 - 1.98).abs() <= 1.98 / 16.0, "{stored}");

    // The stored figures are what the stats read: changed, they show.
    sqlx::query(
        "UPDATE execution_chunks SET n = n + 1000, n_2xx = n_2xx + 1000 \
         WHERE function = 'summed'",
    )
    .execute(app.db())
    .await
    .unwrap();
    let changed = stats().await;
    assert_eq!(
        (&changed["calls"], &changed["status_2xx"]),
        (&serde_json::json!(1050), &serde_json::json!(1045)),
        "{changed}"
    );
    // Without figures the records are split: the same stats as stored.
    sqlx::query(
        "UPDATE execution_chunks SET n = n - 1000, n_2xx = NULL, n_3xx = NULL, \
         n_4xx = NULL, n_5xx = NULL, n_no_answer = NULL, n_rejected = NULL, n_cold = NULL, \
         n_paused = NULL, n_started = NULL, cold_us_sum = NULL, queue_us_sum = NULL, \
         queue_us_max = NULL, total_buckets = NULL, total_counts = NULL \
         WHERE function = 'summed'",
    )
    .execute(app.db())
    .await
    .unwrap();
    assert_eq!(stats().await, stored);
}

/// An app whose reads run `concurrency` at once, each statement at most
/// `timeout`.
async fn app_limited(concurrency: usize, timeout: std::time::Duration) -> TestApp {
    support::app_with_reads(
        64 * 1024,
        containerpub_control::reads::ReadLimits {
            concurrency,
            timeout,
        },
    )
    .await
}

/// Function `heavy` with 400,001 records: one through the ingest (it makes
/// the day's partition), then 80 chunks of 5,000 records beside it by SQL,
/// with no count of errors (as before migration 0016), so an error listing
/// opens each of them. Stats over them take about 0.8 s here.
async fn heavy_function(app: &TestApp) {
    let did = real_function(app, "heavy").await;
    let batch = ExecutionBatch {
        node: "node-a".into(),
        batch: "boot-1".into(),
        records: vec![record(0, "heavy", did)],
    };
    let (status, body) = app.ingest(&batch).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    sqlx::query(
        "INSERT INTO execution_chunks \
         SELECT c.node, c.function, c.deployment_id, c.version, 5000, c.min_at, c.min_at, \
                f.offsets, f.instances, f.ids, f.ids, f.methods, f.statuses, f.kinds, f.us, \
                f.us, f.us, f.us, f.us, f.us, f.rejections, NULL \
         FROM execution_chunks c, generate_series(1, 80), \
              (SELECT string_agg(' 0', '') AS offsets, string_agg(' 0123456789ab', '') AS instances, \
                      string_agg(' r' || i, '') AS ids, string_agg(' GET', '') AS methods, \
                      string_agg(' 200', '') AS statuses, string_agg(' warm', '') AS kinds, \
                      string_agg(' ' || (i % 997), '') AS us, string_agg(' ', '') AS rejections \
               FROM generate_series(1, 5000) i) f \
         WHERE c.function = 'heavy'",
    )
    .execute(app.db())
    .await
    .unwrap();
    assert_eq!(count(app.db(), "heavy").await, 400_001);
}

/// Waits up to 10 s for `done`.
async fn eventually_true(done: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
