//! What the HTTP API says of invocation keys (`GET|POST
//! /api/v1/functions/{name}/keys`, `DELETE …/keys/{id}`; the handlers are
//! `routes/credentials.rs`). A key is answered once, at creation; only its
//! sha256 is stored.

use containerpub_wire::private::{KeyCreateRequest, KeyCreated, KeyInfo};

use crate::access::InvocationKeys;
use crate::error::{Error, Result};
use crate::routes::credentials::CredentialRoutes;

impl CredentialRoutes for InvocationKeys {
    type Request = KeyCreateRequest;
    type Created = KeyCreated;
    const REQUEST: &'static str = "key";

    fn label(request: &KeyCreateRequest) -> &str {
        &request.label
    }

    fn created(info: KeyInfo, key: String) -> KeyCreated {
        KeyCreated { info, key }
    }

    fn parse_id(id: String) -> Result<i64> {
        id.parse().ok().filter(|id| *id > 0).ok_or_else(|| {
            Error::bad_request(
                "id",
                format!("must be a key id (a positive integer, see cpub key list), got {id:?}"),
            )
        })
    }

    fn log_created(function: &str, info: &KeyInfo) {
        tracing::info!(%function, key_id = info.id, prefix = %info.prefix, "invocation key created");
    }

    fn log_revoked(function: &str, id: &i64) {
        tracing::info!(%function, key_id = id, "invocation key revoked");
    }
}
