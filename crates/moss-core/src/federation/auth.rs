//! Inbound request authentication: every federation request but key fetches carries an X-Matrix
//! `Authorization` header, signed by the origin over method, URI, destination and body. We check
//! the destination is us and the signature verifies with the origin's published key.

use ruma::{
    api::{error::ErrorKind, federation::authentication::XMatrix},
    OwnedServerName,
};

use crate::{
    error::{Error, Result},
    Moss,
};

fn unauthorized(why: impl Into<String>) -> Error {
    Error::new(ErrorKind::Unauthorized, 401, why)
}

impl Moss {
    /// Verifies a request's X-Matrix signature; returns the origin server.
    pub async fn authenticate_server(&self, request: &http::Request<Vec<u8>>) -> Result<OwnedServerName> {
        let x = XMatrix::extract_from_http_headers(request.headers())
            .map_err(|e| unauthorized(format!("missing or malformed X-Matrix authorization: {e}")))?;
        if x.destination.as_ref().is_some_and(|d| *d != self.server_name) {
            return Err(unauthorized("the request is addressed to another server"));
        }
        if x.origin == self.server_name {
            return Err(unauthorized("requests from our own name are not accepted over federation"));
        }
        let keys = self.server_verify_keys(&x.origin).await.map_err(|e| unauthorized(format!("{e}")))?;
        let Some(key) = keys.get(x.key.as_str()) else {
            return Err(unauthorized(format!("{} has no key {}", x.origin, x.key)));
        };
        let public = ruma::serde::Base64::<ruma::serde::base64::Standard, Vec<u8>>::parse(key)
            .map_err(|e| unauthorized(format!("bad key: {e}")))?;
        let map = std::collections::BTreeMap::from([(
            x.origin.to_string(),
            std::collections::BTreeMap::from([(x.key.to_string(), ruma::serde::Base64::new(public.into_inner()))]),
        )]);
        x.verify_http_request(request, &self.server_name, &map)
            .map_err(|e| unauthorized(format!("the request signature does not verify: {e}")))?;
        Ok(x.origin)
    }
}
