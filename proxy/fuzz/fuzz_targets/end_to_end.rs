//! The whole data path under libFuzzer: each input is what one client
//! sends on a connection to a real proxy worker (as in
//! `proxy/tests/smuggling.rs`) in front of a recording instance that
//! answers once per connection. A panic anywhere (the connection task's
//! included: libFuzzer's panic hook aborts) is a crash; so is an answer the
//! client cannot read strictly, and so are upstream bytes that fnhttp,
//! hyper and the strict reference do not read as the same requests.

#![no_main]

#[path = "../../tests/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use std::net::Shutdown;
use std::sync::OnceLock;
use std::time::Duration;

use support::{Harness, Tail, views};

static HARNESS: OnceLock<Harness> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let h = HARNESS.get_or_init(|| {
        let h = Harness::new();
        h.instance.state.lock().unwrap().close_every = true;
        h
    });
    let mark = h.instance.mark();
    let mut c = h.connect();
    c.tcp
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    c.send(data);
    let _ = c.tcp.shutdown(Shutdown::Write);
    if data.windows(4).any(|w| w == b"HEAD") {
        // Which answers have no body is the requests' business: read the
        // bytes without framing them.
        while c.fill() > 0 {}
    } else {
        // Every answer strictly valid, its framing unambiguous.
        while let Some(a) = c.answer(false) {
            if a.status == 101 {
                break;
            }
        }
    }
    for bytes in h.instance.streams_since(&mark) {
        // After a protocol switch the proxy relays a byte tunnel: only the
        // switching request's head is HTTP/1.1 (the proxy marks it with its
        // own `connection: upgrade`).
        let head_end = bytes
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(bytes.len(), |i| i + 4);
        let switching = bytes
            .get(..head_end)
            .is_some_and(|h| h.windows(23).any(|w| w == b"\r\nconnection: upgrade\r\n"));
        let bytes = if switching {
            bytes.get(..head_end).unwrap_or_default().to_vec()
        } else {
            bytes
        };
        let v = views(&bytes);
        let show = String::from_utf8_lossy(&bytes);
        if let Tail::Error(e) = &v.strict.tail {
            panic!("the instance got invalid bytes ({e}): {show:?}");
        }
        assert_eq!(v.fnhttp.requests, v.strict.requests, "fnhttp: {show:?}");
        assert_eq!(v.hyper.requests, v.strict.requests, "hyper: {show:?}");
    }
});
