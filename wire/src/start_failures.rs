//! Start failures other than crashes (issue 11): readiness timeouts
//! (`not_ready`), engine errors (`runtime`) and node-capacity refusals
//! (`capacity`), the reasons of `cpub_pool_start_failures_total`. A proxy
//! adds one [`FunctionStartFailures`] per function that had one to its node
//! report (`POST /api/v1/nodes/{node}/status`, field `start_failures`); the
//! control plane checks it with [`validate`] and shows each function's last
//! one, with its count, among the start failures of `GET /api/v1/status`
//! (`crate::executions::StartFailure`, beside the crashes).
//!
//! Counts count from the proxy's start (they are its Prometheus counters);
//! the time of the last failure travels as an age (milliseconds before the
//! report), so the nodes' clocks do not matter.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The reason of a crash (a start failure from `function_crashes`).
pub const CRASH: &str = "crash";
/// The reasons the pool counts (`cpub_pool_start_failures_total`). A later
/// proxy may send another: any [`validate_reason`] token is taken.
pub const REASONS: [&str; 3] = ["not_ready", "runtime", "capacity"];
/// Longest message kept, in bytes (cut at a character boundary).
pub const MAX_MESSAGE_BYTES: usize = 256;
/// Longest reason.
pub const MAX_REASON_LEN: usize = 32;
/// Most reasons one function's counts may name.
pub const MAX_REASONS: usize = 8;
/// Most functions one node report may list (as `crate::usage`).
pub const MAX_FUNCTIONS: usize = crate::usage::MAX_REPORTED_FUNCTIONS;

/// One function's failed starts on one node, since its proxy started.
/// Unknown keys are taken (and dropped): a later proxy may say more.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionStartFailures {
    pub function: String,
    /// Failed starts by reason (only reasons that happened).
    pub counts: BTreeMap<String, u64>,
    /// The latest one.
    pub last: LastStartFailure,
}

/// The latest failed start of a function on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastStartFailure {
    /// One of [`REASONS`] (or a later proxy's token).
    pub reason: String,
    /// What the pool said, made safe by [`clean_message`].
    pub message: String,
    /// How long before the report it happened, in milliseconds.
    pub age_ms: u64,
}

/// Checks a reason: 1 to [`MAX_REASON_LEN`] characters of `a-z 0-9 _`.
pub fn validate_reason(reason: &str) -> Result<(), String> {
    let ok = !reason.is_empty()
        && reason.len() <= MAX_REASON_LEN
        && reason
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "a reason is 1 to {MAX_REASON_LEN} characters of a-z, 0-9 and '_', got {:?}",
            reason.chars().take(MAX_REASON_LEN + 1).collect::<String>()
        ))
    }
}

/// Whether `c` is a Unicode format character that can make a terminal
/// show text other than what it is: the bidirectional embeddings,
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069), the zero-width
/// space, joiners and marks (U+200B–U+200F) and the byte order mark
/// (U+FEFF).
fn is_deceptive_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// A message safe to keep and show on one line: at most
/// [`MAX_MESSAGE_BYTES`] bytes (cut at a character boundary, `…` marks the
/// cut), every control character (newlines too) and every bidirectional or
/// zero-width format character a space.
pub fn clean_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_BYTES));
    for c in message.chars() {
        let c = if c.is_control() || is_deceptive_format(c) {
            ' '
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_MESSAGE_BYTES {
            // Room for the mark: drop characters until it fits.
            while out.len() + '…'.len_utf8() > MAX_MESSAGE_BYTES {
                out.pop();
            }
            out.push('…');
            return out;
        }
        out.push(c);
    }
    out
}

/// Checks a node report's `start_failures`; the error is the field at
/// fault (`start_failures[i].…`) and what is wrong. A function is listed
/// once (a node has one entry per function). Messages are not checked
/// here: whoever keeps one passes it through [`clean_message`].
pub fn validate(list: &[FunctionStartFailures]) -> Result<(), (String, String)> {
    if list.len() > MAX_FUNCTIONS {
        return Err((
            "start_failures".into(),
            format!("at most {MAX_FUNCTIONS} functions"),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in list.iter().enumerate() {
        crate::validate_function_name(&f.function)
            .map_err(|m| (format!("start_failures[{i}].function"), m))?;
        if !seen.insert(f.function.as_str()) {
            return Err((
                format!("start_failures[{i}].function"),
                format!("function {:?} is listed twice", f.function),
            ));
        }
        if f.counts.len() > MAX_REASONS {
            return Err((
                format!("start_failures[{i}].counts"),
                format!("at most {MAX_REASONS} reasons"),
            ));
        }
        for reason in f.counts.keys() {
            validate_reason(reason).map_err(|m| (format!("start_failures[{i}].counts"), m))?;
        }
        validate_reason(&f.last.reason)
            .map_err(|m| (format!("start_failures[{i}].last.reason"), m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> FunctionStartFailures {
        FunctionStartFailures {
            function: "slow".into(),
            counts: BTreeMap::from([("not_ready".into(), 2), ("capacity".into(), 1)]),
            last: LastStartFailure {
                reason: "not_ready".into(),
                message: "not ready within 2000 ms".into(),
                age_ms: 1500,
            },
        }
    }

    #[test]
    fn messages_are_one_bounded_line() {
        assert_eq!(clean_message("a\nb\tc\x1b[31m"), "a b c [31m");
        for long in ["x".repeat(1000), "é".repeat(1000), "€".repeat(1000)] {
            let m = clean_message(&long);
            assert!(m.len() <= MAX_MESSAGE_BYTES, "{}", m.len());
            assert!(m.len() > MAX_MESSAGE_BYTES - 8, "{}", m.len());
            assert!(m.ends_with('…'), "{m}");
        }
        let exact = "y".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(clean_message(&exact), exact);
        assert_eq!(clean_message(""), "");
    }

    #[test]
    fn bidi_and_zero_width_characters_are_replaced() {
        // "exit 0" shown where "0 tixe" is: an override reverses the rest.
        assert_eq!(clean_message("ok\u{202E}0 tixe"), "ok 0 tixe");
        for c in ('\u{200B}'..='\u{200F}')
            .chain('\u{202A}'..='\u{202E}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{FEFF}'])
        {
            assert_eq!(
                clean_message(&format!("a{c}b")),
                "a b",
                "U+{:04X}",
                c as u32
            );
        }
        // Other text outside ASCII is kept.
        assert_eq!(clean_message("prêt — 準備"), "prêt — 準備");
    }

    #[test]
    fn a_function_listed_twice_is_refused() {
        let mut again = entry();
        again.last.reason = "runtime".into();
        let other = FunctionStartFailures {
            function: "other".into(),
            ..entry()
        };
        let (field, message) = validate(&[entry(), other, again]).unwrap_err();
        assert_eq!(field, "start_failures[2].function");
        assert!(message.contains("listed twice"), "{message}");
    }

    #[test]
    fn reports_are_checked_field_by_field() {
        assert_eq!(validate(&[entry()]), Ok(()));
        let first = FunctionStartFailures {
            function: "first".into(),
            ..entry()
        };
        let field = |f: FunctionStartFailures| validate(&[first.clone(), f]).unwrap_err().0;
        let mut bad = entry();
        bad.function = "Bad Name".into();
        assert_eq!(field(bad), "start_failures[1].function");
        let mut bad = entry();
        bad.counts.insert("Not-Ready".into(), 1);
        assert_eq!(field(bad), "start_failures[1].counts");
        let mut bad = entry();
        bad.counts = (0..=MAX_REASONS).map(|i| (format!("r{i}"), 1)).collect();
        assert_eq!(field(bad), "start_failures[1].counts");
        let mut bad = entry();
        bad.last.reason = String::new();
        assert_eq!(field(bad), "start_failures[1].last.reason");
        let mut bad = entry();
        bad.last.reason = "x".repeat(MAX_REASON_LEN + 1);
        assert_eq!(field(bad), "start_failures[1].last.reason");
        // A later reason is a token like the others.
        let mut later = entry();
        later.last.reason = "image_missing".into();
        assert_eq!(validate(&[later]), Ok(()));
        let many = vec![entry(); MAX_FUNCTIONS + 1];
        assert_eq!(validate(&many).unwrap_err().0, "start_failures");
    }

    #[test]
    fn an_entry_round_trips_and_takes_unknown_keys() {
        let e = entry();
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            serde_json::from_str::<FunctionStartFailures>(&text).unwrap(),
            e
        );
        let later = r#"{"function":"slow","counts":{"not_ready":1},"zone":"a",
            "last":{"reason":"not_ready","message":"m","age_ms":5,"detail":{}}}"#;
        let read: FunctionStartFailures = serde_json::from_str(later).unwrap();
        assert_eq!(read.last.age_ms, 5);
    }
}
