//! Execution records and the views built on them: the batch a proxy posts to
//! `POST /api/v1/executions` (one record per call of a function), the
//! queries and answers of `GET /api/v1/functions/{name}/executions`,
//! `…/stats` and `GET /api/v1/status`, and the rules both sides apply to
//! them (limits, status filters, `--since` durations). A batch travels as
//! JSON or in the binary form of [`binary`].
//!
//! Over 600 lines with its unit tests: about 570 of code (the record, the
//! views' types and their rules, shared by proxy, control and CLI) and 230
//! of tests.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod binary;

/// Most records in one batch.
pub const MAX_BATCH_RECORDS: usize = 10_000;
/// Largest batch body, in bytes.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Longest method, instance id and rejection reason in a record.
pub const MAX_SHORT_FIELD: usize = 64;
/// A trace id: 32 lowercase hex digits (W3C trace context).
pub const TRACE_ID_LEN: usize = 32;
/// Most rows `GET …/executions` answers.
pub const MAX_LIST_LIMIT: u32 = 10_000;
/// Rows `GET …/executions` answers unless asked otherwise.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// How the instance that served a call was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartKind {
    /// Started while the call waited.
    Cold,
    /// Resumed from paused while the call waited.
    Paused,
    /// Running with a free slot.
    Warm,
}

impl StartKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cold => "cold",
            Self::Paused => "paused",
            Self::Warm => "warm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "cold" => Self::Cold,
            "paused" => Self::Paused,
            "warm" => Self::Warm,
            _ => return None,
        })
    }
}

/// One call of a function through a proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRecord {
    /// When the request head arrived, microseconds since the Unix epoch.
    pub at_us: i64,
    pub function: String,
    pub deployment_id: i64,
    pub version: i32,
    /// The instance (container id, short form) that served it, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    pub request_id: String,
    /// From the request's `traceparent`, when it carried a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub method: String,
    /// The status answered (0: the client went away before one was chosen).
    pub status: u16,
    /// How the instance was obtained; none when the call got no instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartKind>,
    pub queue_us: u64,
    pub start_us: u64,
    pub upstream_us: u64,
    pub total_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Why the proxy refused the call (`queue_full`, …), if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<String>,
}

/// Largest duration field (one day), in microseconds.
const MAX_DURATION_US: u64 = 86_400_000_000;

impl ExecutionRecord {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.borrowed().validate()
    }

    /// The record borrowed (what the control plane decodes).
    pub fn borrowed(&self) -> ExecutionRecordRef<'_> {
        fn text(s: &str) -> Text<'_> {
            Text(Cow::Borrowed(s))
        }
        ExecutionRecordRef {
            at_us: self.at_us,
            function: text(&self.function),
            deployment_id: self.deployment_id,
            version: self.version,
            instance: self.instance.as_deref().map(text),
            request_id: text(&self.request_id),
            trace_id: self.trace_id.as_deref().map(text),
            method: text(&self.method),
            status: self.status,
            start: self.start,
            queue_us: self.queue_us,
            start_us: self.start_us,
            upstream_us: self.upstream_us,
            total_us: self.total_us,
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            rejection: self.rejection.as_deref().map(text),
        }
    }
}

/// A JSON string borrowed from the body it was decoded from (owned only
/// when it holds escapes): the control plane's ingest decodes thousands of
/// records per batch without allocating their strings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text<'a>(pub Cow<'a, str>);

impl Text<'_> {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Cow<'de, str>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(Cow::Borrowed(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Cow::Owned(v))
            }
        }
        d.deserialize_str(V).map(Text)
    }
}

/// [`ExecutionRecord`] as the control plane decodes it: the same fields
/// and rules, its strings borrowed from the body (and the same JSON, which
/// a proxy sends when the control plane does not take the binary form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRecordRef<'a> {
    pub at_us: i64,
    #[serde(borrow)]
    pub function: Text<'a>,
    pub deployment_id: i64,
    pub version: i32,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub instance: Option<Text<'a>>,
    #[serde(borrow)]
    pub request_id: Text<'a>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<Text<'a>>,
    #[serde(borrow)]
    pub method: Text<'a>,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartKind>,
    pub queue_us: u64,
    pub start_us: u64,
    pub upstream_us: u64,
    pub total_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub rejection: Option<Text<'a>>,
}

/// [`ExecutionBatch`] as the control plane decodes it (strings borrowed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionBatchRef<'a> {
    #[serde(borrow)]
    pub node: Text<'a>,
    #[serde(borrow)]
    pub batch: Text<'a>,
    #[serde(borrow)]
    pub records: Vec<ExecutionRecordRef<'a>>,
}

impl ExecutionRecordRef<'_> {
    /// Checks every field; the error names the field at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        self.validate_given(None)
    }

    /// [`Self::validate`], without checking the function's name again when
    /// it is `valid_function`, a name found valid before (a batch's records
    /// share a few names: the control plane checks each once in a row).
    pub fn validate_given(
        &self,
        valid_function: Option<&str>,
    ) -> Result<(), (&'static str, String)> {
        if valid_function != Some(self.function.as_str()) {
            crate::validate_function_name(self.function.as_str())
                .map_err(|m| ("function", m.to_string()))?;
        }
        if self.deployment_id <= 0 || self.version <= 0 {
            return Err((
                "deployment_id",
                "deployment_id and version must be positive".into(),
            ));
        }
        if !crate::request_id::is_valid(self.request_id.as_str().as_bytes()) {
            return Err(("request_id", "not a valid request id".into()));
        }
        let short = |s: &str| {
            !s.is_empty() && s.len() <= MAX_SHORT_FIELD && s.bytes().all(|b| b.is_ascii_graphic())
        };
        if !short(self.method.as_str()) {
            return Err(("method", "must be 1 to 64 visible ASCII characters".into()));
        }
        if let Some(instance) = &self.instance
            && !short(instance.as_str())
        {
            return Err((
                "instance",
                "must be 1 to 64 visible ASCII characters".into(),
            ));
        }
        if let Some(reason) = &self.rejection
            && !(short(reason.as_str())
                && reason
                    .as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'))
        {
            return Err(("rejection", "must be a lowercase reason".into()));
        }
        if let Some(trace) = &self.trace_id
            && !is_trace_id(trace.as_str().as_bytes())
        {
            return Err(("trace_id", "must be 32 lowercase hex digits".into()));
        }
        if self.status > 999 {
            return Err((
                "status",
                format!("must be at most 999, got {}", self.status),
            ));
        }
        for (field, v) in [
            ("queue_us", self.queue_us),
            ("start_us", self.start_us),
            ("upstream_us", self.upstream_us),
            ("total_us", self.total_us),
        ] {
            if v > MAX_DURATION_US {
                return Err((field, format!("must be at most one day, got {v} µs")));
            }
        }
        for (field, v) in [("bytes_in", self.bytes_in), ("bytes_out", self.bytes_out)] {
            if v > i64::MAX as u64 {
                return Err((field, "too large".into()));
            }
        }
        Ok(())
    }
}

/// A W3C trace id: 32 lowercase hex digits, not all zero.
///
/// One pass through a table: it runs on every call (twice with records
/// on), and the two passes of `all(matches!(…))` and `any` before were
/// about 400 instructions each time (callgrind, `scripts/instructions.sh`).
pub fn is_trace_id(b: &[u8]) -> bool {
    /// Per byte: 1 for '1'-'9' and 'a'-'f', 2 for '0', 0 for the rest.
    const CLASS: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut c = b'1';
        while c <= b'9' {
            t[c as usize] = 1;
            c += 1;
        }
        let mut c = b'a';
        while c <= b'f' {
            t[c as usize] = 1;
            c += 1;
        }
        t[b'0' as usize] = 2;
        t
    };
    let Ok(b) = <&[u8; TRACE_ID_LEN]>::try_from(b) else {
        return false;
    };
    // Every byte a digit (no class 0), not every one a '0' (some class 1).
    let (mut all, mut any) = (true, false);
    for &c in b {
        let class = CLASS[usize::from(c)];
        all &= class != 0;
        any |= class == 1;
    }
    all && any
}

/// The trace id of a `traceparent` value (`00-<trace-id>-<parent-id>-<flags>`),
/// when it is a valid one.
pub fn trace_id_of_traceparent(value: &[u8]) -> Option<&[u8]> {
    // version "-" trace-id "-" parent-id "-" flags: 2+1+32+1+16+1+2 = 55.
    if value.len() < 55 || value.get(2) != Some(&b'-') || value.get(35) != Some(&b'-') {
        return None;
    }
    let version = value.get(..2)?;
    if version == b"ff" || !version.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let trace = value.get(3..35)?;
    is_trace_id(trace).then_some(trace)
}

/// `POST /api/v1/executions`: records of one proxy. `batch` is unique per
/// proxy process and batch, so a batch sent again (its answer was lost) is
/// stored once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionBatch {
    pub node: String,
    pub batch: String,
    pub records: Vec<ExecutionRecord>,
}

/// What `POST /api/v1/executions` answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestResult {
    /// Records written.
    pub stored: u64,
    /// Records refused (outside the retention window).
    pub skipped: u64,
    /// The batch had been stored before.
    pub duplicate: bool,
}

/// A status filter: one status (`503`) or a class (`5xx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Exact(u16),
    Class(u16),
}

impl StatusFilter {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a status (e.g. 503) or class (e.g. 5xx)");
        let b = s.as_bytes();
        match b {
            [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => Ok(Self::Class(u16::from(d - b'0'))),
            [b'1'..=b'9', b'0'..=b'9', b'0'..=b'9'] => {
                s.parse().map(Self::Exact).map_err(|_| bad())
            }
            _ => Err(bad()),
        }
    }

    /// The inclusive range of statuses it matches.
    pub fn range(self) -> (u16, u16) {
        match self {
            Self::Exact(s) => (s, s),
            Self::Class(c) => (c * 100, c * 100 + 99),
        }
    }
}

/// Longest `since` window: 31 days.
pub const MAX_SINCE_S: u64 = 31 * 86_400;

/// A duration like `90s`, `10m`, `1h`, `2d` (a number and one unit), in
/// seconds; at most [`MAX_SINCE_S`].
pub fn parse_since(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration like 30s, 10m, 1h or 2d");
    let Some((split, _)) = s.char_indices().last() else {
        return Err(bad());
    };
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86_400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    if seconds == 0 || seconds > MAX_SINCE_S {
        return Err(format!("{s:?} must be between 1s and 31d"));
    }
    Ok(seconds)
}

/// `GET /api/v1/functions/{name}/executions?status=5xx&since=1h&limit=100`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One stored call, newest first in a listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecutionInfo {
    pub at: DateTime<Utc>,
    pub node: String,
    #[serde(flatten)]
    pub record: ExecutionRecord,
}

/// `GET /api/v1/functions/{name}/stats?since=1h&by=minute`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `minute` or `hour`: one row per bucket; none: one row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Figures of the calls in one window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsRow {
    /// Start of the bucket (the window's start without `by`).
    pub from: DateTime<Utc>,
    pub calls: u64,
    /// Answers by class: 2xx, 3xx, 4xx, 5xx, and 0 (no answer).
    pub status_2xx: u64,
    pub status_3xx: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub no_answer: u64,
    /// Calls the proxy refused (queue full, start failed, …).
    pub rejected: u64,
    /// Total duration percentiles, milliseconds (none without calls).
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub cold_starts: u64,
    pub paused_starts: u64,
    /// Share of calls that started an instance (0–1).
    pub cold_start_share: f64,
    /// Mean start time of cold starts, milliseconds.
    pub cold_start_ms: Option<f64>,
    /// Mean and largest time calls waited for a slot, milliseconds.
    pub queue_mean_ms: Option<f64>,
    pub queue_max_ms: Option<f64>,
}

/// `…/stats`: the function and its rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub function: String,
    pub since: DateTime<Utc>,
    pub by: Option<String>,
    pub total: StatsRow,
    pub rows: Vec<StatsRow>,
    /// The function's CPU, memory, OOM kills and restarts as the nodes last
    /// reported them (not bound by `since`: counters count from each
    /// proxy's start; see `crate::usage`).
    #[serde(default)]
    pub resources: Option<crate::usage::UsageTotal>,
}

/// A proxy the control plane has heard from (route watch).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProxyStatus {
    pub node: String,
    /// The route revision it serves.
    pub revision: i64,
    /// Seconds since it last polled the routes.
    pub seen_s_ago: u64,
    /// Instances it reported, when it reported in the last minute.
    pub instances: Option<u64>,
}

/// A function, its instances by state (as the proxies last reported them)
/// and its calls of the last 5 minutes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionStatus {
    pub name: String,
    pub active_version: Option<i32>,
    /// Instances by state (`ready`, `paused`, `resuming`, …), all nodes.
    pub instances: std::collections::BTreeMap<String, u64>,
    /// Calls in the last 5 minutes and how many failed (5xx, no answer).
    pub calls_5m: u64,
    pub errors_5m: u64,
}

/// Most instances one node report may list.
pub const MAX_REPORTED_INSTANCES: usize = 100_000;

/// One instance as its proxy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceReport {
    pub function: String,
    pub deployment_id: i64,
    /// Container id (short form).
    pub id: String,
    /// `ready`, `paused`, `resuming`, `gone`.
    pub state: String,
    pub in_flight: u32,
}

/// `POST /api/v1/nodes/{node}/status`: a proxy's instances, every few
/// seconds. Kept in memory by the control plane; a node not heard from
/// for a minute is left out of `cpub status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeReport {
    pub instances: Vec<InstanceReport>,
    /// Resource use and keep-warm figures per function (issues 11, 15).
    #[serde(default)]
    pub functions: Vec<crate::usage::FunctionReport>,
    /// The node's keep-warm window in seconds.
    #[serde(default)]
    pub keep_warm_window_s: Option<u64>,
    /// Failed starts other than crashes, per function that had one (issue
    /// 11; `crate::start_failures`). Left out when empty, so that a
    /// control plane from before it (which refuses unknown keys) takes the
    /// reports of a node without failures; for the others the proxy sends
    /// the report without it once such a control plane refused it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_failures: Vec<crate::start_failures::FunctionStartFailures>,
}

/// A recent start failure: a crash a proxy reported (`reason` `crash`,
/// from `function_crashes`), or the last failed start of another kind
/// (`not_ready`, `runtime`, `capacity`) in a node's report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StartFailure {
    pub function: String,
    pub node: String,
    /// `crash`, or one of `crate::start_failures::REASONS` (absent in the
    /// answers of a control plane from before it, where every row is a
    /// crash).
    #[serde(default = "crash_reason")]
    pub reason: String,
    /// What went wrong, on one line: the pool's message for the other
    /// kinds; for a crash none (its output is in `cpub describe`).
    #[serde(default)]
    pub message: Option<String>,
    /// How many times: crashes counted by the control plane, the others
    /// since the node's proxy started (0 in older answers: see [`Self::times`]).
    #[serde(default)]
    pub count: i64,
    /// For the other kinds, the node's failed starts of the function by
    /// reason, since its proxy started (`count` is the one of `reason`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub counts: std::collections::BTreeMap<String, i64>,
    /// A crash's exit code (none for the other kinds).
    pub exit_code: Option<i32>,
    /// Whether it happened while the instance started (always, for the
    /// other kinds).
    pub during_start: bool,
    /// The crash count (kept for older clients; 0 for the other kinds).
    pub crashes: i64,
    /// When the last one happened.
    pub at: DateTime<Utc>,
}

fn crash_reason() -> String {
    crate::start_failures::CRASH.to_owned()
}

impl StartFailure {
    /// How many times it happened, also in an older control plane's
    /// answer (which has only `crashes`).
    pub fn times(&self) -> i64 {
        self.count.max(self.crashes)
    }
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlatformStatus {
    pub route_revision: i64,
    pub proxies: Vec<ProxyStatus>,
    pub functions: Vec<FunctionStatus>,
    pub start_failures: Vec<StartFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> ExecutionRecord {
        ExecutionRecord {
            at_us: 1_700_000_000_000_000,
            function: "hello".into(),
            deployment_id: 1,
            version: 1,
            instance: Some("0123456789ab".into()),
            request_id: "rid-1".into(),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            method: "GET".into(),
            status: 200,
            start: Some(StartKind::Warm),
            queue_us: 0,
            start_us: 0,
            upstream_us: 300,
            total_us: 400,
            bytes_in: 80,
            bytes_out: 120,
            rejection: None,
        }
    }

    #[test]
    fn records_round_trip_and_validate() {
        let r = record();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ExecutionRecord>(&json).unwrap(), r);
        r.validate().unwrap();
        let bad = [
            ExecutionRecord {
                function: "Bad Name".into(),
                ..record()
            },
            ExecutionRecord {
                request_id: "a b".into(),
                ..record()
            },
            ExecutionRecord {
                method: "G\nET".into(),
                ..record()
            },
            ExecutionRecord {
                trace_id: Some("XYZ".into()),
                ..record()
            },
            ExecutionRecord {
                status: 1000,
                ..record()
            },
            ExecutionRecord {
                total_us: u64::MAX,
                ..record()
            },
            ExecutionRecord {
                rejection: Some("Queue Full".into()),
                ..record()
            },
            ExecutionRecord {
                deployment_id: 0,
                ..record()
            },
        ];
        let fields: Vec<_> = bad.iter().map(|r| r.validate().unwrap_err().0).collect();
        assert_eq!(
            fields,
            [
                "function",
                "request_id",
                "method",
                "trace_id",
                "status",
                "total_us",
                "rejection",
                "deployment_id"
            ]
        );
        assert!(
            serde_json::from_str::<ExecutionRecord>(
                &json.replace("\"status\"", "\"x\":1,\"status\"")
            )
            .is_err()
        );
    }

    #[test]
    fn borrowed_records_decode_like_owned_ones() {
        let mut r = record();
        // Escaped in JSON: decoded owned, same value.
        r.method = "G\\E\"T".into();
        let batch = ExecutionBatch {
            node: "n".into(),
            batch: "b-1".into(),
            records: vec![r.clone(), record()],
        };
        let json = serde_json::to_string(&batch).unwrap();
        let got: ExecutionBatchRef<'_> = serde_json::from_str(&json).unwrap();
        assert_eq!((got.node.as_str(), got.batch.as_str()), ("n", "b-1"));
        assert_eq!(got.records, [r.borrowed(), record().borrowed()]);
        assert!(matches!(got.records[0].method.0, Cow::Owned(_)));
        assert!(matches!(got.records[1].method.0, Cow::Borrowed(_)));
        assert!(matches!(got.records[1].function.0, Cow::Borrowed(_)));
        // The same rules: unknown fields and wrong types are refused.
        let unknown = json.replacen("\"status\"", "\"x\":1,\"status\"", 1);
        assert!(serde_json::from_str::<ExecutionBatchRef<'_>>(&unknown).is_err());
        let wrong = json.replacen("\"method\":\"GET\"", "\"method\":7", 1);
        assert!(serde_json::from_str::<ExecutionBatchRef<'_>>(&wrong).is_err());
        // Optional fields may be missing.
        let bare = r#"{"at_us":1,"function":"f","deployment_id":1,"version":1,"request_id":"r","method":"GET","status":0,"queue_us":0,"start_us":0,"upstream_us":0,"total_us":0,"bytes_in":0,"bytes_out":0}"#;
        let b: ExecutionRecordRef<'_> = serde_json::from_str(bare).unwrap();
        assert_eq!(
            (b.instance, b.trace_id, b.start, b.rejection),
            (None, None, None, None)
        );
    }

    #[test]
    fn traceparent() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_of_traceparent(tp),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
        assert_eq!(
            trace_id_of_traceparent(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            trace_id_of_traceparent(b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id_of_traceparent(b"00-4BF92F"), None);
        assert_eq!(trace_id_of_traceparent(b""), None);
    }

    /// The table's answer is the rule's, as written plainly.
    fn trace_id_rule(b: &[u8]) -> bool {
        b.len() == TRACE_ID_LEN
            && b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
            && b.iter().any(|&c| c != b'0')
    }

    proptest::proptest! {
        #[test]
        fn is_trace_id_follows_the_rule(
            b in proptest::collection::vec(proptest::prop_oneof![
                proptest::sample::select(b"0123456789abcdefABCDEFg-\x00\xff".to_vec()),
                proptest::num::u8::ANY,
            ], 30..=34),
        ) {
            proptest::prop_assert_eq!(is_trace_id(&b), trace_id_rule(&b));
        }
    }

    #[test]
    fn trace_ids_by_the_table() {
        for (id, valid) in [
            (&b"4bf92f3577b34da6a3ce929d0e0e4736"[..], true),
            (b"00000000000000000000000000000001", true),
            (b"10000000000000000000000000000000", true),
            (b"00000000000000000000000000000000", false),
            (b"4BF92F3577B34DA6A3CE929D0E0E4736", false),
            (b"4bf92f3577b34da6a3ce929d0e0e473g", false),
            (b"4bf92f3577b34da6a3ce929d0e0e473", false),
            (b"4bf92f3577b34da6a3ce929d0e0e47366", false),
            (b"", false),
        ] {
            assert_eq!(is_trace_id(id), valid, "{}", String::from_utf8_lossy(id));
            assert_eq!(trace_id_rule(id), valid);
        }
    }

    #[test]
    fn status_filters_and_durations() {
        assert_eq!(StatusFilter::parse("5xx").unwrap().range(), (500, 599));
        assert_eq!(StatusFilter::parse("404").unwrap().range(), (404, 404));
        for bad in ["6xx", "5x", "abc", "", "0xx", "99", "5000"] {
            assert!(StatusFilter::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_since("90s"), Ok(90));
        assert_eq!(parse_since("10m"), Ok(600));
        assert_eq!(parse_since("1h"), Ok(3600));
        assert_eq!(parse_since("2d"), Ok(172_800));
        for bad in [
            "",
            "h",
            "1",
            "0m",
            "1w",
            "-1h",
            "32d",
            "99999999999999999999d",
            "1é",
        ] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_reports_with_and_without_start_failures_read_both_ways() {
        // An older proxy's report: no failures.
        let old = r#"{"instances":[{"function":"f","deployment_id":1,"id":"abc","state":"ready","in_flight":0}],
            "functions":[],"keep_warm_window_s":60}"#;
        let read: NodeReport = serde_json::from_str(old).unwrap();
        assert!(read.start_failures.is_empty());
        // Without failures, the key is left out: a control plane that
        // refuses unknown keys takes the report.
        let text = serde_json::to_string(&read).unwrap();
        assert!(!text.contains("start_failures"), "{text}");
        // With them, they travel.
        let mut with = read;
        with.start_failures
            .push(crate::start_failures::FunctionStartFailures {
                function: "f".into(),
                counts: [("not_ready".to_owned(), 2)].into(),
                last: crate::start_failures::LastStartFailure {
                    reason: "not_ready".into(),
                    message: "not ready within 2000 ms".into(),
                    age_ms: 1200,
                },
            });
        let text = serde_json::to_string(&with).unwrap();
        let back: NodeReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back.start_failures, with.start_failures);
    }

    /// `StartFailure` as clients from before the other kinds read it.
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct OldStartFailure {
        function: String,
        node: String,
        exit_code: Option<i32>,
        during_start: bool,
        crashes: i64,
        at: DateTime<Utc>,
    }

    #[test]
    fn status_rows_read_both_ways() {
        // An older control plane's row (a crash).
        let old = r#"{"function":"boom","node":"n1","exit_code":3,"during_start":true,
            "crashes":4,"at":"2026-01-02T03:04:05Z"}"#;
        let row: StartFailure = serde_json::from_str(old).unwrap();
        assert_eq!(row.reason, "crash");
        assert_eq!((row.count, row.times()), (0, 4));
        assert_eq!(row.message, None);
        assert!(row.counts.is_empty());
        // A new row of another kind, read by an older client.
        let new = StartFailure {
            function: "slow".into(),
            node: "n1".into(),
            reason: "not_ready".into(),
            message: Some("not ready within 2000 ms".into()),
            count: 2,
            counts: [("not_ready".to_owned(), 2)].into(),
            exit_code: None,
            during_start: true,
            crashes: 0,
            at: "2026-01-02T03:04:06Z".parse().unwrap(),
        };
        let text = serde_json::to_string(&new).unwrap();
        let older: OldStartFailure = serde_json::from_str(&text).unwrap();
        assert_eq!((older.function.as_str(), older.crashes), ("slow", 0));
        let back: StartFailure = serde_json::from_str(&text).unwrap();
        assert_eq!(back, new);
        assert_eq!(back.times(), 2);
    }
}
