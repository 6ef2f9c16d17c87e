//! What the node's shippers (log lines in `logs.rs`, execution records in
//! `executions.rs`) make of the control plane's answer to a batch they
//! posted: one rule for both, so that neither loses what the other keeps.
//!
//! - A 2xx counts only when its body is the control plane's answer (a
//!   captive portal or a misrouted ingress answering 200 stored nothing).
//! - Only 400 and 422 refuse a batch for good: the control plane answers
//!   400 naming the field it refuses, 422 is the same from a proxy in front
//!   of it; the same batch would be refused again, so it is dropped and
//!   counted.
//! - Every other answer sends the batch again after a pause: 401/403 (a
//!   token being rotated, or a wrong one an operator will fix), 404 (an
//!   ingress, or a control plane being deployed), 408, 413 (an ingress's
//!   body limit, fixed by its operator), 429, 5xx, and no answer at all.
//!   A refusal that never ends (a token of another node, a URL without the
//!   control plane) keeps batches until the shipper's bound (the log
//!   buffer; the records' memory, then their spool), past which they are
//!   dropped and counted as for any outage, with the warning below.
//!
//! [`Outage`] says so in the proxy's log once per run of failures, and
//! once more when the control plane answers again (a batch stored, or
//! refused for good).

use std::time::Instant;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

/// What to do with a batch after the control plane's answer.
#[derive(Debug)]
pub enum Verdict<T> {
    /// Stored (or known already), with the control plane's answer.
    Stored(T),
    /// Its content is refused for good (the status and the answer, whole:
    /// a shipper may read it; [`excerpt`] it for a log line): dropped and
    /// counted.
    Refused(StatusCode, String),
    /// Not taken this time (why, for the log): sent again after a pause.
    Again(String),
}

/// Reads the control plane's answer (`status`, `body`) to a batch; `T` is
/// the answer's type.
pub fn verdict<T: DeserializeOwned>(status: StatusCode, body: &[u8]) -> Verdict<T> {
    if status.is_success() {
        // An object: serde would also take a struct from a JSON array.
        let object = body.trim_ascii_start().first() == Some(&b'{');
        return match serde_json::from_slice::<T>(body).ok().filter(|_| object) {
            Some(answer) => Verdict::Stored(answer),
            None => Verdict::Again(format!(
                "answered {status} without the control plane's answer: {}",
                excerpt(&String::from_utf8_lossy(body))
            )),
        };
    }
    if refused_for_good(status) {
        return Verdict::Refused(status, String::from_utf8_lossy(body).into_owned());
    }
    let text = String::from_utf8_lossy(body);
    Verdict::Again(format!("answered {status}: {}", excerpt(&text)))
}

/// [`verdict`] of what a post of a batch came to: its answer, or no
/// answer at all (sent again).
pub async fn verdict_of<T: DeserializeOwned>(
    sent: reqwest::Result<reqwest::Response>,
) -> Verdict<T> {
    match sent {
        Ok(r) => {
            let status = r.status();
            let body = r.bytes().await.unwrap_or_default();
            verdict(status, &body)
        }
        Err(e) => Verdict::Again(format!("not delivered: {e}")),
    }
}

/// Whether `status` refuses a batch's content for good (400, 422).
pub fn refused_for_good(status: StatusCode) -> bool {
    matches!(status.as_u16(), 400 | 422)
}

/// The first 300 characters of an answer, for a log line.
pub fn excerpt(text: &str) -> &str {
    text.char_indices()
        .nth(300)
        .map_or(text, |(end, _)| &text[..end])
}

/// A run of failed deliveries of one shipper (`what`: "log lines",
/// "execution records"): warned about at its first failure, noted when it
/// ends, quiet in between (the shipper tries every few seconds).
#[derive(Debug)]
pub struct Outage {
    what: &'static str,
    since: Option<(Instant, u64)>,
}

impl Outage {
    pub fn new(what: &'static str) -> Self {
        Self { what, since: None }
    }

    /// A delivery failed for `why`. Returns whether this began a run (and
    /// was logged).
    pub fn failed(&mut self, why: &str) -> bool {
        match &mut self.since {
            Some((_, tries)) => {
                *tries += 1;
                false
            }
            None => {
                warn!(
                    what = self.what,
                    why, "cannot deliver to the control plane; keeping them and trying again"
                );
                self.since = Some((Instant::now(), 1));
                true
            }
        }
    }

    /// A delivery went through. Returns whether it ended a run (and was
    /// logged).
    pub fn delivered(&mut self) -> bool {
        let Some((since, tries)) = self.since.take() else {
            return false;
        };
        info!(
            what = self.what,
            failed_tries = tries,
            seconds = since.elapsed().as_secs(),
            "delivering to the control plane again, sending what waited"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct Answer {
        stored: u64,
    }

    #[test]
    fn only_a_refusal_of_the_content_drops_a_batch_and_only_the_answer_acknowledges_it() {
        for code in [401, 403, 404, 405, 408, 409, 413, 429, 500, 502, 503] {
            let status = StatusCode::from_u16(code).unwrap();
            match verdict::<Answer>(status, b"{\"error\":\"nope\"}") {
                Verdict::Again(why) => assert!(
                    why.contains(&code.to_string()) && why.contains("nope"),
                    "{code}: {why}"
                ),
                other => panic!("{code} is sent again, not {other:?}"),
            }
        }
        for code in [400, 422] {
            let status = StatusCode::from_u16(code).unwrap();
            assert!(
                matches!(verdict::<Answer>(status, b"bad line"), Verdict::Refused(s, ref t) if s == status && t == "bad line"),
                "{code} drops the batch"
            );
        }
        assert!(matches!(
            verdict::<Answer>(StatusCode::OK, br#"{"stored":3,"unknown":0}"#),
            Verdict::Stored(Answer { stored: 3 })
        ));
        for body in [&b"<html>welcome</html>"[..], b"", b"{}", b"[1]", b" [3] "] {
            assert!(
                matches!(verdict::<Answer>(StatusCode::OK, body), Verdict::Again(_)),
                "{body:?}"
            );
        }
        assert!(matches!(
            verdict::<Answer>(StatusCode::NO_CONTENT, b""),
            Verdict::Again(_)
        ));
        // A long answer is kept whole for the shipper (it may parse it),
        // and cut for the log.
        let long = "é".repeat(10_000);
        match verdict::<Answer>(StatusCode::BAD_REQUEST, long.as_bytes()) {
            Verdict::Refused(_, text) => {
                assert_eq!(text, long);
                assert_eq!(excerpt(&text).chars().count(), 300);
            }
            other => panic!("{other:?}"),
        }
        match verdict::<Answer>(StatusCode::FORBIDDEN, long.as_bytes()) {
            Verdict::Again(why) => assert!(why.len() < 700, "{}", why.len()),
            other => panic!("{other:?}"),
        }
        assert_eq!(excerpt("short"), "short");
    }

    #[test]
    fn an_outage_is_told_once_when_it_begins_and_once_when_it_ends() {
        let mut outage = Outage::new("log lines");
        assert!(!outage.delivered(), "nothing to end");
        assert!(outage.failed("answered 403 Forbidden"));
        assert!(!outage.failed("answered 403 Forbidden"));
        assert!(!outage.failed("connection refused"));
        assert!(outage.delivered());
        assert!(!outage.delivered());
        assert!(outage.failed("again"), "a new run is told again");
    }
}
