//! Questions the homeserver asks application services, on behalf of clients.
//!
//! - `GET /_matrix/app/v1/users/{userId}` and `/rooms/{roomAlias}`: when a client looks up a user
//!   or alias of a service's namespace that does not exist (yet), the service may create it; a
//!   200 means "it exists now" and the lookup is tried again.
//! - `/_matrix/app/v1/thirdparty/*`: the client-server `thirdparty` endpoints ask every service
//!   that lists the protocol (`protocols` in its registration) and merge the answers, as Synapse
//!   does: protocol instances get `instance_id = "{service id}|{network_id}"` (what
//!   `third_party_instance_id` in `/publicRooms` names), results that are not valid are dropped
//!   with a warning.
//!
//! Each request goes through the services' guarded client with a 10 s budget and a 1 MiB answer
//! budget; a service that fails is logged and counted as "no".

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ruma::{
    api::{
        appservice::HomeserverToken, path_builder::SinglePath, IncomingResponseExt, OutgoingRequest, OutgoingRequestExt,
    },
    thirdparty::{Location, Protocol, ProtocolInstance, User},
    RoomAliasId, UserId,
};

use super::{sender::service_client, AppService};
use crate::{error::Result, Error, Moss};

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ANSWER: usize = 1 << 20;

/// Sends `request` to `service`; `None` when it answers 404 (or is not reachable, logged).
async fn ask<R>(service: &AppService, request: R) -> Option<R::IncomingResponse>
where
    R: OutgoingRequest<Authentication = HomeserverToken, PathBuilder = SinglePath>,
{
    let id = service.id();
    let outcome = async {
        let url = service.registration.url.as_deref().ok_or_else(|| Error::internal("no url"))?;
        let request = request
            .try_into_http_request::<Vec<u8>>(url.trim_end_matches('/'), &service.registration.hs_token, ())
            .map_err(|e| Error::internal(format!("building the request: {e}")))?;
        let (parts, body) = request.into_parts();
        let res = service_client(TIMEOUT)?
            .request(parts.method, &parts.uri.to_string())?
            .headers(parts.headers)
            .body(body)
            .send()
            .await
            .map_err(|e| Error::internal(crate::net::error_chain(&e)))?;
        let status = res.status();
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = crate::net::read_limited(res, MAX_ANSWER).await.map_err(Error::internal)?;
        if !status.is_success() {
            return Err(Error::internal(format!("answered {status}")));
        }
        let response =
            http::Response::builder().status(status).body(body.as_ref()).map_err(|e| Error::internal(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(response)
            .map(Some)
            .map_err(|e| Error::internal(format!("unreadable answer: {e}")))
    }
    .await;
    match outcome {
        Ok(answer) => answer,
        Err(e) => {
            tracing::warn!(appservice = id, "query not answered: {e}");
            None
        }
    }
}

/// Whether a result names a protocol the service said it bridges (ruma's types already check
/// the rest of Synapse's validity rules: string fields, the alias or user id).
fn lists(service: &AppService, protocol: &str) -> bool {
    service.registration.protocols.iter().flatten().any(|p| p == protocol)
}

impl Moss {
    fn services_with_url(&self) -> impl Iterator<Item = &Arc<AppService>> {
        self.appservices.all().iter().filter(|s| s.registration.url.is_some())
    }

    /// Asks the services whose user namespace covers `user` whether it exists; true if one said
    /// so (it will have registered the user).
    pub(crate) async fn appservice_user_exists(&self, user: &UserId) -> bool {
        use ruma::api::appservice::query::query_user_id::v1::Request;
        for service in self.services_with_url().filter(|s| s.users.iter().any(|n| n.matches(user.as_str()))) {
            if ask(service, Request::new(user.to_owned())).await.is_some() {
                return true;
            }
        }
        false
    }

    /// Asks the services whose alias namespace covers `alias` whether it exists.
    pub(crate) async fn appservice_alias_exists(&self, alias: &RoomAliasId) -> bool {
        use ruma::api::appservice::query::query_room_alias::v1::Request;
        for service in self.services_with_url().filter(|s| s.owns_alias(alias.as_str())) {
            if ask(service, Request::new(alias.to_owned())).await.is_some() {
                return true;
            }
        }
        false
    }

    /// `GET /thirdparty/protocols` (`only` = None) and `/thirdparty/protocol/{p}`.
    pub async fn thirdparty_protocols(&self, only: Option<&str>) -> Result<BTreeMap<String, Protocol>> {
        use ruma::api::appservice::thirdparty::get_protocol::v1::Request;
        let mut out: BTreeMap<String, Protocol> = BTreeMap::new();
        for service in self.services_with_url() {
            for name in service.registration.protocols.iter().flatten() {
                if only.is_some_and(|o| o != name) {
                    continue;
                }
                let Some(answer) = ask(service, Request::new(name.clone())).await else { continue };
                let mut protocol: Protocol<ProtocolInstance> = answer.protocol.into();
                for instance in &mut protocol.instances {
                    instance.instance_id = Some(format!("{}|{}", service.id(), instance.network_id));
                }
                match out.get_mut(name) {
                    // The other fields ought to be identical across services: the first wins.
                    Some(existing) => existing.instances.append(&mut protocol.instances),
                    None => {
                        out.insert(name.clone(), protocol);
                    }
                }
            }
        }
        Ok(out)
    }

    fn services_for(&self, protocol: &str) -> Result<Vec<Arc<AppService>>> {
        let services: Vec<_> = self.services_with_url().filter(|s| lists(s, protocol)).cloned().collect();
        if services.is_empty() {
            return Err(Error::not_found(format!("no bridge handles the protocol {protocol:?}")));
        }
        Ok(services)
    }

    /// `GET /thirdparty/location/{protocol}?fields…`.
    pub async fn thirdparty_locations(
        &self,
        protocol: &str,
        fields: BTreeMap<String, String>,
    ) -> Result<Vec<Location>> {
        use ruma::api::appservice::thirdparty::get_location_for_protocol::v1::Request;
        let mut out = Vec::new();
        for service in self.services_for(protocol)? {
            let mut request = Request::new(protocol.to_owned());
            request.fields = fields.clone();
            if let Some(answer) = ask(&service, request).await {
                out.extend(answer.locations.into_iter().filter(|l| l.protocol == protocol));
            }
        }
        Ok(out)
    }

    /// `GET /thirdparty/user/{protocol}?fields…`.
    pub async fn thirdparty_users(&self, protocol: &str, fields: BTreeMap<String, String>) -> Result<Vec<User>> {
        use ruma::api::appservice::thirdparty::get_user_for_protocol::v1::Request;
        let mut out = Vec::new();
        for service in self.services_for(protocol)? {
            let mut request = Request::new(protocol.to_owned());
            request.fields = fields.clone();
            if let Some(answer) = ask(&service, request).await {
                out.extend(answer.users.into_iter().filter(|u| u.protocol == protocol));
            }
        }
        Ok(out)
    }

    /// `GET /thirdparty/location?alias=`: every service with protocols is asked.
    pub async fn thirdparty_locations_for_alias(&self, alias: &RoomAliasId) -> Result<Vec<Location>> {
        use ruma::api::appservice::thirdparty::get_location_for_room_alias::v1::Request;
        let mut out = Vec::new();
        for service in
            self.services_with_url().filter(|s| s.registration.protocols.as_ref().is_some_and(|p| !p.is_empty()))
        {
            if let Some(answer) = ask(service, Request::new(alias.to_owned())).await {
                out.extend(answer.locations.into_iter().filter(|l| lists(service, &l.protocol)));
            }
        }
        Ok(out)
    }

    /// `GET /thirdparty/user?userid=`: every service with protocols is asked.
    pub async fn thirdparty_users_for_id(&self, user: &UserId) -> Result<Vec<User>> {
        use ruma::api::appservice::thirdparty::get_user_for_user_id::v1::Request;
        let mut out = Vec::new();
        for service in
            self.services_with_url().filter(|s| s.registration.protocols.as_ref().is_some_and(|p| !p.is_empty()))
        {
            if let Some(answer) = ask(service, Request::new(user.to_owned())).await {
                out.extend(answer.users.into_iter().filter(|u| lists(service, &u.protocol)));
            }
        }
        Ok(out)
    }
}
