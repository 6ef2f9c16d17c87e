//! W3C Trace Context (`traceparent`) on the data path: a valid incoming
//! `traceparent` is passed to the function unchanged; a missing or invalid
//! one is replaced by a new one (version `00`, sampled), whose trace id is
//! the request id when the proxy made that id (32 lowercase hex digits), so
//! a function that logs either can be searched by it.

use crate::request_id;

/// The field name.
pub const HEADER: &str = "traceparent";

/// Whether `value` is a `traceparent` we pass on (W3C Trace Context §3.2):
/// `version-traceid-parentid-flags` in lowercase hex, version not `ff`,
/// ids not all zeros; a version above `00` may carry more after a `-`.
pub fn is_valid(value: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let nonzero = |s: &[u8]| s.iter().any(|b| *b != b'0');
    let (Some(version), Some(trace), Some(parent), Some(flags)) = (
        value.get(0..2),
        value.get(3..35),
        value.get(36..52),
        value.get(53..55),
    ) else {
        return false;
    };
    let dashes = [2, 35, 52].iter().all(|&i| value.get(i) == Some(&b'-'));
    let rest_ok = match value.get(55..) {
        Some([]) => true,
        Some([b'-', ..]) => version != b"00",
        _ => false,
    };
    dashes
        && rest_ok
        && hex(version)
        && version != b"ff"
        && hex(trace)
        && nonzero(trace)
        && hex(parent)
        && nonzero(parent)
        && hex(flags)
}

/// The `traceparent` to send: the incoming one when valid, else a new one.
/// Always valid ([`is_valid`]), so its trace id is at bytes 3..35
/// (`executions::describe` takes it from there without checking again).
/// Built without the formatting machinery: this runs on every call, and
/// two `format!`s (one only to check the request id) were about 3,900
/// instructions of it, a sixth of the proxy's per call (callgrind,
/// `scripts/instructions.sh`).
pub fn pick(incoming: Option<&[u8]>, request_id: &str) -> String {
    if let Some(value) = incoming
        && is_valid(value)
        && let Ok(text) = std::str::from_utf8(value)
    {
        return text.to_owned();
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    // The request id is the trace id when it is one (32 lowercase hex
    // digits, not all zeros: the ids the proxy makes).
    if containerpub_wire::executions::is_trace_id(request_id.as_bytes()) {
        out.push_str(request_id);
    } else {
        out.push_str(&fresh_id());
    }
    out.push('-');
    // The random-looking half of a new id (`request_id::generate`).
    let parent = fresh_id();
    match parent.get(16..) {
        Some(p) if p.bytes().any(|b| b != b'0') => out.push_str(p),
        _ => out.push_str("0000000000000001"),
    }
    out.push_str("-01");
    out
}

/// 32 lowercase hex digits, never all zeros.
fn fresh_id() -> String {
    loop {
        let id = request_id::generate();
        if id.bytes().any(|b| b != b'0') {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_ones_pass_unchanged() {
        assert!(is_valid(GOOD.as_bytes()));
        assert_eq!(pick(Some(GOOD.as_bytes()), "x"), GOOD);
        // A later version may add fields.
        let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(is_valid(v1.as_bytes()));
    }

    #[test]
    fn invalid_ones_are_replaced() {
        for bad in [
            "",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid(bad.as_bytes()), "{bad}");
            let made = pick(Some(bad.as_bytes()), "some-caller-id");
            assert!(is_valid(made.as_bytes()), "{made}");
            assert_ne!(made, bad);
        }
        assert!(!is_valid(b"\xff\xfe"));
    }

    proptest::proptest! {
        /// Whatever comes in, what goes out is valid and its trace id is at
        /// 3..35 (what `executions::describe` relies on).
        #[test]
        fn what_is_picked_is_always_valid(
            incoming in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..80)),
            id in "[0-9a-fA-F-]{0,40}",
        ) {
            let made = pick(incoming.as_deref(), &id);
            proptest::prop_assert!(is_valid(made.as_bytes()), "{}", made);
            let trace = made.as_bytes().get(3..35).unwrap_or_default();
            proptest::prop_assert!(containerpub_wire::executions::is_trace_id(trace), "{}", made);
        }
    }

    #[test]
    fn a_new_one_reuses_the_proxys_request_id() {
        let id = request_id::generate();
        let made = pick(None, &id);
        assert!(is_valid(made.as_bytes()));
        assert_eq!(made.get(3..35), Some(id.as_str()));
        // A caller's id that is not a trace id gets a fresh trace id.
        let made = pick(None, "order-42");
        assert!(is_valid(made.as_bytes()));
        assert_ne!(pick(None, "order-42").get(3..35), made.get(3..35));
        // 32 characters that are not a trace id: not reused either.
        for id in [
            "4BF92F3577B34DA6A3CE929D0E0E4736",
            "00000000000000000000000000000000",
            "4bf92f3577b34da6a3ce929d0e0e473g",
        ] {
            let made = pick(Some(b"garbage"), id);
            assert!(is_valid(made.as_bytes()), "{made}");
            assert_eq!(made.len(), 55);
            assert_ne!(made.get(3..35), Some(id));
        }
    }
}
