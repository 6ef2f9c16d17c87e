//! HMAC request signing on the data path (`containerpub_wire::signing` has
//! the scheme): the head-time check of a private function whose manifest's
//! `[access] auth` accepts signatures, and the replay cache.
//!
//! [`check`] is what admission calls for every routed call. For a public
//! function, or a private one with `auth = "key"` (the default), it is
//! `crate::access::check` and nothing more: those calls pay nothing new.
//! Otherwise a call carrying `x-cpub-signature` is judged by it, in this
//! order, each refusal a 401 naming what is wrong: the header's shape; the
//! key id among the function's live signing keys; `ts` within
//! [`WINDOW_S`] of this proxy's clock; the HMAC over method, target as
//! sent, `ts` and the header's body digest (constant-time comparison); a
//! signature seen before. Only then is the field stripped (with every
//! `x-cpub-key`) and a [`Signed`] handed back: the engine reads the whole
//! body (`engine/signing.rs`, bounded), checks its digest against the
//! signed one and marks the signature seen ([`remember`]) before the call
//! goes anywhere. So a caller without the secret never makes the proxy
//! buffer a body, and a refused call never reaches the function.
//!
//! The replay cache is per proxy process: a `moka` cache of accepted
//! signatures (32 bytes each) living `2 × WINDOW_S` (a `ts` up to
//! `WINDOW_S` ahead stays acceptable that long), at most
//! [`REPLAY_CAPACITY`] entries, least recently used first out. Only
//! signatures that verified are remembered, so filling it takes a key
//! holder's signed calls; past the capacity within the window the oldest
//! are forgotten early (documented in ARCHITECTURE.md). A signature sent
//! to two proxies is accepted by each once.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use containerpub_wire::api::Route;
use containerpub_wire::manifest::{Auth, Visibility};
use containerpub_wire::signing::{self, HeaderError, WINDOW_S};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use crate::access::Refusal;
use crate::h1::{Field, Name, RequestLine};

/// Most signatures one proxy remembers (about 100 bytes each in the cache).
pub const REPLAY_CAPACITY: u64 = 500_000;

static SEEN: LazyLock<Cache<[u8; 32], ()>> = LazyLock::new(|| {
    Cache::builder()
        .max_capacity(REPLAY_CAPACITY)
        .time_to_live(Duration::from_secs(2 * WINDOW_S as u64))
        .eviction_policy(EvictionPolicy::lru())
        .build()
});

/// Why a signed call (or a call of a function that requires signing) is
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigRefusal {
    /// `auth = "signature"` and no `x-cpub-signature`.
    Missing,
    /// The header does not parse.
    Malformed(HeaderError),
    /// A key id the function does not have (never had, or revoked).
    UnknownKey,
    /// `ts` this many seconds from the proxy's clock (beyond the window).
    Stale(i64),
    /// The HMAC does not match.
    BadSignature,
    /// The body's sha256 is not the signed one.
    DigestMismatch,
    /// The signature was accepted before, within the window.
    Replayed,
}

impl SigRefusal {
    /// The status and message of the answer for a call of `function`.
    pub fn status_and_message(self, function: &str) -> (u16, String) {
        let message = match self {
            Self::Missing => format!(
                "function \"{function}\" requires a signed call: send x-cpub-signature \
                 (cpub signing-key create {function}; see docs/SIGNING.md)"
            ),
            Self::Malformed(e) => format!("malformed x-cpub-signature: {e}"),
            Self::UnknownKey => format!(
                "the signature's keyid is not a signing key of function \"{function}\" (unknown or revoked)"
            ),
            Self::Stale(skew) => format!(
                "the signature's ts is {} s in the {}, outside the window of ±{WINDOW_S} s: sign again with the current time",
                skew.unsigned_abs(),
                if skew < 0 { "past" } else { "future" }
            ),
            Self::BadSignature => "bad signature: it does not match the method, target, ts and body digest with this key".into(),
            Self::DigestMismatch => {
                "body digest mismatch: the body's sha256 is not the signed body= digest".into()
            }
            Self::Replayed => format!(
                "replayed signature: this signature was already used within the last {} s; sign each call afresh",
                2 * WINDOW_S
            ),
        };
        (401, message)
    }
}

/// A call whose signature verified over the body digest it claims: the
/// body must still be read and checked (`engine/signing.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signed {
    pub body_digest: [u8; 32],
    pub sig: [u8; 32],
}

/// Seconds since the epoch on this proxy's clock.
pub fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks the call whose head is `buf` (`line`, `fields`) against `route`:
/// `Ok(None)` for a call that may go on as it is (public, or a valid key),
/// `Ok(Some(_))` for a signed call whose body remains to be checked. The
/// field that carried the credential is removed from `fields`.
pub fn check(
    buf: &[u8],
    line: &RequestLine,
    fields: &mut Vec<Field>,
    route: &Route,
) -> Result<Option<Signed>, Refusal> {
    let auth = route.config.access.auth;
    if route.config.visibility == Visibility::Public || auth == Auth::Key {
        return crate::access::check(buf, fields, route).map(|()| None);
    }
    check_at(buf, line, fields, route, now_s())
}

/// [`check`] at time `now` (seconds since the epoch).
pub fn check_at(
    buf: &[u8],
    line: &RequestLine,
    fields: &mut Vec<Field>,
    route: &Route,
    now: i64,
) -> Result<Option<Signed>, Refusal> {
    if route.config.visibility == Visibility::Public || route.config.access.auth == Auth::Key {
        return crate::access::check(buf, fields, route).map(|()| None);
    }
    let mut found = None;
    for (i, f) in fields.iter().enumerate() {
        if f.kind == Name::Other
            && buf
                .get(f.name.clone())
                .unwrap_or_default()
                .eq_ignore_ascii_case(signing::SIGNATURE_HEADER.as_bytes())
        {
            if found.is_some() {
                return Err(Refusal::Ambiguous(
                    "more than one x-cpub-signature field: send the signature once",
                ));
            }
            found = Some(i);
        }
    }
    let Some(index) = found else {
        if route.config.access.auth.accepts_key() {
            return crate::access::check(buf, fields, route).map(|()| None);
        }
        return Err(Refusal::Signature(SigRefusal::Missing));
    };
    let value = fields
        .get(index)
        .and_then(|f| buf.get(f.value.clone()))
        .unwrap_or_default();
    let method = buf.get(line.method.clone()).unwrap_or_default();
    let target = buf.get(line.target.clone()).unwrap_or_default();
    let signed = verify_head(value, method, target, route, now).map_err(Refusal::Signature)?;
    // The signature and every x-cpub-key stay here.
    let mut i = 0;
    fields.retain(|f| {
        let keep = i != index
            && !(f.kind == Name::Other
                && buf
                    .get(f.name.clone())
                    .unwrap_or_default()
                    .eq_ignore_ascii_case(b"x-cpub-key"));
        i += 1;
        keep
    });
    Ok(Some(signed))
}

/// Checks an `x-cpub-signature` value for a call of `route` with `method`
/// and `target` at time `now`, over the body digest it claims.
pub fn verify_head(
    value: &[u8],
    method: &[u8],
    target: &[u8],
    route: &Route,
    now: i64,
) -> Result<Signed, SigRefusal> {
    let header = signing::parse_header(value).map_err(SigRefusal::Malformed)?;
    let key = route
        .signing_keys
        .iter()
        .find(|k| k.id.as_bytes() == header.key_id)
        .ok_or(SigRefusal::UnknownKey)?;
    let skew = header.ts.saturating_sub(now);
    if skew.abs() > WINDOW_S {
        return Err(SigRefusal::Stale(skew));
    }
    if !signing::verify(
        key.secret.0.as_bytes(),
        method,
        target,
        header.ts_text,
        &header.body_digest,
        &header.sig,
    ) {
        return Err(SigRefusal::BadSignature);
    }
    if SEEN.contains_key(&header.sig) {
        return Err(SigRefusal::Replayed);
    }
    Ok(Signed {
        body_digest: header.body_digest,
        sig: header.sig,
    })
}

/// Marks `signed` as used once its body checked: `Err(Replayed)` when
/// another call took it first (the check and the mark are one step).
pub fn remember(signed: &Signed) -> Result<(), SigRefusal> {
    if SEEN.entry(signed.sig).or_insert(()).is_fresh() {
        Ok(())
    } else {
        Err(SigRefusal::Replayed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::parse_request;
    use containerpub_wire::Manifest;
    use containerpub_wire::private::SecretValue;
    use containerpub_wire::signing::{SigningKey, body_digest, header_value};

    const SECRET: &str = "cpss_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    const KEY_ID: &str = "sk_0123456789abcdef";
    const NOW: i64 = 1_800_000_000;

    fn route(auth: &str) -> Route {
        let text = format!("name = \"f\"\nruntime = \"container\"\n[access]\nauth = \"{auth}\"\n");
        Route {
            function: "f".into(),
            deployment_id: 1,
            version: 1,
            image: "img".into(),
            config: Manifest::parse(&text).unwrap(),
            keys: vec![containerpub_wire::private::KeyDigest(
                sha2::Sha256::digest(b"cpk_k").into(),
            )],
            secrets: Vec::new(),
            signing_keys: vec![SigningKey {
                id: KEY_ID.into(),
                secret: SecretValue(SECRET.into()),
            }],
        }
    }
    use sha2::Digest;

    fn run(
        method: &str,
        target: &str,
        extra: &str,
        route: &Route,
    ) -> (Result<Option<Signed>, Refusal>, Vec<String>) {
        let raw = format!("{method} {target} HTTP/1.1\r\nhost: x\r\n{extra}accept: */*\r\n\r\n");
        let mut fields = Vec::new();
        let line = parse_request(raw.as_bytes(), &mut fields).unwrap().unwrap();
        let verdict = check_at(raw.as_bytes(), &line, &mut fields, route, NOW);
        let names = fields
            .iter()
            .map(|f| String::from_utf8(raw.as_bytes()[f.name.clone()].to_vec()).unwrap())
            .collect();
        (verdict, names)
    }

    fn sig(method: &str, target: &str, ts: i64, body: &[u8]) -> String {
        format!(
            "x-cpub-signature: {}\r\n",
            header_value(KEY_ID, SECRET.as_bytes(), method, target, ts, body)
        )
    }

    fn refusal(r: Result<Option<Signed>, Refusal>) -> SigRefusal {
        match r {
            Err(Refusal::Signature(s)) => s,
            other => panic!("not a signature refusal: {other:?}"),
        }
    }

    #[test]
    fn a_signed_call_passes_and_loses_its_header() {
        let route = route("signature");
        let (verdict, names) = run(
            "POST",
            "/fn/f/x?a=1",
            &sig("POST", "/fn/f/x?a=1", NOW - 10, b"hi"),
            &route,
        );
        let signed = verdict.unwrap().unwrap();
        assert_eq!(signed.body_digest, body_digest(b"hi"));
        assert_eq!(names, ["host", "accept"]);
    }

    #[test]
    fn every_refusal_names_what_is_wrong() {
        let route = route("signature");
        let ok = |ts| sig("GET", "/fn/f/", ts, b"");
        let cases: Vec<(String, String, SigRefusal)> = vec![
            ("/fn/f/".into(), String::new(), SigRefusal::Missing),
            (
                "/fn/f/".into(),
                "x-cpub-signature: nonsense\r\n".into(),
                SigRefusal::Malformed(HeaderError::UnknownPart),
            ),
            (
                "/fn/f/".into(),
                ok(NOW).replace(KEY_ID, "sk_ffffffffffffffff"),
                SigRefusal::UnknownKey,
            ),
            (
                "/fn/f/".into(),
                ok(NOW - WINDOW_S - 1),
                SigRefusal::Stale(-WINDOW_S - 1),
            ),
            (
                "/fn/f/".into(),
                ok(NOW + WINDOW_S + 5),
                SigRefusal::Stale(WINDOW_S + 5),
            ),
            // Signed for another path, method or body digest.
            ("/fn/f/other".into(), ok(NOW), SigRefusal::BadSignature),
            ("/fn/f/?a=1".into(), ok(NOW), SigRefusal::BadSignature),
            (
                "/fn/f/".into(),
                sig("GET", "/fn/f/", NOW, b"x").replace(
                    std::str::from_utf8(&signing::hex_lower(&body_digest(b"x"))).unwrap(),
                    std::str::from_utf8(&signing::hex_lower(&body_digest(b""))).unwrap(),
                ),
                SigRefusal::BadSignature,
            ),
        ];
        for (target, field, want) in cases {
            let (verdict, _) = run("GET", &target, &field, &route);
            assert_eq!(refusal(verdict), want, "{target} {field}");
            let (status, message) = want.status_and_message("f");
            assert_eq!(status, 401);
            assert!(!message.is_empty());
        }
        let (verdict, _) = run("POST", "/fn/f/", &ok(NOW), &route);
        assert_eq!(refusal(verdict), SigRefusal::BadSignature);
        // At the window's edges it still passes.
        for ts in [NOW - WINDOW_S, NOW + WINDOW_S] {
            assert!(run("GET", "/fn/f/", &ok(ts), &route).0.is_ok());
        }
        // Two signature fields.
        let two = format!("{}{}", ok(NOW), ok(NOW));
        assert!(matches!(
            run("GET", "/fn/f/", &two, &route).0,
            Err(Refusal::Ambiguous(_))
        ));
    }

    #[test]
    fn keys_count_only_where_the_manifest_says() {
        // signature only: a valid key is not enough.
        let (verdict, _) = run(
            "GET",
            "/fn/f/",
            "x-cpub-key: cpk_k\r\n",
            &route("signature"),
        );
        assert_eq!(refusal(verdict), SigRefusal::Missing);
        // key-or-signature: a key passes, a signature passes, neither is 401.
        let either = route("key-or-signature");
        let (verdict, names) = run("GET", "/fn/f/", "x-cpub-key: cpk_k\r\n", &either);
        assert_eq!(verdict, Ok(None));
        assert_eq!(names, ["host", "accept"]);
        assert!(matches!(
            run("GET", "/fn/f/", &sig("GET", "/fn/f/", NOW, b""), &either).0,
            Ok(Some(_))
        ));
        assert_eq!(run("GET", "/fn/f/", "", &either).0, Err(Refusal::Missing));
        // A signature is judged by itself, even beside a valid key.
        let both = format!("x-cpub-key: cpk_k\r\n{}", sig("GET", "/fn/f/x", NOW, b""));
        let (verdict, names) = run("GET", "/fn/f/", &both, &either);
        assert_eq!(refusal(verdict), SigRefusal::BadSignature);
        assert!(names.contains(&"x-cpub-signature".to_string()));
        // key (the default): signatures are not looked at.
        let (verdict, _) = run(
            "GET",
            "/fn/f/",
            &sig("GET", "/fn/f/", NOW, b""),
            &route("key"),
        );
        assert_eq!(verdict, Err(Refusal::Missing));
    }

    #[test]
    fn a_signature_is_used_once() {
        let route = route("signature");
        let field = sig("GET", "/fn/f/once", NOW, b"");
        let signed = run("GET", "/fn/f/once", &field, &route).0.unwrap().unwrap();
        assert_eq!(remember(&signed), Ok(()));
        assert_eq!(remember(&signed), Err(SigRefusal::Replayed));
        let (verdict, _) = run("GET", "/fn/f/once", &field, &route);
        assert_eq!(refusal(verdict), SigRefusal::Replayed);
    }

    #[test]
    fn random_garbage_is_refused_without_panicking() {
        let route = route("signature");
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..2000 {
            let mut value = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 180) as usize;
            let alphabet = b"keyidtsbodysig=,0123456789abcdef_ ";
            for j in 0..len {
                let x = seed.rotate_left(j as u32 % 64) as usize + j;
                value.push(alphabet[x % alphabet.len()]);
            }
            let r = verify_head(&value, b"GET", b"/fn/f/", &route, NOW);
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(&value));
        }
    }
}
