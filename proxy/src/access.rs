//! Access to private functions: the invocation-key check of the data path.
//!
//! A `private` function (its manifest's `visibility`, the default) is
//! called only with one of its keys, as `x-cpub-key: <key>` or
//! `Authorization: Bearer <key>`. The key's sha256 is computed into a stack
//! array and compared with every digest the route table lists for the
//! function with `subtle`'s constant-time equality (all of them, whatever
//! matched: the time depends on the number of keys only). The field that
//! carried the key is removed from the head's field list, so the instance
//! never sees it; an `x-cpub-key` field is never forwarded for a private
//! function. No allocation on the way to a yes (the field list shrinks in
//! place); a refusal allocates its message.
//!
//! Which field counts: `x-cpub-key` when present (then an `Authorization`
//! field is left for the function, e.g. its own Basic scheme), else an
//! `Authorization` field with the `Bearer` scheme. Two fields of the kind
//! that counts are refused (400): which one the caller meant is unclear.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use containerpub_wire::api::Route;
use containerpub_wire::manifest::Visibility;
use containerpub_wire::private::KeyDigest;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use crate::h1::{Field, Name};
use crate::metrics::Rejection;
use crate::service::Reply;

/// The challenge of a 401 (RFC 6750 §3).
pub const CHALLENGE: &[u8] = b"Bearer realm=\"cpub\"";

/// Why a call of a private function is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key: 401 with `www-authenticate`.
    Missing,
    /// A key that is not one of the function's (wrong, or revoked): 403.
    Wrong,
    /// More than one field that could carry the key: 400.
    Ambiguous(&'static str),
    /// A signed call refused (`crate::signing`): 401.
    Signature(crate::signing::SigRefusal),
}

/// The challenge of a 401 for a function that takes signatures only.
pub const SIGNATURE_CHALLENGE: &[u8] = b"CPUB-HMAC-SHA256 realm=\"cpub\"";

impl Refusal {
    /// The proxy's answer for a call of `function`.
    pub fn reply(self, function: &str) -> Reply {
        match self {
            Self::Missing => Reply::rejected(
                Rejection::MissingKey,
                401,
                format!(
                    "function \"{function}\" is private: send one of its keys as \
                     \"Authorization: Bearer <key>\" or \"x-cpub-key: <key>\" (cpub key create {function})"
                ),
            ),
            Self::Wrong => Reply::rejected(
                Rejection::BadKey,
                403,
                format!("the key is not valid for function \"{function}\" (wrong or revoked)"),
            ),
            Self::Ambiguous(what) => Reply::rejected(Rejection::BadRequest, 400, what),
            Self::Signature(why) => {
                let (status, message) = why.status_and_message(function);
                Reply::rejected(Rejection::BadSignature, status, message)
            }
        }
    }

    /// The `www-authenticate` value the answer carries, if any.
    pub fn challenge(self) -> Option<&'static [u8]> {
        match self {
            Self::Missing => Some(CHALLENGE),
            Self::Signature(_) => Some(SIGNATURE_CHALLENGE),
            Self::Wrong | Self::Ambiguous(_) => None,
        }
    }
}

/// Checks the call whose head is `buf` + `fields` against `route`: `Ok` for
/// a public function, or a private one called with one of its keys (then
/// the key's field is removed from `fields`).
pub fn check(buf: &[u8], fields: &mut Vec<Field>, route: &Route) -> Result<(), Refusal> {
    if route.config.visibility == Visibility::Public {
        return Ok(());
    }
    let credential = find(buf, fields)?;
    let Some((index, key)) = credential else {
        return Err(Refusal::Missing);
    };
    if !matches_any(key, &route.keys) {
        return Err(Refusal::Wrong);
    }
    // Every `x-cpub-key` goes; `Authorization` only when it carried the key.
    let mut i = 0;
    fields.retain(|f| {
        let keep = i != index && !is_key_field(buf, f);
        i += 1;
        keep
    });
    Ok(())
}

/// Whether `key`'s sha256 is one of `digests`, in time that depends only on
/// the number of digests.
pub fn matches_any(key: &[u8], digests: &[KeyDigest]) -> bool {
    let presented: [u8; 32] = Sha256::digest(key).into();
    let mut found = Choice::from(0);
    for digest in digests {
        found |= presented.ct_eq(&digest.0);
    }
    found.into()
}

fn name_of<'b>(buf: &'b [u8], f: &Field) -> &'b [u8] {
    buf.get(f.name.clone()).unwrap_or_default()
}

fn is_key_field(buf: &[u8], f: &Field) -> bool {
    f.kind == Name::Other && name_of(buf, f).eq_ignore_ascii_case(b"x-cpub-key")
}

fn is_authorization(buf: &[u8], f: &Field) -> bool {
    f.kind == Name::Other && name_of(buf, f).eq_ignore_ascii_case(b"authorization")
}

/// The field that carries the key (its index) and the key, if any.
fn find<'b>(buf: &'b [u8], fields: &[Field]) -> Result<Option<(usize, &'b [u8])>, Refusal> {
    let mut header: Option<(usize, &[u8])> = None;
    let mut authorization: Option<(usize, &[u8])> = None;
    let mut authorizations = 0u32;
    for (i, f) in fields.iter().enumerate() {
        if f.kind != Name::Other {
            continue;
        }
        let value = || buf.get(f.value.clone()).unwrap_or_default().trim_ascii();
        if is_key_field(buf, f) {
            if header.is_some() {
                return Err(Refusal::Ambiguous(
                    "more than one x-cpub-key field: send the key once",
                ));
            }
            header = Some((i, value()));
        } else if is_authorization(buf, f) {
            authorizations += 1;
            authorization = Some((i, value()));
        }
    }
    if let Some((i, key)) = header {
        return Ok((!key.is_empty()).then_some((i, key)));
    }
    if authorizations > 1 {
        return Err(Refusal::Ambiguous(
            "more than one Authorization field: send the key once",
        ));
    }
    Ok(authorization.and_then(|(i, value)| Some((i, bearer_token(value)?))))
}

/// The token of a `Bearer` credential (RFC 6750 §2.1; the scheme's name is
/// case-insensitive, RFC 9110 §11.1), if `value` is one.
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let scheme = value.get(..6)?;
    let rest = value.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || rest.first() != Some(&b' ') {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h1::parse_request;
    use containerpub_wire::Manifest;
    use containerpub_wire::private::{KEY_PREFIX, SecretVar};

    const KEY: &str = "cpk_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn digest(key: &str) -> KeyDigest {
        KeyDigest(Sha256::digest(key.as_bytes()).into())
    }

    fn route(visibility: &str, keys: &[&str]) -> Route {
        let text = format!("name = \"f\"\nruntime = \"container\"\n{visibility}");
        Route {
            function: "f".into(),
            deployment_id: 1,
            version: 1,
            image: "img".into(),
            config: Manifest::parse(&text).unwrap(),
            keys: keys.iter().map(|k| digest(k)).collect(),
            secrets: Vec::<SecretVar>::new(),
            signing_keys: Vec::new(),
        }
    }

    /// Runs the check on a request with `head_fields`; returns the verdict
    /// and the names of the fields left to forward.
    fn run(head_fields: &str, route: &Route) -> (Result<(), Refusal>, Vec<String>) {
        let raw = format!("GET /fn/f/ HTTP/1.1\r\nhost: x\r\n{head_fields}\r\n");
        let mut fields = Vec::new();
        parse_request(raw.as_bytes(), &mut fields).unwrap().unwrap();
        let verdict = check(raw.as_bytes(), &mut fields, route);
        let names = fields
            .iter()
            .map(|f| String::from_utf8(raw.as_bytes()[f.name.clone()].to_vec()).unwrap())
            .collect();
        (verdict, names)
    }

    #[test]
    fn the_default_visibility_is_private() {
        let (verdict, _) = run("", &route("", &[KEY]));
        assert_eq!(verdict, Err(Refusal::Missing));
    }

    #[test]
    fn public_functions_pass_untouched() {
        let route = route("visibility = \"public\"\n", &[]);
        let (verdict, names) = run("x-cpub-key: nope\r\nauthorization: Bearer x\r\n", &route);
        assert_eq!(verdict, Ok(()));
        assert_eq!(names, ["host", "x-cpub-key", "authorization"]);
    }

    #[test]
    fn a_valid_key_in_either_field_passes_and_is_stripped() {
        let route = route("visibility = \"private\"\n", &["cpk_other", KEY]);
        for fields in [
            format!("x-cpub-key: {KEY}\r\naccept: */*\r\n"),
            format!("X-CPUB-KEY:   {KEY}  \r\naccept: */*\r\n"),
            format!("authorization: Bearer {KEY}\r\naccept: */*\r\n"),
            format!("Authorization: bearer   {KEY}\r\naccept: */*\r\n"),
        ] {
            let (verdict, names) = run(&fields, &route);
            assert_eq!(verdict, Ok(()), "{fields}");
            assert_eq!(names, ["host", "accept"], "{fields}");
        }
        // With x-cpub-key, the function keeps its own Authorization.
        let (verdict, names) = run(
            &format!("authorization: Basic YTpi\r\nx-cpub-key: {KEY}\r\n"),
            &route,
        );
        assert_eq!(verdict, Ok(()));
        assert_eq!(names, ["host", "authorization"]);
    }

    #[test]
    fn missing_keys_are_401_and_wrong_ones_403() {
        let route = route("", &[KEY]);
        for fields in [
            "",
            "authorization: Basic YTpi\r\n",
            "authorization: Bearer\r\n",
            "authorization: Bearerx\r\n",
            "x-cpub-key: \r\n",
            "x-cpub-keys: abc\r\n",
        ] {
            let (verdict, _) = run(fields, &route);
            assert_eq!(verdict, Err(Refusal::Missing), "{fields:?}");
        }
        let long = "k".repeat(4000);
        for fields in [
            format!("x-cpub-key: {}\r\n", &KEY[..KEY.len() - 1]),
            format!("x-cpub-key: {KEY}0\r\n"),
            format!("x-cpub-key: {}\r\n", KEY.to_uppercase()),
            format!("authorization: Bearer {KEY_PREFIX}\r\n"),
            format!("x-cpub-key: {long}\r\n"),
            // x-cpub-key counts, even when Authorization has the right key.
            format!("x-cpub-key: wrong\r\nauthorization: Bearer {KEY}\r\n"),
        ] {
            let (verdict, _) = run(&fields, &route);
            assert_eq!(verdict, Err(Refusal::Wrong), "{fields:?}");
        }
        // A private function without keys refuses every key.
        let (verdict, _) = run(&format!("x-cpub-key: {KEY}\r\n"), &self::route("", &[]));
        assert_eq!(verdict, Err(Refusal::Wrong));
    }

    #[test]
    fn two_candidate_fields_are_refused() {
        let route = route("", &[KEY]);
        for fields in [
            format!("x-cpub-key: {KEY}\r\nx-cpub-key: {KEY}\r\n"),
            format!("authorization: Bearer {KEY}\r\nauthorization: Bearer {KEY}\r\n"),
        ] {
            let (verdict, _) = run(&fields, &route);
            assert!(matches!(verdict, Err(Refusal::Ambiguous(_))), "{fields}");
        }
    }

    #[test]
    fn refusals_answer_with_the_right_status_and_challenge() {
        let missing = Refusal::Missing.reply("f");
        assert_eq!(missing.status, 401);
        assert!(missing.message.contains("cpub key create f"));
        assert_eq!(Refusal::Missing.challenge(), Some(CHALLENGE));
        assert_eq!(Refusal::Wrong.reply("f").status, 403);
        assert_eq!(Refusal::Wrong.challenge(), None);
        assert_eq!(Refusal::Ambiguous("x").reply("f").status, 400);
    }

    #[test]
    fn matching_compares_every_digest() {
        let digests: Vec<KeyDigest> = (0..5).map(|i| digest(&format!("k{i}"))).collect();
        for i in 0..5 {
            assert!(matches_any(format!("k{i}").as_bytes(), &digests));
        }
        assert!(!matches_any(b"k5", &digests));
        assert!(!matches_any(b"", &digests));
        assert!(!matches_any(b"k0", &[]));
    }
}
