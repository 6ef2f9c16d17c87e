//! The refusal of a private function's call without a valid key (the
//! check itself is `crate::access`): the call is recorded with its status
//! and rejection, and the answer carries `www-authenticate` on a 401.
#![cfg_attr(not(test), deny(clippy::indexing_slicing, clippy::string_slice))]

use tokio::io::AsyncWriteExt;

use super::{Conn, OWN_ANSWER_TIMEOUT, timed};
use crate::access::Refusal;
use crate::h1::{self, OwnAnswer};
use crate::service::{Call, json_body};
use crate::upstream::Buf;

impl Conn {
    /// Answers `call` with `refusal`; returns whether the connection stays
    /// open (never when `close`).
    pub(super) async fn refuse_access(
        &mut self,
        mut call: Call,
        refusal: Refusal,
        close: bool,
        head_only: bool,
    ) -> bool {
        let reply = refusal.reply(call.function());
        call.status = reply.status;
        call.rejection = reply.rejection;
        let id = call.request_id.clone(); // the record keeps the call's
        drop(call);
        let body = json_body(&reply.message);
        let answer = OwnAnswer {
            status: reply.status,
            content_type: "application/json",
            body: &body,
            request_id: id.as_bytes(),
            retry_after: None,
            close,
            head_only,
        };
        let extra: &[(&[u8], &[u8])] = match refusal.challenge() {
            Some(challenge) => &[(b"www-authenticate", challenge)],
            None => &[],
        };
        let mut out = Buf::take();
        h1::write_own_answer_with(&mut out, &answer, extra);
        self.timer
            .as_mut()
            .reset(tokio::time::Instant::now() + OWN_ANSWER_TIMEOUT);
        let written = timed(&mut self.timer, self.tcp.write_all(&out))
            .await
            .is_ok();
        written && !close
    }
}
