//! HMAC request signing (issue 10), as the control plane, the proxy and the
//! CLI share it: the signing-key format, the `x-cpub-signature` header, the
//! canonical string and the signature, and the `…/signing-keys` bodies.
//!
//! A caller that must not send a bearer secret signs each call with a
//! signing key of the function instead:
//!
//! ```text
//! x-cpub-signature: keyid=<id>,ts=<unix seconds>,body=<hex sha256 of the body>,sig=<hex hmac>
//! ```
//!
//! where `sig` is HMAC-SHA256, keyed with the whole secret (`cpss_…`, as
//! text), of the canonical string: five lines joined by `\n` (no newline
//! at the end):
//!
//! ```text
//! cpub-hmac-sha256-v1
//! <METHOD>            (as sent, e.g. POST)
//! <target>            (path and query as sent, e.g. /fn/hello/x?a=1)
//! <ts>                (the header's ts, as sent)
//! <body>              (the header's body digest, 64 lowercase hex digits)
//! ```
//!
//! The digest travels in the header so the proxy checks the signature
//! before it reads a byte of the body (a caller without the secret never
//! makes it buffer anything), then reads the body and checks the digest.
//! `ts` must be within [`WINDOW_S`] of the proxy's clock and a signature is
//! accepted once within the window (replays are refused). The hex in `sig`
//! and `body` may be either case; the canonical string carries `body` in
//! lowercase.

use std::fmt;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::private::SecretValue;

/// The header that carries a signature.
pub const SIGNATURE_HEADER: &str = "x-cpub-signature";
/// First line of the canonical string (the scheme and its version).
pub const SCHEME: &str = "cpub-hmac-sha256-v1";
/// How far a signature's `ts` may be from the proxy's clock, either way,
/// and how long a seen signature is remembered.
pub const WINDOW_S: i64 = 300;
/// Prefix of a signing key's id: `sk_<16 hex>`.
pub const KEY_ID_PREFIX: &str = "sk_";
/// Length of a well-formed key id.
pub const KEY_ID_LEN: usize = KEY_ID_PREFIX.len() + 16;
/// Prefix of a signing secret: `cpss_<64 hex>` (32 random bytes).
pub const SECRET_PREFIX: &str = "cpss_";
/// Most live signing keys one function may have.
pub const MAX_SIGNING_KEYS_PER_FUNCTION: usize = 16;
/// Largest body of a signed call the proxy buffers to check its digest
/// (the function's `max_body_bytes` applies too, whichever is lower).
pub const MAX_SIGNED_BODY_BYTES: u64 = 16 * 1024 * 1024;

/// The sha256 of an empty body, in hex.
pub const EMPTY_BODY_DIGEST: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

type HmacSha256 = Hmac<Sha256>;

/// A function's signing key as the route table carries it to proxies: its
/// id and its secret (never shown by `Debug`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    pub id: String,
    pub secret: SecretValue,
}

/// The parts of an `x-cpub-signature` value, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureHeader<'a> {
    pub key_id: &'a [u8],
    /// The timestamp as sent (its digits go into the canonical string).
    pub ts_text: &'a [u8],
    pub ts: i64,
    pub body_digest: [u8; 32],
    pub sig: [u8; 32],
}

/// What is wrong with an `x-cpub-signature` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// A part that is not `name=value`, or a name other than keyid, ts,
    /// body and sig.
    UnknownPart,
    /// A part given twice.
    Repeated(&'static str),
    /// A part left out.
    MissingPart(&'static str),
    /// A part whose value has the wrong shape.
    BadValue(&'static str),
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownPart => f.write_str(
                "a part is not one of keyid=, ts=, body=, sig= (comma-separated name=value pairs)",
            ),
            Self::Repeated(p) => write!(f, "{p}= is given more than once"),
            Self::MissingPart(p) => write!(f, "{p}= is missing"),
            Self::BadValue("keyid") => f.write_str("keyid= is empty or too long"),
            Self::BadValue("ts") => f.write_str("ts= must be unix seconds (1 to 12 digits)"),
            Self::BadValue(p) => write!(f, "{p}= must be 64 hex digits"),
        }
    }
}

/// Parses an `x-cpub-signature` value: `keyid=…,ts=…,body=…,sig=…` in any
/// order, spaces around parts allowed, each part exactly once. Allocates
/// nothing.
pub fn parse_header(value: &[u8]) -> Result<SignatureHeader<'_>, HeaderError> {
    let mut key_id = None;
    let mut ts = None;
    let mut body = None;
    let mut sig = None;
    for part in value.split(|b| *b == b',') {
        let part = part.trim_ascii();
        let eq = part
            .iter()
            .position(|b| *b == b'=')
            .ok_or(HeaderError::UnknownPart)?;
        let (name, rest) = part.split_at(eq);
        let v = rest.get(1..).unwrap_or_default().trim_ascii();
        let (slot, label): (&mut Option<&[u8]>, &'static str) = match name.trim_ascii() {
            b"keyid" => (&mut key_id, "keyid"),
            b"ts" => (&mut ts, "ts"),
            b"body" => (&mut body, "body"),
            b"sig" => (&mut sig, "sig"),
            _ => return Err(HeaderError::UnknownPart),
        };
        if slot.replace(v).is_some() {
            return Err(HeaderError::Repeated(label));
        }
    }
    let key_id = key_id.ok_or(HeaderError::MissingPart("keyid"))?;
    let ts_text = ts.ok_or(HeaderError::MissingPart("ts"))?;
    let body = body.ok_or(HeaderError::MissingPart("body"))?;
    let sig = sig.ok_or(HeaderError::MissingPart("sig"))?;
    if key_id.is_empty() || key_id.len() > 64 {
        return Err(HeaderError::BadValue("keyid"));
    }
    let ts = parse_ts(ts_text).ok_or(HeaderError::BadValue("ts"))?;
    let body_digest = hex32(body).ok_or(HeaderError::BadValue("body"))?;
    let sig = hex32(sig).ok_or(HeaderError::BadValue("sig"))?;
    Ok(SignatureHeader {
        key_id,
        ts_text,
        ts,
        body_digest,
        sig,
    })
}

fn parse_ts(text: &[u8]) -> Option<i64> {
    if text.is_empty() || text.len() > 12 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
}

/// 64 hex digits (either case) as 32 bytes.
pub fn hex32(text: &[u8]) -> Option<[u8; 32]> {
    crate::private::KeyDigest::from_hex(std::str::from_utf8(text).ok()?).map(|d| d.0)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// 32 bytes as 64 lowercase hex digits, on the stack.
pub fn hex_lower(bytes: &[u8; 32]) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// The sha256 of a body.
pub fn body_digest(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The canonical string a signature covers (for documentation, tests and
/// callers; [`sign`] computes the same without building it).
pub fn canonical_string(method: &str, target: &str, ts: &str, body_digest: &[u8; 32]) -> String {
    let digest = hex_lower(body_digest);
    format!(
        "{SCHEME}\n{method}\n{target}\n{ts}\n{}",
        std::str::from_utf8(&digest).unwrap_or_default()
    )
}

/// HMAC-SHA256 under `secret` of the canonical string of a call, fed part
/// by part (no allocation).
pub fn sign(
    secret: &[u8],
    method: &[u8],
    target: &[u8],
    ts: &[u8],
    body_digest: &[u8; 32],
) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(SCHEME.as_bytes());
    mac.update(b"\n");
    mac.update(method);
    mac.update(b"\n");
    mac.update(target);
    mac.update(b"\n");
    mac.update(ts);
    mac.update(b"\n");
    mac.update(&hex_lower(body_digest));
    mac.finalize().into_bytes().into()
}

/// Whether `sig` is the signature of the call under `secret`, compared in
/// constant time (`hmac`'s `verify_slice`).
pub fn verify(
    secret: &[u8],
    method: &[u8],
    target: &[u8],
    ts: &[u8],
    body_digest: &[u8; 32],
    sig: &[u8; 32],
) -> bool {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(SCHEME.as_bytes());
    mac.update(b"\n");
    mac.update(method);
    mac.update(b"\n");
    mac.update(target);
    mac.update(b"\n");
    mac.update(ts);
    mac.update(b"\n");
    mac.update(&hex_lower(body_digest));
    mac.verify_slice(sig).is_ok()
}

/// The `x-cpub-signature` value for a call (what `cpub invoke --sign`
/// sends).
pub fn header_value(
    key_id: &str,
    secret: &[u8],
    method: &str,
    target: &str,
    ts: i64,
    body: &[u8],
) -> String {
    let digest = body_digest(body);
    let ts = ts.to_string();
    let sig = sign(
        secret,
        method.as_bytes(),
        target.as_bytes(),
        ts.as_bytes(),
        &digest,
    );
    let hex = |b: &[u8; 32]| String::from_utf8_lossy(&hex_lower(b)).into_owned();
    format!(
        "keyid={key_id},ts={ts},body={},sig={}",
        hex(&digest),
        hex(&sig)
    )
}

/// Whether `id` has the shape of a signing key id (`sk_` + 16 lowercase
/// hex digits).
pub fn is_key_id_shaped(id: &str) -> bool {
    id.len() == KEY_ID_LEN
        && id.starts_with(KEY_ID_PREFIX)
        && id.as_bytes()[KEY_ID_PREFIX.len()..]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `POST /api/v1/functions/{name}/signing-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyCreateRequest {
    /// A label to tell keys apart; at most
    /// [`crate::private::MAX_KEY_LABEL_LEN`] printable characters.
    #[serde(default)]
    pub label: String,
}

/// One signing key, without its secret (`GET …/signing-keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyInfo {
    /// The id callers put in `keyid=`.
    pub key_id: String,
    pub label: String,
    pub created_at: DateTime<Utc>,
}

/// The answer to a signing-key creation: the secret, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKeyCreated {
    #[serde(flatten)]
    pub info: SigningKeyInfo,
    pub secret: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECRET: &[u8] = b"cpss_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn the_canonical_string_is_five_lines() {
        let s = canonical_string("POST", "/fn/f/x?a=1", "1700000000", &body_digest(b""));
        assert_eq!(
            s,
            format!("cpub-hmac-sha256-v1\nPOST\n/fn/f/x?a=1\n1700000000\n{EMPTY_BODY_DIGEST}")
        );
    }

    #[test]
    fn a_known_signature() {
        // The same as: printf '%s' "$canonical" | openssl dgst -sha256 -hmac "$SECRET"
        let sig = sign(
            SECRET,
            b"POST",
            b"/fn/f/x?a=1",
            b"1700000000",
            &body_digest(b"hello"),
        );
        assert_eq!(
            std::str::from_utf8(&hex_lower(&sig)).unwrap(),
            "38883292c3fbb88052c9d11a9ad03b765702d1e0d097e696c0a63386e6535dd7"
        );
    }

    #[test]
    fn header_round_trip_and_refusals() {
        let value = header_value("sk_0123456789abcdef", SECRET, "GET", "/fn/f/", 17, b"x");
        let h = parse_header(value.as_bytes()).unwrap();
        assert_eq!(h.key_id, b"sk_0123456789abcdef");
        assert_eq!((h.ts, h.ts_text), (17, &b"17"[..]));
        assert_eq!(h.body_digest, body_digest(b"x"));
        assert!(verify(
            SECRET,
            b"GET",
            b"/fn/f/",
            b"17",
            &h.body_digest,
            &h.sig
        ));
        // Spaces and order do not matter; hex case does not either.
        let swapped = format!(
            " sig = {} , body={} ,ts=17, keyid=sk_0123456789abcdef ",
            std::str::from_utf8(&hex_lower(&h.sig))
                .unwrap()
                .to_uppercase(),
            std::str::from_utf8(&hex_lower(&h.body_digest)).unwrap()
        );
        assert_eq!(parse_header(swapped.as_bytes()), Ok(h));
        let d = "ab".repeat(32);
        for (bad, want) in [
            (String::new(), HeaderError::UnknownPart),
            (
                format!("keyid=k,ts=1,body={d}"),
                HeaderError::MissingPart("sig"),
            ),
            (
                format!("keyid=k,ts=1,sig={d}"),
                HeaderError::MissingPart("body"),
            ),
            (
                format!("keyid=k,body={d},sig={d}"),
                HeaderError::MissingPart("ts"),
            ),
            (
                format!("ts=1,body={d},sig={d}"),
                HeaderError::MissingPart("keyid"),
            ),
            (
                format!("keyid=k,keyid=k,ts=1,body={d},sig={d}"),
                HeaderError::Repeated("keyid"),
            ),
            (
                format!("keyid=k,ts=1,body={d},sig={d},x=1"),
                HeaderError::UnknownPart,
            ),
            (
                format!("keyid=k,ts=1,body={d},sig={d},"),
                HeaderError::UnknownPart,
            ),
            (
                format!("keyid=,ts=1,body={d},sig={d}"),
                HeaderError::BadValue("keyid"),
            ),
            (
                format!("keyid=k,ts=-1,body={d},sig={d}"),
                HeaderError::BadValue("ts"),
            ),
            (
                format!("keyid=k,ts=1234567890123,body={d},sig={d}"),
                HeaderError::BadValue("ts"),
            ),
            (
                format!("keyid=k,ts=1,body=ab,sig={d}"),
                HeaderError::BadValue("body"),
            ),
            (
                format!("keyid=k,ts=1,body={d},sig={d}0"),
                HeaderError::BadValue("sig"),
            ),
        ] {
            assert_eq!(parse_header(bad.as_bytes()), Err(want), "{bad}");
            assert!(!want.to_string().is_empty());
        }
    }

    #[test]
    fn key_id_shape() {
        assert!(is_key_id_shaped("sk_0123456789abcdef"));
        assert!(!is_key_id_shaped("sk_0123456789abcde"));
        assert!(!is_key_id_shaped("sk_0123456789ABCDEF"));
        assert!(!is_key_id_shaped("xx_0123456789abcdef"));
    }

    #[test]
    fn signing_keys_stay_out_of_debug() {
        let k = SigningKey {
            id: "sk_1".into(),
            secret: SecretValue("cpss_hunter2".into()),
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }

    proptest! {
        /// `sign` (part by part) is the HMAC of `canonical_string`, and
        /// `verify` accepts it and nothing that differs in any part.
        #[test]
        fn signatures_cover_every_part(
            method in "[A-Z]{1,8}",
            target in "/[ -~]{0,80}",
            ts in 0i64..1_000_000_000_000,
            body in proptest::collection::vec(any::<u8>(), 0..512),
            flip in any::<usize>(),
        ) {
            let ts_text = ts.to_string();
            let digest = body_digest(&body);
            let sig = sign(SECRET, method.as_bytes(), target.as_bytes(), ts_text.as_bytes(), &digest);
            let mut mac = HmacSha256::new_from_slice(SECRET).unwrap();
            mac.update(canonical_string(&method, &target, &ts_text, &digest).as_bytes());
            let expected: [u8; 32] = mac.finalize().into_bytes().into();
            prop_assert_eq!(sig, expected);
            prop_assert!(verify(SECRET, method.as_bytes(), target.as_bytes(), ts_text.as_bytes(), &digest, &sig));
            // Any other body, target, method, ts or key fails.
            let mut other = body.clone();
            if other.is_empty() { other.push(0) } else { let i = flip % other.len(); other[i] ^= 1 }
            prop_assert!(!verify(SECRET, method.as_bytes(), target.as_bytes(), ts_text.as_bytes(), &body_digest(&other), &sig));
            let other_target = format!("{target}x");
            prop_assert!(!verify(SECRET, method.as_bytes(), other_target.as_bytes(), ts_text.as_bytes(), &digest, &sig));
            let other_method = format!("{method}X");
            prop_assert!(!verify(SECRET, other_method.as_bytes(), target.as_bytes(), ts_text.as_bytes(), &digest, &sig));
            let other_ts = (ts + 1).to_string();
            prop_assert!(!verify(SECRET, method.as_bytes(), target.as_bytes(), other_ts.as_bytes(), &digest, &sig));
            prop_assert!(!verify(b"cpss_other", method.as_bytes(), target.as_bytes(), ts_text.as_bytes(), &digest, &sig));
            let mut bad = sig;
            bad[flip % 32] ^= 0x80;
            prop_assert!(!verify(SECRET, method.as_bytes(), target.as_bytes(), ts_text.as_bytes(), &digest, &bad));
            // The header carries it all.
            let value = header_value("sk_0123456789abcdef", SECRET, &method, &target, ts, &body);
            let h = parse_header(value.as_bytes()).unwrap();
            prop_assert_eq!(h.sig, sig);
            prop_assert_eq!(h.body_digest, digest);
        }

        /// Arbitrary header values never panic the parser.
        #[test]
        fn any_header_value_parses_or_is_refused(value in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_header(&value);
        }
    }
}
