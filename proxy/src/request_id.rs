//! Request ids (`x-request-id`): keep a sane incoming one, else make one.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Header carrying the id both ways.
pub const HEADER: &str = "x-request-id";

/// Longest incoming id that is kept.
const MAX_LEN: usize = 128;

/// An incoming id is kept when it is 1 to 128 characters of
/// `A-Z a-z 0-9 - _ . : + / =` (enough for UUIDs, ULIDs, base64 and
/// trace ids; nothing that could split a header or a log line).
pub fn is_sane(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

/// A new id: 32 lowercase hex digits, unique per process (a counter) and
/// unpredictable across processes (keyed with the process's random hash keys
/// and the start time).
pub fn generate() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<(RandomState, u64)> = OnceLock::new();
    let (state, epoch) = KEYS.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        (RandomState::new(), nanos)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut h = state.build_hasher();
    h.write_u64(*epoch);
    h.write_u64(n);
    let high = h.finish();
    hex32(high, n ^ epoch.rotate_left(17))
}

/// `high` then `low` as 32 lowercase hex digits (the hot path's
/// `format!("{high:016x}{low:016x}")` without the formatting machinery).
fn hex32(high: u64, low: u64) -> String {
    let mut hex = [0u8; 32];
    for (i, digit) in hex.iter_mut().enumerate() {
        let word = if i < 16 { high } else { low };
        let nibble = (word >> ((15 - i % 16) * 4)) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    hex.iter().map(|&b| b as char).collect()
}

/// The id to use for a request: the incoming header if sane, else new.
pub fn pick(incoming: Option<&[u8]>) -> String {
    match incoming {
        // `is_sane` admits ASCII only, so the conversion cannot fail.
        Some(id) if is_sane(id) => String::from_utf8_lossy(id).into_owned(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_ids_are_kept() {
        for id in [
            "abc",
            "0f8e2c1a-5b8d-4e3f-9a7c-2d1e0b9f8a7c",
            "01HZX3",
            "a:b/c+d=",
            &"x".repeat(128),
        ] {
            assert_eq!(pick(Some(id.as_bytes())), id);
        }
    }

    #[test]
    fn insane_ids_are_replaced() {
        for id in [
            &b""[..],
            b"a b",
            b"a\r\nx-evil: 1",
            b"caf\xc3\xa9",
            b"<script>",
            &[b'x'; 129],
        ] {
            let got = pick(Some(id));
            assert_ne!(got.as_bytes(), id);
            assert_eq!(got.len(), 32);
        }
        assert_eq!(pick(None).len(), 32);
    }

    #[test]
    fn hex32_matches_format() {
        for (high, low) in [
            (0, 0),
            (1, u64::MAX),
            (0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210),
        ] {
            assert_eq!(hex32(high, low), format!("{high:016x}{low:016x}"));
        }
    }

    #[test]
    fn generated_ids_differ_and_are_hex() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }
}
