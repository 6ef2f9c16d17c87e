//! Function logs on the wire: the batches a proxy ships
//! (`POST /api/v1/logs`), the lines `cpub logs` reads
//! (`GET /api/v1/functions/{name}/logs`) and that query, and the one rule
//! that cleans a line (both the node and the control plane apply it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Path a proxy posts its batches to, below the control plane's base URL.
pub const INGEST_PATH: &str = "/api/v1/logs";

/// Longest line kept, in bytes; the rest is cut and the line says so.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Most lines in one batch.
pub const MAX_BATCH_LINES: usize = 10_000;
/// Largest batch body the control plane reads, in bytes.
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Longest batch id, in bytes.
pub const MAX_BATCH_ID_BYTES: usize = 128;
/// Most lines one query answers.
pub const MAX_QUERY_LINES: u32 = 5_000;
/// Longest long poll of a follow (`wait_s`).
pub const MAX_WAIT_S: u64 = 30;

/// Where a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Written by the platform, not the function (e.g. "N lines dropped").
    System,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
            Self::System => "system",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "stdout" => Some(Self::Stdout),
            "stderr" => Some(Self::Stderr),
            "system" => Some(Self::System),
            _ => None,
        }
    }
}

/// A batch of lines from one node (`POST /api/v1/logs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogBatch {
    pub node: String,
    /// Unique per proxy process and batch (`<boot id>-<sequence>`: 1 to
    /// [`MAX_BATCH_ID_BYTES`] letters, digits and `-`), so that a batch sent
    /// again after its answer was lost is stored once. Proxies from before
    /// it send none; their batches are not deduplicated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,
    /// Lines grouped by the instance that printed them, in printing order.
    pub groups: Vec<LogGroup>,
}

/// Lines of one instance of one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogGroup {
    pub function: String,
    pub deployment_id: i64,
    /// The container's short id (12 hex digits); empty for platform lines
    /// that belong to no one instance.
    pub instance: String,
    /// Which log file the lines were read from, as the proxy names it (1
    /// to [`MAX_FILE_ID_BYTES`] letters, digits and `-`: its inode and its
    /// first record's time); with each line's [`LogEntry::end`] and
    /// stream, where the line is in that file. The control plane keeps,
    /// per node, instance, file and stream, the end of the last line it
    /// stored and stores none that ends at or before it again: a proxy
    /// killed before it saved how far it shipped reads those lines again
    /// (a stream's lines come in file order, each ending after the one
    /// before). Proxies from before it send none; a control plane from
    /// before it refuses the field, and the proxy then sends none for a
    /// while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub lines: Vec<LogEntry>,
}

/// One line as the node captured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogEntry {
    /// When it was printed, in nanoseconds since the Unix epoch.
    pub at_ns: i64,
    pub stream: LogStream,
    /// The call the instance served while it printed the line (instances
    /// with `concurrency = 1` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub line: String,
    /// The file offset just after the line's last record (at most
    /// `i64::MAX`; see [`LogGroup::file`]): the same line read again has
    /// the same end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
}

/// What the control plane did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LogIngest {
    /// Lines stored.
    pub stored: u64,
    /// Lines of functions or deployments that no longer exist.
    pub unknown: u64,
    /// The batch (its `batch` id) had been stored before: nothing was
    /// stored this time.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Lines not stored because they were stored before (at or before the
    /// end of the last line stored from their file and stream, see
    /// [`LogGroup::file`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeated: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Longest [`LogGroup::file`].
pub const MAX_FILE_ID_BYTES: usize = 64;

/// Whether `id` is a well-formed file id (see [`LogGroup::file`]).
pub fn is_valid_file_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_FILE_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Whether `id` is a well-formed batch id (see [`LogBatch::batch`]).
pub fn is_valid_batch_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_BATCH_ID_BYTES
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// `GET /api/v1/functions/{name}/logs`: which lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines after this cursor (a line's `id`), oldest first; without
    /// it (and without `since_s`) the newest `limit` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// Only lines printed in the last `since_s` seconds, oldest first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
    /// An instance id or a prefix of it (at least 4 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// At most this many lines (1 to [`MAX_QUERY_LINES`], default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// With `after`: wait up to this many seconds for a line to come
    /// (long poll, at most [`MAX_WAIT_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_s: Option<u64>,
}

/// One stored line, as `cpub logs` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Cursor: lines of a function are numbered in the order they were
    /// stored.
    pub id: i64,
    /// The function that printed it (empty from a control plane that
    /// predates the field).
    #[serde(default)]
    pub function: String,
    pub at: DateTime<Utc>,
    pub version: i32,
    pub node: String,
    pub instance: String,
    pub stream: LogStream,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub line: String,
}

/// The answer to a [`LogQuery`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    pub lines: Vec<LogLine>,
    /// The cursor to ask `after` next (the last line's id, or the one asked
    /// when nothing came).
    pub next: i64,
}

/// A line made safe to store and show: bytes that are not UTF-8 become
/// U+FFFD, control characters other than tab too (PostgreSQL text holds no
/// NUL; a terminal must not run escapes), one trailing `\r` goes, and at
/// most [`MAX_LINE_BYTES`] are kept, followed by a note of how many were
/// cut.
pub fn clean_line(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let cut = raw.len().saturating_sub(MAX_LINE_BYTES);
    let kept = raw.get(..MAX_LINE_BYTES).unwrap_or(raw);
    let text = String::from_utf8_lossy(kept);
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_control() && c != '\t' {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect();
    if cut > 0 {
        out.push_str(&format!(" […{cut} more bytes cut]"));
    }
    out
}

/// Whether `line` is what [`clean_line`] makes (the control plane checks
/// what a node sends; a node could be anyone holding a token).
pub fn is_clean(line: &str) -> bool {
    line.len() <= MAX_LINE_BYTES + 40 && !line.chars().any(|c| c.is_control() && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cleaned_and_bounded() {
        assert_eq!(clean_line(b"hello\tworld\r"), "hello\tworld");
        assert_eq!(
            clean_line(b"a\0b\x1b[31m\xff"),
            "a\u{fffd}b\u{fffd}[31m\u{fffd}"
        );
        let huge = vec![b'x'; MAX_LINE_BYTES + 100];
        let cleaned = clean_line(&huge);
        assert!(cleaned.starts_with(&"x".repeat(MAX_LINE_BYTES)));
        assert!(
            cleaned.ends_with("[…100 more bytes cut]"),
            "{}",
            &cleaned[MAX_LINE_BYTES..]
        );
        assert!(is_clean(&cleaned));
        assert!(!is_clean("a\nb"));
        // A multi-byte character cut at the limit becomes U+FFFD, no panic.
        let mut accents = vec![b'a'; MAX_LINE_BYTES - 1];
        accents.extend_from_slice("é".as_bytes());
        assert!(clean_line(&accents).ends_with("\u{fffd} […1 more bytes cut]"));
    }

    #[test]
    fn batch_ids_are_optional_and_checked() {
        let old: LogBatch = serde_json::from_str(r#"{"node":"n","groups":[]}"#).unwrap();
        assert_eq!(old.batch, None);
        let text = serde_json::to_string(&old).unwrap();
        assert!(!text.contains("batch"), "{text}");
        let new: LogBatch =
            serde_json::from_str(r#"{"node":"n","batch":"abc-1","groups":[]}"#).unwrap();
        assert_eq!(new.batch.as_deref(), Some("abc-1"));
        assert!(is_valid_batch_id("0123abcd-42"));
        for bad in [
            "",
            "a b",
            "a/../b",
            "é",
            &"x".repeat(MAX_BATCH_ID_BYTES + 1),
        ] {
            assert!(!is_valid_batch_id(bad), "{bad:?}");
        }
        assert!(is_valid_batch_id(&"x".repeat(MAX_BATCH_ID_BYTES)));
        // An answer from a control plane without deduplication.
        let answer: LogIngest = serde_json::from_str(r#"{"stored":1,"unknown":0}"#).unwrap();
        assert!(!answer.duplicate);
    }

    #[test]
    fn a_line_names_its_function_and_old_answers_still_parse() {
        let old = r#"{"id":1,"at":"2026-11-29T21:47:38Z","version":1,"node":"n","instance":"ab","stream":"stdout","line":"x"}"#;
        let line: LogLine = serde_json::from_str(old).unwrap();
        assert_eq!(line.function, "");
        let line = LogLine {
            function: "talky".into(),
            ..line
        };
        let text = serde_json::to_string(&line).unwrap();
        assert!(text.contains(r#""function":"talky""#), "{text}");
    }

    #[test]
    fn query_round_trips_through_a_query_string() {
        let q = LogQuery {
            after: Some(5),
            request_id: Some("abc".into()),
            wait_s: Some(10),
            ..LogQuery::default()
        };
        let text = serde_urlencoded::to_string(&q).unwrap();
        assert_eq!(text, "after=5&request_id=abc&wait_s=10");
        let back: LogQuery = serde_urlencoded::from_str(&text).unwrap();
        assert_eq!(back, q);
        assert!(serde_urlencoded::from_str::<LogQuery>("bogus=1").is_err());
    }
}
