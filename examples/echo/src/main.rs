//! `echo`: answers every request with a JSON description of it, for testing
//! what actually reaches a function through the proxy.
//!
//! ```json
//! {"method": "POST", "path": "/a", "query": "x=1",
//!  "headers": {"content-type": "text/plain", "accept": "a, b"},
//!  "body": "hi", "body_bytes": 2}
//! ```
//!
//! - `path` is the path as received (percent-encoding kept); `query` is the
//!   raw query without `?`, or `null` when the URL has no `?`.
//! - `headers` is an object with lowercase names. A header sent more than
//!   once appears once, its values joined with `", "` in arrival order (the
//!   combination RFC 9110 §5.3 defines), so every value is a string.
//! - `body` is the body as text when it is valid UTF-8; otherwise `body` is
//!   `null` and `body_base64` holds it (standard alphabet, padded).
//!   `body_bytes` is its length either way.

mod base64;
mod json;

use fnhttp::{Request, Response};

fn main() {
    if let Err(err) = fnhttp::serve(|req| Response::json(200, describe(req))) {
        eprintln!("echo: {err}");
        std::process::exit(1);
    }
}

/// The JSON text describing `req`.
fn describe(req: &Request) -> String {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (name, value) in &req.headers {
        match headers.iter_mut().find(|(n, _)| n == name) {
            Some((_, joined)) => {
                joined.push_str(", ");
                joined.push_str(value);
            }
            None => headers.push((name.clone(), value.clone())),
        }
    }

    let mut out = String::from("{");
    out.push_str(&format!("\"method\":{}", json::string(&req.method)));
    out.push_str(&format!(",\"path\":{}", json::string(&req.path)));
    let query = req
        .query
        .as_deref()
        .map_or_else(|| "null".to_owned(), json::string);
    out.push_str(&format!(",\"query\":{query}"));
    out.push_str(",\"headers\":{");
    for (i, (name, value)) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!("{}:{}", json::string(name), json::string(value)));
    }
    out.push('}');
    match std::str::from_utf8(&req.body) {
        Ok(text) => out.push_str(&format!(",\"body\":{}", json::string(text))),
        Err(_) => out.push_str(&format!(
            ",\"body\":null,\"body_base64\":\"{}\"",
            base64::encode(&req.body)
        )),
    }
    out.push_str(&format!(",\"body_bytes\":{}}}\n", req.body.len()));
    out
}

#[cfg(test)]
mod tests {
    use fnhttp::{Limits, parse_request};

    use super::describe;

    fn describe_raw(raw: &[u8]) -> String {
        let req = parse_request(&mut &raw[..], &Limits::default())
            .unwrap()
            .unwrap();
        describe(&req)
    }

    #[test]
    fn describes_a_text_request() {
        let json = describe_raw(
            b"POST /a/b?x=1&y=\"q\" HTTP/1.1\r\nAccept: a\r\nX-Quote: say \"hi\"\\\r\naccept: b\r\nContent-Length: 9\r\n\r\nline\n\ttab",
        );
        assert_eq!(
            json,
            "{\"method\":\"POST\",\"path\":\"/a/b\",\"query\":\"x=1&y=\\\"q\\\"\",\
             \"headers\":{\"accept\":\"a, b\",\"x-quote\":\"say \\\"hi\\\"\\\\\",\"content-length\":\"9\"},\
             \"body\":\"line\\n\\ttab\",\"body_bytes\":9}\n"
        );
    }

    #[test]
    fn binary_body_is_base64_and_no_query_is_null() {
        let json = describe_raw(b"PUT / HTTP/1.1\r\nContent-Length: 4\r\n\r\n\xff\x00ab");
        assert!(json.contains("\"query\":null"), "{json}");
        assert!(
            json.contains("\"body\":null,\"body_base64\":\"/wBhYg==\",\"body_bytes\":4"),
            "{json}"
        );
    }
}
