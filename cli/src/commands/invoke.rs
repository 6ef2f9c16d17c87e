//! `cpub invoke`: call a function at its proxy URL (looked up from the
//! control plane), stream the answer's body to stdout, fail on status ≥ 400.
//!
//! The control-plane token is never sent to the function; a private
//! function's key goes in a header given with `-H`. `--sign KEYID` signs
//! the call (`x-cpub-signature`, `containerpub_wire::signing`) with the
//! secret read from `--sign-secret-file` or `$CPUB_SIGNING_SECRET`, never
//! from an argument.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Url};

use super::{Context, check_name};
use crate::client::{CONNECT_TIMEOUT, USER_AGENT, transport_error};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Function name.
    name: String,
    /// Request body: literal text, `@FILE` for a file's bytes, `@-` for stdin.
    #[arg(short = 'd', long = "data", value_name = "DATA|@FILE")]
    data: Option<String>,
    /// Path (and query) under the function's URL, e.g. `/items?limit=5`.
    #[arg(long, default_value = "/")]
    path: String,
    /// HTTP method [default: POST with --data, GET without].
    #[arg(short = 'X', long = "request", value_name = "METHOD")]
    method: Option<String>,
    /// Extra request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// Print the response status line and headers before the body.
    #[arg(short = 'i', long = "include")]
    include: bool,
    /// Sign the call with this signing key (`sk_…`); the secret comes from
    /// `--sign-secret-file` or `$CPUB_SIGNING_SECRET`.
    #[arg(long, value_name = "KEYID")]
    sign: Option<String>,
    /// File holding the signing secret (as `cpub signing-key create` printed it).
    #[arg(long, value_name = "FILE", requires = "sign")]
    sign_secret_file: Option<std::path::PathBuf>,
}

pub async fn run(ctx: &Context, args: Args) -> Result<()> {
    check_name(&args.name)?;
    let headers = parse_headers(&args.headers)?;
    let body = args.data.as_deref().map(read_data).transpose()?;
    let method = choose_method(args.method.as_deref(), body.is_some())?;

    let function = ctx
        .client()?
        .function(&args.name)
        .await
        .with_context(|| format!("cannot look up {}", args.name))?;
    let url = target_url(&function.typed.url, &args.path)?;

    // The call may take as long as the function's own timeout, plus slack
    // for a cold start and the queue; never less than `--timeout`.
    let deadline = function
        .typed
        .config
        .as_ref()
        .map(|c| {
            Duration::from_millis(c.resources.timeout_ms + c.scaling.queue_timeout_ms)
                + Duration::from_secs(10)
        })
        .unwrap_or_default()
        .max(ctx.deadline);
    let http = reqwest::Client::builder()
        .user_agent(USER_AGENT)
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(deadline)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("cannot build the HTTP client")?;
    let mut request = http.request(method.clone(), url.clone()).headers(headers);
    if let Some(key_id) = &args.sign {
        let secret = signing_secret(args.sign_secret_file.as_deref())?;
        let target = match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_secs() as i64;
        let value = containerpub_wire::signing::header_value(
            key_id,
            secret.as_bytes(),
            method.as_str(),
            &target,
            now,
            body.as_deref().unwrap_or_default(),
        );
        request = request.header(containerpub_wire::signing::SIGNATURE_HEADER, value);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let mut response = request
        .send()
        .await
        .map_err(|source| transport_error(url.as_str(), deadline, source))
        .with_context(|| format!("cannot call {}", args.name))?;

    let status = response.status();
    let mut stdout = std::io::stdout();
    if args.include {
        let mut head = format!("{:?} {status}\r\n", response.version());
        for (name, value) in response.headers() {
            head.push_str(&format!(
                "{name}: {}\r\n",
                String::from_utf8_lossy(value.as_bytes())
            ));
        }
        head.push_str("\r\n");
        stdout
            .write_all(head.as_bytes())
            .context("cannot write to stdout")?;
    }
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| transport_error(url.as_str(), deadline, source))
        .with_context(|| format!("reading the answer of {} broke off", args.name))?
    {
        stdout.write_all(&chunk).context("cannot write to stdout")?;
    }
    stdout.flush().context("cannot write to stdout")?;

    if status.as_u16() >= 400 {
        bail!("{} answered {status} to {method} {url}", args.name);
    }
    Ok(())
}

/// The signing secret: from `file` when given, else `$CPUB_SIGNING_SECRET`
/// (surrounding whitespace trimmed; never an argument, which would land in
/// shell history and `ps`).
fn signing_secret(file: Option<&std::path::Path>) -> Result<String> {
    let secret = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --sign-secret-file {}", path.display()))?,
        None => std::env::var("CPUB_SIGNING_SECRET").map_err(|_| {
            anyhow::anyhow!(
                "--sign needs the secret in --sign-secret-file FILE or $CPUB_SIGNING_SECRET"
            )
        })?,
    };
    let secret = secret.trim().to_owned();
    if !secret.starts_with(containerpub_wire::signing::SECRET_PREFIX) {
        bail!(
            "the signing secret must start with {} (as cpub signing-key create printed it)",
            containerpub_wire::signing::SECRET_PREFIX
        );
    }
    Ok(secret)
}

/// `-X` wins; otherwise POST when there is a body and GET when not.
fn choose_method(explicit: Option<&str>, has_body: bool) -> Result<Method> {
    match explicit {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .with_context(|| format!("invalid HTTP method {m:?}")),
        None if has_body => Ok(Method::POST),
        None => Ok(Method::GET),
    }
}

/// `--data` value: `@-` reads stdin, `@FILE` reads a file, anything else is
/// the body itself.
fn read_data(arg: &str) -> Result<Vec<u8>> {
    match arg.strip_prefix('@') {
        Some("-") => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read the body from stdin")?;
            Ok(body)
        }
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read --data file {path}"))
        }
        None => Ok(arg.as_bytes().to_vec()),
    }
}

/// Parses `-H` arguments (`Name: value`, value trimmed; may be empty).
fn parse_headers(args: &[String]) -> Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for arg in args {
        let (name, value) = parse_header(arg)?;
        map.append(name, value);
    }
    Ok(map)
}

fn parse_header(arg: &str) -> Result<(HeaderName, HeaderValue)> {
    let Some((name, value)) = arg.split_once(':') else {
        bail!("header {arg:?} has no ':'; write it as 'Name: value'");
    };
    let name = name.trim();
    if name.is_empty() {
        bail!("header {arg:?} has an empty name; write it as 'Name: value'");
    }
    let name = HeaderName::from_bytes(name.as_bytes())
        .with_context(|| format!("invalid header name {name:?} in {arg:?}"))?;
    let value = HeaderValue::from_str(value.trim())
        .with_context(|| format!("invalid header value in {arg:?}"))?;
    Ok((name, value))
}

/// The function URL (ends in `/`) joined with `path` (and its query).
fn target_url(function_url: &str, path: &str) -> Result<Url> {
    let rest = path.trim_start_matches('/');
    let base = function_url.trim_end_matches('/');
    let joined = format!("{base}/{rest}");
    Url::parse(&joined).with_context(|| format!("invalid URL {joined:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_a_colon_and_a_name() {
        let err = parse_header("X-Key abc").unwrap_err().to_string();
        assert!(err.contains("no ':'"), "{err}");
        let err = parse_header(": abc").unwrap_err().to_string();
        assert!(err.contains("empty name"), "{err}");
        assert!(parse_header("bad name: v").is_err());
        assert!(parse_headers(&["A: 1".into(), "nocolon".into()]).is_err());
    }

    #[test]
    fn headers_parse_trimmed_and_repeatable() {
        let (name, value) = parse_header("X-Key:  a:b:c ").unwrap();
        assert_eq!(name.as_str(), "x-key");
        assert_eq!(value, "a:b:c");
        let map =
            parse_headers(&["Accept: a".into(), "accept: b".into(), "X-Empty:".into()]).unwrap();
        let all: Vec<_> = map.get_all("accept").iter().collect();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(map["x-empty"], "");
    }

    #[test]
    fn data_from_literal_and_file() {
        assert_eq!(read_data("{\"a\":1}").unwrap(), b"{\"a\":1}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("body.bin");
        std::fs::write(&path, [0u8, 159, 146, 150, b'\n']).unwrap();
        assert_eq!(
            read_data(&format!("@{}", path.display())).unwrap(),
            [0u8, 159, 146, 150, b'\n']
        );
        let err = format!("{:#}", read_data("@/nonexistent/body").unwrap_err());
        assert!(err.contains("/nonexistent/body"), "{err}");
    }

    #[test]
    fn method_defaults_follow_the_body() {
        assert_eq!(choose_method(None, true).unwrap(), Method::POST);
        assert_eq!(choose_method(None, false).unwrap(), Method::GET);
        assert_eq!(choose_method(Some("put"), false).unwrap(), Method::PUT);
        assert!(choose_method(Some("BAD METHOD"), false).is_err());
    }

    #[test]
    fn path_joins_under_the_function_url() {
        let base = "http://127.0.0.1:8080/fn/hello/";
        assert_eq!(target_url(base, "/").unwrap().as_str(), base);
        assert_eq!(
            target_url(base, "/a/b?x=1&y=2").unwrap().as_str(),
            "http://127.0.0.1:8080/fn/hello/a/b?x=1&y=2"
        );
        assert_eq!(
            target_url(base, "c").unwrap().as_str(),
            "http://127.0.0.1:8080/fn/hello/c"
        );
    }
}
