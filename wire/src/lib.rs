//! Wire types shared by `cpub-control`, `cpub-proxy` and `cpub`: the bundle
//! manifest (`cpub.toml`) and the JSON bodies of the `/api/v1` API.
//!
//! This crate has no I/O. Everything here is data plus validation, so the CLI
//! can check a manifest before upload with exactly the rules the server uses.

pub mod api;
pub mod manifest;

pub use manifest::{Manifest, ManifestError};

/// Environment variable: base URL of the control plane (`cpub`, `cpub-proxy`).
pub const ENV_URL: &str = "CPUB_URL";
/// Environment variable: API token (`cpub`, `cpub-proxy`).
pub const ENV_TOKEN: &str = "CPUB_TOKEN";

/// Name of the manifest file at the root of every bundle.
pub const MANIFEST_FILE: &str = "cpub.toml";

/// Checks a function name: 1–63 characters of `a-z`, `0-9` and `-`, starting
/// with a letter and not ending with `-` (a DNS label, so `<name>.<domain>`
/// routing works and image/container names derived from it are valid).
pub fn validate_function_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "function name must be 1 to 63 characters, got {}",
            name.len()
        ));
    }
    if !ok_chars || !name.as_bytes()[0].is_ascii_lowercase() || name.ends_with('-') {
        return Err(format!(
            "function name {name:?} must use a-z, 0-9 and '-', start with a letter and not end with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_function_name;

    #[test]
    fn function_names() {
        assert!(validate_function_name("hello").is_ok());
        assert!(validate_function_name("a-1").is_ok());
        for bad in ["", "1abc", "Hello", "a_b", "a-", "a/b", &"x".repeat(64)] {
            assert!(validate_function_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
