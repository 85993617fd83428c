//! `voip/turnServer`: TURN credentials with the "REST API" scheme coturn implements
//! (`use-auth-secret`): username `<expiry seconds>:<user id>`, password its HMAC-SHA1 under the
//! shared secret, so the TURN server can check them without asking us.

use base64::{engine::general_purpose::STANDARD, Engine};
use hmac::{Hmac, Mac};
use ruma::UserId;
use serde_json::{json, Value};

use crate::{now_ms, Moss};

const DEFAULT_LIFETIME_MS: u64 = 24 * 60 * 60 * 1000;

impl Moss {
    /// The TURN servers and credentials for `user`, or `{}` when none are configured.
    pub fn turn_server(&self, user: &UserId) -> Value {
        let v = &self.config.voip;
        if v.turn_uris.is_empty() || v.turn_shared_secret.is_empty() {
            return json!({});
        }
        let ttl_ms = v.turn_user_lifetime_ms.unwrap_or(DEFAULT_LIFETIME_MS);
        let expiry = (now_ms() + ttl_ms) / 1000;
        let username = format!("{expiry}:{user}");
        let mut mac =
            Hmac::<sha1::Sha1>::new_from_slice(v.turn_shared_secret.as_bytes()).expect("HMAC accepts any key length");
        mac.update(username.as_bytes());
        let password = STANDARD.encode(mac.finalize().into_bytes());
        json!({"username": username, "password": password, "uris": v.turn_uris, "ttl": ttl_ms / 1000})
    }
}
