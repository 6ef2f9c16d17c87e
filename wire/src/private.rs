//! Access to private functions and function secrets, as the control plane,
//! the proxy and the CLI share them: invocation keys (their format, the
//! headers that carry them, their sha256 digests in the route table),
//! secret names and values (a value never shows in `Debug`), and the
//! `/api/v1/functions/{name}/keys` and `…/secrets` bodies.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of every invocation key: `cpk_<64 hex>` (32 random bytes).
pub const KEY_PREFIX: &str = "cpk_";
/// Length of a well-formed key.
pub const KEY_LEN: usize = KEY_PREFIX.len() + 64;
/// The header that carries a key (besides `Authorization: Bearer <key>`).
pub const KEY_HEADER: &str = "x-cpub-key";
/// Longest key label.
pub const MAX_KEY_LABEL_LEN: usize = 64;
/// Most live keys one function may have (the proxy compares a presented
/// key with each of them).
pub const MAX_KEYS_PER_FUNCTION: usize = 32;
/// Longest secret name.
pub const MAX_SECRET_NAME_LEN: usize = 128;
/// Largest secret value, in bytes.
pub const MAX_SECRET_VALUE_BYTES: usize = 64 * 1024;
/// Most secrets one function may have.
pub const MAX_SECRETS_PER_FUNCTION: usize = 100;

/// The sha256 of an invocation key, as it travels to proxies and is stored:
/// 64 lowercase hex digits on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyDigest(pub [u8; 32]);

impl fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({self})")
    }
}

impl fmt::Display for KeyDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl KeyDigest {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = text.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0])?;
            let lo = hex_value(pair[1])?;
            out[i] = (hi << 4) | lo;
        }
        Some(Self(out))
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

impl Serialize for KeyDigest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for KeyDigest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a key digest must be 64 hex digits (sha256)"))
    }
}

/// Whether `key` has the shape of an invocation key (`cpk_` + 64 lowercase
/// hex digits). The proxy does not need this (a malformed key simply
/// matches no digest); the CLI uses it to catch a pasted fragment early.
pub fn is_key_shaped(key: &str) -> bool {
    key.len() == KEY_LEN
        && key.starts_with(KEY_PREFIX)
        && key.as_bytes()[KEY_PREFIX.len()..]
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Checks a secret's name: an environment variable name of `A-Z`, `0-9`
/// and `_`, not starting with a digit, at most [`MAX_SECRET_NAME_LEN`]
/// characters, not `PORT` (the platform sets it) and not starting with
/// `CPUB_` (reserved for the platform).
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let shaped = !name.is_empty()
        && name.len() <= MAX_SECRET_NAME_LEN
        && !name.as_bytes()[0].is_ascii_digit()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if !shaped {
        return Err(format!(
            "must be 1 to {MAX_SECRET_NAME_LEN} characters of A-Z, 0-9 and '_', not starting with a digit, got {:?}",
            name.chars().take(80).collect::<String>()
        ));
    }
    if name == "PORT" || name.starts_with("CPUB_") {
        return Err(format!(
            "{name} is reserved for the platform (PORT and CPUB_*)"
        ));
    }
    Ok(())
}

/// Checks a secret's value: at most [`MAX_SECRET_VALUE_BYTES`], valid
/// UTF-8 (the caller's job), no NUL (an environment entry cannot hold one).
pub fn validate_secret_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_SECRET_VALUE_BYTES {
        return Err(format!(
            "is {} bytes, more than the limit of {MAX_SECRET_VALUE_BYTES}",
            value.len()
        ));
    }
    if value.contains('\0') {
        return Err("must not contain NUL (environment values cannot)".into());
    }
    Ok(())
}

/// A secret value: serialised as it is (it travels only to proxies, over
/// the route watch), never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretValue(pub String);

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// One secret of a function, decrypted for the node that starts its
/// instances (in the route table only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretVar {
    pub name: String,
    pub value: SecretValue,
}

/// `POST /api/v1/functions/{name}/keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCreateRequest {
    /// A label to tell keys apart (`cpub key list`); at most
    /// [`MAX_KEY_LABEL_LEN`] printable characters.
    #[serde(default)]
    pub label: String,
}

/// One invocation key, without the key (`GET …/keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: i64,
    pub label: String,
    /// The key's first characters (`cpk_1a2b`), to recognise it.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
}

/// The answer to a key creation: the key, shown this once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyCreated {
    #[serde(flatten)]
    pub info: KeyInfo,
    pub key: String,
}

/// `PUT /api/v1/functions/{name}/secrets/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSetRequest {
    pub value: String,
}

/// One secret, by name only (`GET …/secrets`): values are never answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    pub name: String,
    pub updated_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_round_trip_as_hex() {
        let d = KeyDigest([0xab; 32]);
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        assert_eq!(serde_json::from_str::<KeyDigest>(&json).unwrap(), d);
        assert_eq!(KeyDigest::from_hex(&"AB".repeat(32)), Some(d));
        for bad in ["", "ab", &"g0".repeat(32), &"ab".repeat(33)] {
            assert_eq!(KeyDigest::from_hex(bad), None, "{bad}");
        }
        assert!(serde_json::from_str::<KeyDigest>("\"xyz\"").is_err());
    }

    #[test]
    fn key_shape() {
        let key = format!("{KEY_PREFIX}{}", "0a".repeat(32));
        assert!(is_key_shaped(&key));
        assert!(!is_key_shaped(&key[..KEY_LEN - 1]));
        assert!(!is_key_shaped(&key.to_uppercase()));
        assert!(!is_key_shaped(&format!("cpub_{}", "0a".repeat(32))));
    }

    #[test]
    fn secret_names() {
        for ok in ["A", "DB_PASSWORD", "_X1", &"A".repeat(MAX_SECRET_NAME_LEN)] {
            assert_eq!(validate_secret_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "1A",
            "db",
            "A-B",
            "A B",
            "PORT",
            "CPUB_TOKEN",
            &"A".repeat(MAX_SECRET_NAME_LEN + 1),
        ] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
        assert!(validate_secret_value("a\0b").is_err());
        assert!(validate_secret_value(&"x".repeat(MAX_SECRET_VALUE_BYTES + 1)).is_err());
        assert!(validate_secret_value("multi\nline").is_ok());
    }

    #[test]
    fn secret_values_stay_out_of_debug() {
        let var = SecretVar {
            name: "TOKEN".into(),
            value: SecretValue("hunter2".into()),
        };
        let shown = format!("{var:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("TOKEN"),
            "{shown}"
        );
        let json = serde_json::to_string(&var).unwrap();
        assert_eq!(json, r#"{"name":"TOKEN","value":"hunter2"}"#);
    }
}
