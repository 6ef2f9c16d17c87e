//! The contract between `cpub-control`, `cpub-proxy` and `cpub`: the bundle
//! manifest (`cpub.toml`) and the bundle's file names, the JSON bodies and
//! queries of the `/api/v1` API, the invocation path prefix, and the rules
//! for names and request ids.
//!
//! This crate has no I/O. Everything here is data plus validation, so each
//! side checks a value with exactly the rules the other side uses.

pub mod access;
pub mod api;
pub mod elf;
pub mod executions;
pub mod logs;
pub mod manifest;
pub mod private;
pub mod request_id;
pub mod signing;
pub mod start_failures;
pub mod usage;

pub use manifest::{Manifest, ManifestError};

/// Environment variable: base URL of the control plane (`cpub`, `cpub-proxy`).
pub const ENV_URL: &str = "CPUB_URL";
/// Environment variable: API token (`cpub`, `cpub-proxy`).
pub const ENV_TOKEN: &str = "CPUB_TOKEN";

/// Name of the manifest file at the root of every bundle.
pub const MANIFEST_FILE: &str = "cpub.toml";
/// The Containerfile of a `runtime = "container"` bundle, at its root.
pub const CONTAINERFILE: &str = "Containerfile";

/// Prefix of every invocation path: `/fn/{name}/{rest}` calls function
/// `name` with the path `/{rest}`.
pub const INVOKE_PREFIX: &str = "/fn/";

/// The URL that invokes function `name` through the proxy at `proxy_url`
/// (`http://host:port`, with or without a trailing `/`).
pub fn function_url(proxy_url: &str, name: &str) -> String {
    let base = proxy_url.trim_end_matches('/');
    format!("{base}{INVOKE_PREFIX}{name}/")
}

/// Longest node name.
pub const MAX_NODE_NAME_LEN: usize = 63;

/// Checks a node name (what a proxy calls itself: on the route watch, in
/// crash reports, on every container label and in container names): 1 to
/// [`MAX_NODE_NAME_LEN`] characters of `A-Z a-z 0-9 - _ .`.
pub fn validate_node_name(node: &str) -> Result<(), String> {
    let ok = !node.is_empty()
        && node.len() <= MAX_NODE_NAME_LEN
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {MAX_NODE_NAME_LEN} characters of A-Z, a-z, 0-9, '-', '_' and '.', got {node:?}"
        ))
    }
}

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
    use super::*;

    #[test]
    fn function_urls() {
        for base in ["http://p:8080", "http://p:8080/"] {
            assert_eq!(function_url(base, "hello"), "http://p:8080/fn/hello/");
        }
    }

    #[test]
    fn node_names() {
        for good in ["n1", "edge-1.example_a", &"x".repeat(MAX_NODE_NAME_LEN)] {
            assert!(validate_node_name(good).is_ok(), "{good:?} refused");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "a\nb",
            "a\0",
            "caf\u{e9}",
            &"x".repeat(MAX_NODE_NAME_LEN + 1),
        ] {
            let err = validate_node_name(bad).unwrap_err();
            assert!(err.contains("1 to 63"), "{err}");
        }
    }

    #[test]
    fn function_names() {
        assert!(validate_function_name("hello").is_ok());
        assert!(validate_function_name("a-1").is_ok());
        for bad in ["", "1abc", "Hello", "a_b", "a-", "a/b", &"x".repeat(64)] {
            assert!(validate_function_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
