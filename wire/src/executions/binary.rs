//! The binary form of an execution batch: what a proxy posts to
//! `POST /api/v1/executions` with `content-type:` [`CONTENT_TYPE`]. The
//! control plane accepts it beside the JSON form ([`super::ExecutionBatch`],
//! still what older proxies and every spool file send) and decodes both
//! into the same [`ExecutionBatchRef`], strings borrowed from the body.
//!
//! Why a second form: decoding JSON was about 70 % of the control plane's
//! CPU per record (perf during `scripts/ingest-bench.sh`), and encoding it
//! a large part of the proxy's; this form is decoded by reading fixed
//! fields in order, and names each function deployment once per body.
//! Written by hand rather than with a serde format crate: a
//! non-self-describing format would need a second set of record structs
//! (the JSON ones skip absent fields), and the function table is not a
//! serde shape.
//!
//! Layout (integers little-endian; a string is a `u8` length and as many
//! bytes of UTF-8; an optional string is empty when absent):
//!
//! ```text
//! "CPX1"  node: str  batch: str
//! u16 functions, each: name: str  deployment_id: i64  version: i32
//! u32 records, each:
//!   function: u16 (index into the table)  at_us: i64
//!   instance: str?  request_id: str  trace_id: str?  method: str
//!   status: u16  start: u8 (0 none, 1 cold, 2 paused, 3 warm)
//!   queue_us start_us upstream_us total_us bytes_in bytes_out: u64
//!   rejection: str?
//! ```
//!
//! The decoder checks the framing only (lengths, UTF-8, table indexes,
//! counts against [`super::MAX_BATCH_RECORDS`], no trailing bytes); the
//! fields' rules are [`ExecutionRecordRef::validate`]'s, as for JSON.

use std::borrow::Cow;
use std::collections::HashMap;

use super::{ExecutionBatchRef, ExecutionRecordRef, MAX_BATCH_RECORDS, StartKind, Text};

/// The media type of the binary form.
pub const CONTENT_TYPE: &str = "application/vnd.containerpub.executions-v1";
/// The first bytes of a binary batch.
pub const MAGIC: &[u8; 4] = b"CPX1";
// A table index (one entry at most per record) fits its u16.
const _: () = assert!(MAX_BATCH_RECORDS < u16::MAX as usize);

/// Bytes of the shortest record (every string empty).
const MIN_RECORD: usize = 2 + 8 + 4 + 2 + 1 + 6 * 8 + 1;
/// Bytes of the shortest function table entry.
const MIN_FUNCTION: usize = 1 + 8 + 4;

/// Builds a binary batch record by record (the proxy's side).
#[derive(Debug, Default)]
pub struct Encoder {
    /// The function table: name, deployment id, version.
    functions: Vec<(String, i64, i32)>,
    /// Table index by deployment id.
    index: HashMap<i64, u16>,
    records: Vec<u8>,
    count: usize,
}

impl Encoder {
    /// Records added since the last [`Encoder::finish`].
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds a record; false (and nothing added) when the batch already
    /// holds [`MAX_BATCH_RECORDS`]. Strings longer than 255 bytes (no valid
    /// field is) are cut.
    pub fn push(&mut self, r: &ExecutionRecordRef<'_>) -> bool {
        let text = opt_bytes;
        self.push_bytes(&RecordBytes {
            function: r.function.as_str(),
            deployment_id: r.deployment_id,
            version: r.version,
            at_us: r.at_us,
            instance: text(&r.instance),
            request_id: r.request_id.as_str().as_bytes(),
            trace_id: text(&r.trace_id),
            method: r.method.as_str().as_bytes(),
            status: r.status,
            start: r.start,
            queue_us: r.queue_us,
            start_us: r.start_us,
            upstream_us: r.upstream_us,
            total_us: r.total_us,
            bytes_in: r.bytes_in,
            bytes_out: r.bytes_out,
            rejection: text(&r.rejection),
        })
    }

    /// [`Encoder::push`] of a record whose strings are bytes of UTF-8 (the
    /// proxy's inline copies of `str`s and ASCII): nothing is validated
    /// again on the way out, which was a sixth of what a record cost the
    /// proxy (callgrind). Bytes that are not UTF-8 make the control plane
    /// refuse the whole batch, naming the field.
    pub fn push_bytes(&mut self, r: &RecordBytes<'_>) -> bool {
        if self.count >= MAX_BATCH_RECORDS {
            return false;
        }
        let function = r.function;
        let known = self.index.get(&r.deployment_id).copied().filter(|&i| {
            self.functions
                .get(usize::from(i))
                .is_some_and(|(name, _, version)| name == function && *version == r.version)
        });
        // At most one table entry per record: fewer than u16::MAX.
        let at = known.unwrap_or_else(|| {
            let at = self.functions.len() as u16;
            self.functions
                .push((function.to_owned(), r.deployment_id, r.version));
            self.index.insert(r.deployment_id, at);
            at
        });
        let out = &mut self.records;
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&r.at_us.to_le_bytes());
        put_bytes(out, r.instance);
        put_bytes(out, r.request_id);
        put_bytes(out, r.trace_id);
        put_bytes(out, r.method);
        out.extend_from_slice(&r.status.to_le_bytes());
        out.push(match r.start {
            None => 0,
            Some(StartKind::Cold) => 1,
            Some(StartKind::Paused) => 2,
            Some(StartKind::Warm) => 3,
        });
        for v in [
            r.queue_us,
            r.start_us,
            r.upstream_us,
            r.total_us,
            r.bytes_in,
            r.bytes_out,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        put_bytes(out, r.rejection);
        self.count += 1;
        true
    }

    /// The batch of the records added since the last call, and a fresh
    /// start.
    pub fn finish(&mut self, node: &str, batch: &str) -> Vec<u8> {
        let table: usize = self.functions.iter().map(|f| f.0.len() + 13).sum();
        let mut out = Vec::with_capacity(4 + 2 + 256 * 2 + table + 4 + self.records.len());
        out.extend_from_slice(MAGIC);
        put_bytes(&mut out, node.as_bytes());
        put_bytes(&mut out, batch.as_bytes());
        out.extend_from_slice(&(self.functions.len() as u16).to_le_bytes());
        for (name, deployment_id, version) in &self.functions {
            put_bytes(&mut out, name.as_bytes());
            out.extend_from_slice(&deployment_id.to_le_bytes());
            out.extend_from_slice(&version.to_le_bytes());
        }
        out.extend_from_slice(&(self.count as u32).to_le_bytes());
        out.extend_from_slice(&self.records);
        self.functions.clear();
        self.index.clear();
        self.records.clear();
        self.count = 0;
        out
    }
}

/// A record as [`Encoder::push_bytes`] takes it: [`ExecutionRecordRef`]'s
/// fields, the optional strings empty when absent, every string bytes of
/// UTF-8.
#[derive(Debug, Clone, Copy)]
pub struct RecordBytes<'a> {
    pub function: &'a str,
    pub deployment_id: i64,
    pub version: i32,
    pub at_us: i64,
    pub instance: &'a [u8],
    pub request_id: &'a [u8],
    pub trace_id: &'a [u8],
    pub method: &'a [u8],
    pub status: u16,
    pub start: Option<StartKind>,
    pub queue_us: u64,
    pub start_us: u64,
    pub upstream_us: u64,
    pub total_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub rejection: &'a [u8],
}

/// An optional string's bytes, empty when absent.
fn opt_bytes<'a>(t: &'a Option<Text<'_>>) -> &'a [u8] {
    t.as_ref().map_or(&b""[..], |t| t.as_str().as_bytes())
}

/// Appends bytes of UTF-8 as a string: the length (at most 255: longer
/// ones are cut before a character's first byte, so UTF-8 stays UTF-8) and
/// the bytes.
fn put_bytes(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len().min(255);
    // A continuation byte (0b10xx_xxxx) is inside a character.
    while n < s.len() && s.get(n).is_some_and(|b| b & 0xC0 == 0x80) {
        n -= 1;
    }
    out.push(n as u8);
    out.extend_from_slice(s.get(..n).unwrap_or_default());
}

/// Why a body is not a binary batch: the field and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct DecodeError {
    /// Where (`records[3].method`, `functions[0].name`, `magic`, …).
    pub field: String,
    pub problem: &'static str,
}

/// A field's fault before its place in the batch is known.
type Fault = (&'static str, &'static str);

const ENDS: &str = "the body ends inside it";

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Fault> {
        let end = self.at.checked_add(n).ok_or((field, ENDS))?;
        let bytes = self.buf.get(self.at..end).ok_or((field, ENDS))?;
        self.at = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Fault> {
        self.take(N, field)?.try_into().map_err(|_| (field, ENDS))
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, Fault> {
        let [n] = self.array::<1>(field)?;
        let bytes = self.take(usize::from(n), field)?;
        std::str::from_utf8(bytes).map_err(|_| (field, "not UTF-8"))
    }

    fn text(&mut self, field: &'static str) -> Result<Text<'a>, Fault> {
        self.str(field).map(|s| Text(Cow::Borrowed(s)))
    }

    fn optional(&mut self, field: &'static str) -> Result<Option<Text<'a>>, Fault> {
        let s = self.str(field)?;
        Ok((!s.is_empty()).then_some(Text(Cow::Borrowed(s))))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, Fault> {
        self.array(field).map(u64::from_le_bytes)
    }

    fn left(&self) -> usize {
        self.buf.len().saturating_sub(self.at)
    }
}

fn at(place: impl FnOnce() -> String) -> impl FnOnce(Fault) -> DecodeError {
    move |(field, problem)| DecodeError {
        field: format!("{}{field}", place()),
        problem,
    }
}

/// Decodes a binary batch (framing only; see the module's header).
pub fn decode(body: &[u8]) -> Result<ExecutionBatchRef<'_>, DecodeError> {
    let top = |f: Fault| at(String::new)(f);
    let mut r = Reader { buf: body, at: 0 };
    if r.take(4, "magic").map_err(top)? != MAGIC {
        return Err(top(("magic", "not a binary execution batch (CPX1)")));
    }
    let node = r.text("node").map_err(top)?;
    let batch = r.text("batch").map_err(top)?;
    let functions = usize::from(u16::from_le_bytes(r.array("functions").map_err(top)?));
    if functions > MAX_BATCH_RECORDS || functions * MIN_FUNCTION > r.left() {
        return Err(top(("functions", "more than the body can hold")));
    }
    let mut table = Vec::with_capacity(functions);
    for i in 0..functions {
        let place = || format!("functions[{i}].");
        let name = r.str("name").map_err(at(place))?;
        let deployment_id = i64::from_le_bytes(r.array("deployment_id").map_err(at(place))?);
        let version = i32::from_le_bytes(r.array("version").map_err(at(place))?);
        table.push((name, deployment_id, version));
    }
    let count = u32::from_le_bytes(r.array("records").map_err(top)?) as usize;
    if count > MAX_BATCH_RECORDS {
        return Err(top(("records", "more than a batch may hold")));
    }
    if count.saturating_mul(MIN_RECORD) > r.left() {
        return Err(top(("records", "more than the body can hold")));
    }
    let mut records = Vec::with_capacity(count);
    for i in 0..count {
        let record = read_record(&mut r, &table).map_err(at(|| format!("records[{i}].")))?;
        records.push(record);
    }
    if r.left() != 0 {
        return Err(top(("records", "bytes after the last record")));
    }
    Ok(ExecutionBatchRef {
        node,
        batch,
        records,
    })
}

fn read_record<'a>(
    r: &mut Reader<'a>,
    table: &[(&'a str, i64, i32)],
) -> Result<ExecutionRecordRef<'a>, Fault> {
    let function = u16::from_le_bytes(r.array("function")?);
    let &(name, deployment_id, version) = table
        .get(usize::from(function))
        .ok_or(("function", "not an index into the function table"))?;
    let at_us = i64::from_le_bytes(r.array("at_us")?);
    let instance = r.optional("instance")?;
    let request_id = r.text("request_id")?;
    let trace_id = r.optional("trace_id")?;
    let method = r.text("method")?;
    let status = u16::from_le_bytes(r.array("status")?);
    let [start] = r.array("start")?;
    let start = match start {
        0 => None,
        1 => Some(StartKind::Cold),
        2 => Some(StartKind::Paused),
        3 => Some(StartKind::Warm),
        _ => return Err(("start", "not 0 to 3")),
    };
    Ok(ExecutionRecordRef {
        at_us,
        function: Text(Cow::Borrowed(name)),
        deployment_id,
        version,
        instance,
        request_id,
        trace_id,
        method,
        status,
        start,
        queue_us: r.u64("queue_us")?,
        start_us: r.u64("start_us")?,
        upstream_us: r.u64("upstream_us")?,
        total_us: r.u64("total_us")?,
        bytes_in: r.u64("bytes_in")?,
        bytes_out: r.u64("bytes_out")?,
        rejection: r.optional("rejection")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executions::ExecutionRecord;
    use proptest::prelude::*;

    fn record(i: i64) -> ExecutionRecord {
        ExecutionRecord {
            at_us: 1_700_000_000_000_000 + i,
            function: if i % 3 == 0 { "alpha" } else { "beta-2" }.into(),
            deployment_id: if i % 3 == 0 { 7 } else { 9 },
            version: if i % 3 == 0 { 3 } else { 1 },
            instance: (i % 2 == 0).then(|| "0123456789ab".into()),
            request_id: format!("rid-{i}"),
            trace_id: (i % 4 == 0).then(|| "4bf92f3577b34da6a3ce929d0e0e4736".into()),
            method: "POST".into(),
            status: 200 + (i % 300) as u16,
            start: [
                None,
                Some(StartKind::Cold),
                Some(StartKind::Paused),
                Some(StartKind::Warm),
            ][(i % 4) as usize],
            queue_us: i as u64,
            start_us: 2 * i as u64,
            upstream_us: 3 * i as u64,
            total_us: u64::MAX - i as u64,
            bytes_in: 10,
            bytes_out: 1 << 40,
            rejection: (i % 5 == 0).then(|| "queue_full".into()),
        }
    }

    fn encode(records: &[ExecutionRecord]) -> Vec<u8> {
        let mut enc = Encoder::default();
        for r in records {
            assert!(enc.push(&r.borrowed()));
        }
        enc.finish("node-1", "boot-7")
    }

    #[test]
    fn batches_round_trip_with_each_function_once() {
        let records: Vec<ExecutionRecord> = (0..50).map(record).collect();
        let mut enc = Encoder::default();
        for r in &records {
            enc.push(&r.borrowed());
        }
        assert_eq!(enc.len(), 50);
        let body = enc.finish("node-1", "boot-7");
        assert!(enc.is_empty());
        let batch = decode(&body).unwrap();
        assert_eq!(
            (batch.node.as_str(), batch.batch.as_str()),
            ("node-1", "boot-7")
        );
        let back: Vec<ExecutionRecordRef<'_>> = records.iter().map(|r| r.borrowed()).collect();
        assert_eq!(batch.records, back);
        // Its JSON is the JSON form of the records sent.
        let json = serde_json::to_vec(&batch).unwrap();
        let owned: crate::executions::ExecutionBatch = serde_json::from_slice(&json).unwrap();
        assert_eq!(owned.records, records);
        assert_eq!(json, serde_json::to_vec(&owned).unwrap());
        // Two deployments: the names are in the body once each.
        let count = |name: &[u8]| body.windows(name.len()).filter(|w| *w == name).count();
        assert_eq!((count(b"alpha"), count(b"beta-2")), (1, 1));
        // The encoder starts afresh.
        assert_eq!(decode(&enc.finish("n", "b")).unwrap().records.len(), 0);
    }

    #[test]
    fn a_deployment_id_seen_with_another_name_gets_its_own_entry() {
        let mut a = record(0);
        let mut b = record(3);
        b.function = "other".into();
        a.deployment_id = 5;
        b.deployment_id = 5;
        let batch_body = encode(&[a.clone(), b.clone(), a.clone()]);
        let batch = decode(&batch_body).unwrap();
        let names: Vec<&str> = batch.records.iter().map(|r| r.function.as_str()).collect();
        assert_eq!(names, ["alpha", "other", "alpha"]);
    }

    #[test]
    fn a_long_string_is_cut_before_a_character_and_stays_utf8() {
        // 2-byte characters: 255 would split one, 254 does not.
        let long = "é".repeat(200);
        let mut r = record(1);
        r.request_id = long.clone();
        r.method = format!("a{long}");
        let batch_body = encode(&[r]);
        let batch = decode(&batch_body).unwrap();
        let got = &batch.records[0];
        assert_eq!(got.request_id.as_str(), &long[..254]);
        assert_eq!(got.method.as_str().len(), 255);
        assert!(got.method.as_str().starts_with('a'));
    }

    #[test]
    fn a_full_batch_refuses_more() {
        let mut enc = Encoder::default();
        let r = record(1);
        for _ in 0..MAX_BATCH_RECORDS {
            assert!(enc.push(&r.borrowed()));
        }
        assert!(!enc.push(&r.borrowed()));
        assert_eq!(
            decode(&enc.finish("n", "b")).unwrap().records.len(),
            MAX_BATCH_RECORDS
        );
    }

    #[test]
    fn long_strings_are_cut_at_a_character_boundary() {
        let mut r = record(1);
        r.request_id = "é".repeat(200);
        let body = encode(&[r]);
        let batch = decode(&body).unwrap();
        assert_eq!(batch.records[0].request_id.as_str(), "é".repeat(127));
    }

    fn fault(body: &[u8]) -> String {
        decode(body).unwrap_err().to_string()
    }

    #[test]
    fn refusals_name_the_field() {
        let good = encode(&[record(1), record(2)]);
        assert_eq!(fault(b""), "magic: the body ends inside it");
        assert!(fault(b"{\"node\":1}").starts_with("magic: not a binary"));
        // Cut anywhere: refused, never a panic.
        for n in 0..good.len() {
            assert!(
                decode(&good[..n]).is_err(),
                "a body cut at {n} was accepted"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(fault(&trailing), "records: bytes after the last record");
        // The record count, at the end of the header.
        let count_at = header_len(&good) - 4;
        let mut many = good.clone();
        many[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(fault(&many), "records: more than a batch may hold");
        let mut more = good.clone();
        more[count_at..count_at + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(fault(&more), "records: more than the body can hold");
        // The first record's function index.
        let mut index = good.clone();
        index[count_at + 4..count_at + 6].copy_from_slice(&9u16.to_le_bytes());
        assert_eq!(
            fault(&index),
            "records[0].function: not an index into the function table"
        );
        // Its instance's bytes: not UTF-8.
        let mut utf8 = good.clone();
        let instance = count_at + 4 + 2 + 8;
        assert_eq!(utf8[instance], 0, "record(1) has no instance");
        let request_id = instance + 1;
        utf8[request_id + 1] = 0xff;
        assert_eq!(fault(&utf8), "records[0].request_id: not UTF-8");
    }

    /// Bytes before the record count: magic, node, batch, the table.
    fn header_len(body: &[u8]) -> usize {
        let mut at = 4;
        for _ in 0..2 {
            at += 1 + usize::from(body[at]);
        }
        let functions = u16::from_le_bytes([body[at], body[at + 1]]);
        at += 2;
        for _ in 0..functions {
            at += 1 + usize::from(body[at]) + 12;
        }
        at + 4
    }

    proptest! {
        /// Any bytes: an error or a batch, never a panic.
        #[test]
        fn any_bytes_decode_or_are_refused(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&body);
            for body in [body, with_magic] {
                if let Ok(batch) = decode(&body) {
                    prop_assert!(batch.records.len() <= MAX_BATCH_RECORDS);
                }
            }
        }

        /// Flipped bytes of a good batch: refused or decoded, never a panic.
        #[test]
        fn damaged_batches_never_panic(at in 0usize..2000, byte in any::<u8>()) {
            let mut body = encode(&(0..6).map(record).collect::<Vec<_>>());
            let at = at % body.len();
            body[at] = byte;
            let _ = decode(&body);
        }
    }
}
