//! The answer relay: the instance's answer head rewritten for the client
//! (`h1::write_response_head`: request id, `server-timing`, the framing
//! fields of the proxy's own) and sent with the first body bytes, then the
//! rest of the body as it comes (a chunked one re-framed, or de-chunked for
//! an HTTP/1.0 client), and the upstream connection given back to the
//! worker's pool only after a complete exchange with nothing past its end.
//! A `101` turns the call into a byte tunnel (`Conn::tunnel`).
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::admission::Admitted;
use super::body::AnswerBody;
use super::forward::Answered;
use super::{Conn, Fail, Worker, read_more, timed};
use crate::h1::{self, Answering, Field, Framing, RequestLine};
use crate::metrics::UpstreamError;
use crate::service::{Call, Reply, server_timing};
use crate::upstream::{self, Buf};

impl Conn {
    /// Relays `answer` (whose head's fields are `ufields`) to the client
    /// of `req` (whose head was `line`). Returns whether the client
    /// connection stays open for another request.
    pub(super) async fn relay(
        &mut self,
        req: Admitted,
        answer: Answered,
        line: &RequestLine,
        worker: &Worker,
        ufields: &[Field],
    ) -> bool {
        let Admitted {
            mut call,
            sem,
            head_only,
            ..
        } = req;
        let Answered {
            mut up,
            line: status_line,
            mut ubuf,
            mut out,
            upstream_time,
        } = answer;
        let rsem = match h1::response_semantics(&ubuf, &status_line, ufields, head_only) {
            Ok(rsem) => rsem,
            Err(e) => {
                let reply = Reply::new(502, format!("function sent an invalid answer: {e}"));
                return self.answer_call(call, &reply, true, head_only).await;
            }
        };
        if line.minor == 0
            && rsem.framing != Framing::Empty
            && h1::has_codings_besides_chunked(&ubuf, ufields)
        {
            let reply = Reply::new(
                502,
                "function answered with a transfer coding an HTTP/1.0 client cannot take",
            );
            return self.answer_call(call, &reply, true, head_only).await;
        }
        call.status = status_line.status;
        call.upstream_time = upstream_time;
        let upgraded = status_line.status == 101;
        let dechunk = line.minor == 0 && rsem.framing == Framing::Chunked;
        let keep_client =
            sem.keep_alive && rsem.framing != Framing::Close && !dechunk && !worker.stopping.get();
        let lease = call.lease.as_ref().expect("a forwarded call has a lease");
        let mut timing = std::mem::take(&mut self.timing);
        timing.clear();
        server_timing(
            &mut timing,
            lease.queue_duration(),
            lease.start_kind().as_str(),
            lease.start_duration(),
            upstream_time,
        );
        out.clear();
        h1::write_response_head(
            &mut out,
            &ubuf,
            &status_line,
            ufields,
            &Answering {
                request_id: call.request_id.as_bytes(),
                server_timing: &timing,
                close: !keep_client && !upgraded,
                keep_alive_1_0: keep_client && line.minor == 0 && !upgraded,
                http_1_0: line.minor == 0,
                upgraded,
            },
        );
        self.timing = timing;
        if upgraded {
            return self.tunnel(call, up, out, ubuf, status_line.head_len).await;
        }
        let mut answer = AnswerBody::new(rsem.framing, dechunk);
        let here = ubuf.get(status_line.head_len..).unwrap_or_default();
        let mut complete = match answer.relay_into(here, &mut out) {
            Ok(done) => done,
            Err(e) => {
                // Nothing was sent yet: a 502, and the connection that
                // carried the bad answer is closed.
                call.count_upstream_error(UpstreamError::Reset);
                debug!(function = %call.function(), error = %e, "function sent a bad chunked answer");
                drop(up);
                let reply = Reply::new(502, format!("function sent an invalid answer: {e}"));
                return self.answer_call(call, &reply, true, head_only).await;
            }
        };
        let mut clean = answer.leftover == 0;
        call.bytes_out += out.len() as u64;
        let mut client_ok = timed(&mut self.timer, self.tcp.write_all(&out))
            .await
            .is_ok();
        // The rest of the body, as it comes.
        while !complete && client_ok {
            ubuf.clear();
            // A streamed answer: idle limit and overall cap, not `timeout_ms`.
            self.timer.as_mut().reset(call.stream_deadline());
            match read_more(&mut up, &mut ubuf, &mut self.timer).await {
                Ok(_) => {}
                Err(Fail::Eof) if rsem.framing == Framing::Close => {
                    complete = true;
                    break;
                }
                Err(f) => {
                    call.count_upstream_error(if matches!(f, Fail::Timeout) {
                        UpstreamError::Timeout
                    } else {
                        UpstreamError::Reset
                    });
                    debug!(function = %call.function(), error = %f, "answer body cut off");
                    clean = false;
                    break;
                }
            }
            out.clear();
            match answer.relay_into(&ubuf, &mut out) {
                Ok(done) => complete = done,
                Err(e) => {
                    // The head went out: the client connection is cut.
                    call.count_upstream_error(UpstreamError::Reset);
                    debug!(function = %call.function(), error = %e, "function sent a bad chunked answer");
                    clean = false;
                    break;
                }
            }
            clean &= answer.leftover == 0;
            call.bytes_out += out.len() as u64;
            client_ok = timed(&mut self.timer, self.tcp.write_all(&out))
                .await
                .is_ok();
        }
        if complete && clean && rsem.keep_alive {
            if let Some(instance) = call.instance_id() {
                upstream::put(instance, up);
            }
        } else {
            drop(up);
        }
        drop(call);
        // Stray bytes from the instance cost its connection, not the
        // client's (which got a whole answer); every failure left the
        // answer incomplete.
        complete && client_ok && keep_client
    }

    /// After a `101`: sends its head (in `out`) and the bytes the instance
    /// sent after it to the client, and the bytes the client sent after its
    /// request to the instance, then relays both ways until either side
    /// closes. The call, and its lease, last as long as the tunnel, under the
    /// function's `stream_idle_ms` and `max_call_s` (`crate::tunnel`).
    async fn tunnel(
        &mut self,
        call: Call,
        mut up: TcpStream,
        mut out: Buf,
        ubuf: Buf,
        head_len: usize,
    ) -> bool {
        out.extend_from_slice(ubuf.get(head_len..).unwrap_or_default());
        drop(ubuf);
        let mut sent = timed(&mut self.timer, self.tcp.write_all(&out))
            .await
            .is_ok();
        drop(out);
        if sent && !self.buf.is_empty() {
            // Read together with the request: they belong to the tunnel.
            sent = timed(&mut self.timer, up.write_all(&self.buf))
                .await
                .is_ok();
            self.buf.clear();
        }
        if sent {
            debug!(function = %call.function(), request_id = %call.request_id, "protocol switched, relaying");
            let end = crate::tunnel::relay(&call, &mut self.tcp, &mut up).await;
            debug!(function = %call.function(), ?end, "relay ended");
        }
        drop(call);
        false
    }
}
