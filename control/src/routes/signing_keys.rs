//! What the HTTP API says of HMAC signing keys (`GET|POST
//! /api/v1/functions/{name}/signing-keys`, `DELETE
//! …/signing-keys/{key_id}`; the handlers are `routes/credentials.rs`).
//! The secret is answered once, at creation; it is stored sealed under the
//! master key (`crate::signing`).

use containerpub_wire::signing::{
    SigningKeyCreateRequest, SigningKeyCreated, SigningKeyInfo, is_key_id_shaped,
};

use crate::error::{Error, Result};
use crate::routes::credentials::CredentialRoutes;
use crate::signing::SigningKeys;

impl CredentialRoutes for SigningKeys {
    type Request = SigningKeyCreateRequest;
    type Created = SigningKeyCreated;
    const REQUEST: &'static str = "signing-key";

    fn label(request: &SigningKeyCreateRequest) -> &str {
        &request.label
    }

    fn created(info: SigningKeyInfo, secret: String) -> SigningKeyCreated {
        SigningKeyCreated { info, secret }
    }

    fn parse_id(key_id: String) -> Result<String> {
        if !is_key_id_shaped(&key_id) {
            let shown: String = key_id.chars().take(40).collect();
            return Err(Error::bad_request(
                "key_id",
                format!(
                    "must be a signing key id (sk_ + 16 hex digits, see cpub signing-key list), got {shown:?}"
                ),
            ));
        }
        Ok(key_id)
    }

    fn log_created(function: &str, info: &SigningKeyInfo) {
        tracing::info!(%function, key_id = %info.key_id, "signing key created");
    }

    fn log_revoked(function: &str, key_id: &String) {
        tracing::info!(%function, %key_id, "signing key revoked");
    }
}
