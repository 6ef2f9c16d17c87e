//! Request ids (`x-request-id`), one rule for every process: an incoming id
//! is kept when [`is_valid`] says so, else a new one is made ([`generate`]).
//! `cpub-proxy` and `cpub-control` both call [`pick`], so an id that passes
//! one passes the other and an id is never rewritten on its way through.
//! The proxy calls these on every request: they are `#[inline]` so that
//! moving them here from the proxy did not put a crate boundary (no LTO) in
//! the way of inlining.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Header carrying the id both ways.
pub const HEADER: &str = "x-request-id";

/// Longest incoming id that is kept.
pub const MAX_LEN: usize = 128;

/// An incoming id is kept when it is 1 to [`MAX_LEN`] bytes of
/// `A-Z a-z 0-9 - _ . : + / =` (enough for UUIDs, ULIDs, base64 and
/// trace ids; nothing that could split a header or a log line: no space, no
/// control character, no quote, no byte outside ASCII).
#[inline]
pub fn is_valid(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'+' | b'/' | b'=')
        })
}

/// Ids each thread takes from the process-wide counter at a time.
const BLOCK: u64 = 1 << 16;

/// Consecutive ids of a thread that share their left half (a divisor of
/// [`BLOCK`]): a sampler by the left half keeps or drops them together.
const LEFT_RUN: u64 = 16;

/// A new id: 32 lowercase hex digits, unique per process (a counter, taken
/// by each thread in blocks so that threads share no cache line per call)
/// and different across processes (mixed with keys from the process's
/// random hash keys and the start time). Both halves look random: a new
/// `traceparent`'s trace id is this id, and a sampler that keeps a ratio
/// of traces decides by a half (OpenTelemetry's `TraceIdRatioBased` by
/// the rightmost 64 bits in Java, Go, Python and Rust, by the leftmost 64
/// in .NET; W3C Trace Context level 2 by the rightmost 56). The right half
/// differs for every id; the left half is shared by runs of 16
/// (`LEFT_RUN`) ids of a thread, which is what lets a chunk's request ids
/// compress (to 61 % with lz4, against 100 % for two random halves). Not
/// a secret: the mixing is not cryptographic.
#[inline]
pub fn generate() -> String {
    static NEXT_BLOCK: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<(u64, u64)> = OnceLock::new();
    thread_local! {
        /// This thread's next id and the end of its block.
        static NEXT: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    }
    let (k0, k1) = *KEYS.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let state = RandomState::new();
        let key = |salt: u64| {
            let mut h = state.build_hasher();
            h.write_u64(nanos);
            h.write_u64(salt);
            h.finish()
        };
        (key(0), key(1))
    });
    let n = NEXT.with(|next| {
        let (mut n, mut end) = next.get();
        if n == end {
            n = NEXT_BLOCK.fetch_add(BLOCK, Ordering::Relaxed);
            end = n + BLOCK;
        }
        next.set((n + 1, end));
        n
    });
    // The right half is a bijection of the counter (`fmix64` is
    // invertible: xor-shifts and products with odd numbers), so ids never
    // repeat. Until 2026-12-02 the left half was `fmix64(n ^ k0)` and the
    // right one `n ^ k1`: a sampler by the rightmost bits kept all or none
    // of a thread's block of 65,536 ids.
    hex32(fmix64((n / LEFT_RUN) ^ k1), fmix64(n ^ k0))
}

/// MurmurHash3's 64-bit finaliser: every input bit moves every output bit.
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// `high` then `low` as 32 lowercase hex digits (the hot path's
/// `format!("{high:016x}{low:016x}")` without the formatting machinery).
fn hex32(high: u64, low: u64) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0u8; 32];
    let bytes = (u128::from(high) << 64 | u128::from(low)).to_be_bytes();
    for (pair, byte) in hex.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

/// The id to use for a request: the incoming header if valid, else new.
#[inline]
pub fn pick(incoming: Option<&[u8]>) -> String {
    match incoming {
        // `is_valid` admits ASCII only, so the conversion cannot fail.
        Some(id) if is_valid(id) => String::from_utf8_lossy(id).into_owned(),
        _ => generate(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_are_kept() {
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
    fn hostile_ids_are_replaced() {
        let too_long = [b'x'; MAX_LEN + 1];
        let mut hostile: Vec<&[u8]> = vec![
            b"",
            b"a b",
            b"a\r\nx-evil: 1",
            b"a\nb",
            b"a\x00b",
            b"a\tb",
            b"a\x7fb",
            b"caf\xc3\xa9",
            "\u{202e}abc".as_bytes(),
            b"\xff\xfe",
            b"<script>",
            b"a\"b",
            b"a;b",
            b"a,b",
            b"%0d%0a",
            &too_long,
        ];
        let controls: Vec<[u8; 3]> = (0u8..0x20).map(|c| [b'a', c, b'b']).collect();
        hostile.extend(controls.iter().map(|c| &c[..]));
        for id in hostile {
            assert!(!is_valid(id), "{id:?} accepted");
            let got = pick(Some(id));
            assert_ne!(got.as_bytes(), id);
            assert_eq!(got.len(), 32);
            assert!(is_valid(got.as_bytes()), "a generated id passes the rule");
        }
        assert_eq!(pick(None).len(), 32);
        // The limit is inclusive.
        assert!(is_valid(&[b'x'; MAX_LEN]));
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
    fn ids_from_many_threads_never_repeat() {
        let threads: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..5000).map(|_| generate()).collect::<Vec<_>>()))
            .collect();
        let mut all = std::collections::HashSet::new();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(all.insert(id), "an id repeated");
            }
        }
        assert_eq!(all.len(), 20_000);
    }

    /// A sampler keeping a tenth of the ids by their rightmost 64 or 56
    /// bits, or by their leftmost 64 (as a number below a tenth of its
    /// range), keeps about a tenth of one thread's 65,536 ids: 6,554
    /// expected; within 5 standard deviations (77 by the right half, 307
    /// by the left, whose 4,096 values each stand for 16 ids).
    #[test]
    fn a_sampler_by_either_half_keeps_its_ratio() {
        let ids: Vec<String> = std::thread::spawn(|| (0..65_536).map(|_| generate()).collect())
            .join()
            .unwrap();
        for (digits, bits, within) in [(16..32, 64, 385), (16..32, 56, 385), (0..16, 64, 1_536)] {
            let range = u64::MAX >> (64 - bits);
            let kept = ids
                .iter()
                .map(|id| u64::from_str_radix(&id[digits.clone()], 16).unwrap() & range)
                .filter(|&v| v < range / 10)
                .count();
            assert!(
                kept.abs_diff(6_554) <= within,
                "{kept} of 65,536 ids kept by a sampler of a tenth by {bits} bits of digits {digits:?}"
            );
        }
    }

    /// Runs of [`LEFT_RUN`] ids share their left half, and only they: what
    /// lets a chunk's request ids compress, and no more than that.
    #[test]
    fn left_halves_are_shared_by_runs_of_sixteen() {
        let ids: Vec<String> = std::thread::spawn(|| (0..4_096).map(|_| generate()).collect())
            .join()
            .unwrap();
        let lefts: std::collections::HashSet<&str> = ids.iter().map(|id| &id[..16]).collect();
        assert_eq!(lefts.len(), 4_096 / LEFT_RUN as usize);
        for run in ids.chunks(LEFT_RUN as usize) {
            assert!(run.iter().all(|id| id[..16] == run[0][..16]), "{run:?}");
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
