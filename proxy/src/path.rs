//! Invocation paths: `/fn/{name}/{rest}?{query}` split into the function
//! name and the path the function sees (`/{rest}?{query}`).
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

/// Prefix of every invocation path (`containerpub_wire::INVOKE_PREFIX`).
pub use containerpub_wire::INVOKE_PREFIX as PREFIX;

/// A path that addresses a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Function name, percent-decoded and checked with
    /// `containerpub_wire::validate_function_name`.
    pub name: String,
    /// Path and query forwarded to the function: the prefix is gone, the
    /// rest (still percent-encoded as received) and the query are kept.
    pub upstream: String,
}

/// Why a path does not address a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    /// Not under `/fn/` at all.
    NotInvocation,
    /// Under `/fn/`, but the name segment is not a function name. Holds the
    /// segment as received (for the 404 message).
    BadName(String),
}

/// Splits an invocation path. `query` is the part after `?`, if any.
pub fn parse(path: &str, query: Option<&str>) -> Result<Invocation, PathError> {
    let after = path.strip_prefix(PREFIX).ok_or(PathError::NotInvocation)?;
    let (raw_name, rest) = match after.find('/').and_then(|i| after.split_at_checked(i)) {
        Some(parts) => parts,
        None => (after, ""),
    };
    let name = percent_decode(raw_name)
        .filter(|name| containerpub_wire::validate_function_name(name).is_ok())
        .ok_or_else(|| PathError::BadName(raw_name.to_owned()))?;
    let rest = if rest.is_empty() { "/" } else { rest };
    let upstream = match query {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    Ok(Invocation { name, upstream })
}

/// Decodes `%XX` escapes; `None` when the result is not UTF-8. A malformed
/// escape (`%`, `%4`, `%zz`) stays as it is, and a `%` never passes
/// `validate_function_name`.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(path: &str, query: Option<&str>) -> (String, String) {
        let inv = parse(path, query).unwrap_or_else(|e| panic!("{path}: {e:?}"));
        (inv.name, inv.upstream)
    }

    fn s(a: &str, b: &str) -> (String, String) {
        (a.to_owned(), b.to_owned())
    }

    #[test]
    fn function_paths() {
        assert_eq!(ok("/fn/a", None), s("a", "/"));
        assert_eq!(ok("/fn/a/", None), s("a", "/"));
        assert_eq!(ok("/fn/a/b/c", Some("x=1")), s("a", "/b/c?x=1"));
        assert_eq!(ok("/fn/a", Some("x=1&y")), s("a", "/?x=1&y"));
        assert_eq!(ok("/fn/hello-2/b//c/", None), s("hello-2", "/b//c/"));
        // An empty query is kept as sent.
        assert_eq!(ok("/fn/a/b", Some("")), s("a", "/b?"));
    }

    #[test]
    fn rest_stays_encoded() {
        assert_eq!(ok("/fn/a/x%2Fy%20z", None), s("a", "/x%2Fy%20z"));
    }

    #[test]
    fn percent_encoded_names_are_decoded() {
        assert_eq!(ok("/fn/h%65llo/x", None), s("hello", "/x"));
        assert_eq!(ok("/fn/%61", None), s("a", "/"));
        // Decoding must not smuggle a slash or upper case into the name.
        assert_eq!(
            parse("/fn/a%2Fb/x", None),
            Err(PathError::BadName("a%2Fb".into()))
        );
        assert_eq!(
            parse("/fn/%41", None),
            Err(PathError::BadName("%41".into()))
        );
        // Malformed or double escapes: decoded once, a `%` left is no name.
        for bad in [
            "/fn/a%",
            "/fn/a%4",
            "/fn/a%zz",
            "/fn/%ff",
            "/fn/%2561",
            "/fn/a%C3",
        ] {
            assert!(
                matches!(parse(bad, None), Err(PathError::BadName(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn non_invocation_paths() {
        for path in [
            "/", "/fn", "/fnx", "/fnx/a", "/healthz", "/FN/a", "fn/a", "",
        ] {
            assert_eq!(parse(path, None), Err(PathError::NotInvocation), "{path}");
        }
    }

    #[test]
    fn bad_names() {
        for (path, raw) in [
            ("/fn/", ""),
            ("/fn//x", ""),
            ("/fn/Hello", "Hello"),
            ("/fn/1abc/", "1abc"),
            ("/fn/a_b", "a_b"),
            ("/fn/a-", "a-"),
            ("/fn/..", ".."),
        ] {
            assert_eq!(
                parse(path, None),
                Err(PathError::BadName(raw.into())),
                "{path}"
            );
        }
        let long = format!("/fn/{}", "x".repeat(64));
        assert!(matches!(parse(&long, None), Err(PathError::BadName(_))));
    }
}
