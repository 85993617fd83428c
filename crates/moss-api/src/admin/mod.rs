//! Synapse's admin API (`/_synapse/admin/...`), same paths, parameters and JSON shapes as
//! Synapse, so that synapse-admin and the scripts written for Synapse work. Every handler but
//! `server_version` takes [`Admin`]: a server admin's session, else 403 `M_FORBIDDEN`.
//! Parameters are checked as Synapse checks them (400 `M_INVALID_PARAM` for a bad number,
//! boolean or order); bodies may be absent where Synapse allows it.

mod destinations;
mod media;
mod moderation;
mod notices;
mod rooms;
mod tokens;
mod users;

use std::sync::Arc;

use axum::{
    extract::FromRequestParts,
    routing::{delete, get, post},
    Json, Router,
};
use bytes::Bytes;
use moss_core::{accounts::Session, Moss};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::{error::ApiError, ruma_wrapper::Authed};

/// A request made by a server admin.
pub struct Admin(pub Session);

impl FromRequestParts<Arc<Moss>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut http::request::Parts, moss: &Arc<Moss>) -> Result<Self, ApiError> {
        let Authed(session) = Authed::from_request_parts(parts, moss).await?;
        moss.require_admin(&session).await?;
        Ok(Admin(session))
    }
}

pub fn routes() -> Router<Arc<Moss>> {
    const A: &str = "/_synapse/admin";
    Router::new()
        .route(&format!("{A}/v1/server_version"), get(server_version))
        // users
        .route(&format!("{A}/v2/users"), get(users::list))
        .route(&format!("{A}/v2/users/{{user_id}}"), get(users::show).put(users::upsert))
        .route(&format!("{A}/v1/deactivate/{{user_id}}"), post(users::deactivate))
        .route(&format!("{A}/v1/reset_password/{{user_id}}"), post(users::reset_password))
        .route(&format!("{A}/v1/whois/{{user_id}}"), get(users::whois))
        .route("/_matrix/client/v3/admin/whois/{user_id}", get(users::whois))
        .route("/_matrix/client/r0/admin/whois/{user_id}", get(users::whois))
        .route(&format!("{A}/v1/users/{{user_id}}/admin"), get(users::get_admin).put(users::put_admin))
        .route(&format!("{A}/v1/suspend/{{user_id}}"), axum::routing::put(moderation::synapse_suspend))
        .route(&format!("{A}/v1/users/{{user_id}}/shadow_ban"), post(users::shadow_ban).delete(users::unshadow_ban))
        .route(
            &format!("{A}/v1/users/{{user_id}}/override_ratelimit"),
            get(users::get_ratelimit).post(users::set_ratelimit).delete(users::delete_ratelimit),
        )
        .route(&format!("{A}/v1/users/{{user_id}}/login"), post(users::login_as))
        .route("/_matrix/client/v1/admin/lock/{user_id}", get(moderation::get_lock).put(moderation::put_lock))
        .route("/_matrix/client/v1/admin/suspend/{user_id}", get(moderation::get_suspend).put(moderation::put_suspend))
        .route(&format!("{A}/v2/users/{{user_id}}/devices"), get(users::devices))
        .route(
            &format!("{A}/v2/users/{{user_id}}/devices/{{device_id}}"),
            get(users::device).put(users::put_device).delete(users::delete_device),
        )
        .route(&format!("{A}/v2/users/{{user_id}}/delete_devices"), post(users::delete_devices))
        .route(&format!("{A}/v1/users/{{user_id}}/joined_rooms"), get(users::joined_rooms))
        .route(&format!("{A}/v1/users/{{user_id}}/pushers"), get(users::pushers))
        .route(&format!("{A}/v1/users/{{user_id}}/media"), get(media::user_media).delete(media::delete_user_media))
        .route(&format!("{A}/v1/users/{{user_id}}/memberships"), get(users::memberships))
        .route(&format!("{A}/v1/users/{{user_id}}/accountdata"), get(users::account_data))
        .route(&format!("{A}/v1/username_available"), get(users::username_available))
        // rooms
        .route(&format!("{A}/v1/rooms"), get(rooms::list))
        .route(&format!("{A}/v1/rooms/{{room_id}}"), get(rooms::show).delete(rooms::delete_v1))
        .route(&format!("{A}/v2/rooms/{{room_id}}"), delete(rooms::delete_v2))
        .route(&format!("{A}/v2/rooms/{{room_id}}/delete_status"), get(rooms::delete_status_of_room))
        .route(&format!("{A}/v2/rooms/delete_status/{{delete_id}}"), get(rooms::delete_status))
        .route(&format!("{A}/v1/rooms/{{room_id}}/members"), get(rooms::members))
        .route(&format!("{A}/v1/rooms/{{room_id}}/state"), get(rooms::state))
        .route(&format!("{A}/v1/rooms/{{room_id}}/messages"), get(rooms::messages))
        .route(&format!("{A}/v1/join/{{room}}"), post(rooms::join))
        .route(&format!("{A}/v1/statistics/database/rooms"), get(rooms::largest_rooms))
        .route(&format!("{A}/v1/rooms/{{room_id}}/forward_extremities"), get(rooms::forward_extremities))
        .route(&format!("{A}/v1/rooms/{{room_id}}/block"), get(rooms::get_block).put(rooms::put_block))
        .route(&format!("{A}/v1/event_reports"), get(rooms::reports))
        .route(&format!("{A}/v1/event_reports/{{report_id}}"), get(rooms::report).delete(rooms::delete_report))
        // media
        .route(&format!("{A}/v1/media/delete"), post(media::delete_before_here))
        .route(&format!("{A}/v1/media/{{server}}/delete"), post(media::delete_before))
        .route(&format!("{A}/v1/media/{{server}}/{{media_id}}"), get(media::info).delete(media::delete_one))
        .route(&format!("{A}/v1/room/{{room_id}}/media"), get(media::room_media))
        .route(&format!("{A}/v1/media/protect/{{media_id}}"), post(media::protect))
        .route(&format!("{A}/v1/media/unprotect/{{media_id}}"), post(media::unprotect))
        .route(&format!("{A}/v1/media/quarantine/{{server}}/{{media_id}}"), post(media::quarantine))
        .route(&format!("{A}/v1/media/unquarantine/{{server}}/{{media_id}}"), post(media::unquarantine))
        .route(&format!("{A}/v1/statistics/users/media"), get(media::stats))
        .route(&format!("{A}/v1/purge_media_cache"), post(media::purge_cache))
        .route(&format!("{A}/v1/room/{{room_id}}/media/quarantine"), post(media::quarantine_room))
        .route(&format!("{A}/v1/user/{{user_id}}/media/quarantine"), post(media::quarantine_user))
        .route(&format!("{A}/v1/send_server_notice"), post(notices::post))
        .route(&format!("{A}/v1/send_server_notice/{{txn_id}}"), axum::routing::put(notices::put))
        // federation
        .route(&format!("{A}/v1/federation/destinations"), get(destinations::list))
        .route(&format!("{A}/v1/federation/destinations/{{destination}}"), get(destinations::show))
        .route(&format!("{A}/v1/federation/destinations/{{destination}}/rooms"), get(destinations::rooms))
        .route(&format!("{A}/v1/federation/destinations/{{destination}}/reset_connection"), post(destinations::reset))
        .route(
            &format!("{A}/v1/background_updates/enabled"),
            get(destinations::updates_enabled).post(destinations::set_updates_enabled),
        )
        .route(&format!("{A}/v1/background_updates/status"), get(destinations::updates_status))
        // registration tokens
        .route(&format!("{A}/v1/registration_tokens"), get(tokens::list))
        .route(&format!("{A}/v1/registration_tokens/new"), post(tokens::create))
        .route(
            &format!("{A}/v1/registration_tokens/{{token}}"),
            get(tokens::show).put(tokens::update).delete(tokens::delete),
        )
}

#[derive(Serialize)]
struct ServerVersion {
    server_version: String,
}

/// `GET /_synapse/admin/v1/server_version`: open to anyone, as Synapse's.
async fn server_version() -> Json<ServerVersion> {
    Json(ServerVersion { server_version: format!("moss {}", env!("CARGO_PKG_VERSION")) })
}

/// A request body read within `http.max_request_bytes` (413 `M_TOO_LARGE` beyond, a Matrix
/// error like every other refusal; axum's own limit would answer in plain text).
pub struct Body(pub Bytes);

impl axum::extract::FromRequest<Arc<Moss>> for Body {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, moss: &Arc<Moss>) -> Result<Self, ApiError> {
        let limit = moss.config.http.max_request_bytes;
        axum::body::to_bytes(req.into_body(), limit)
            .await
            .map(Body)
            .map_err(|_| ApiError::too_large(format!("request body is larger than {limit} bytes")))
    }
}

/// `{}`: what most admin writes answer.
#[derive(Serialize, Default)]
struct Empty {}

/// The paging parameters every list takes: `from` (default 0), `limit` (default 100), `dir`
/// (`f`/`b`) and `order_by` (each list names its own).
#[derive(Deserialize, Default)]
struct ListParams {
    from: Option<String>,
    limit: Option<String>,
    dir: Option<String>,
    order_by: Option<String>,
}

impl ListParams {
    fn page(&self, default_forward: bool) -> Result<moss_core::admin::Page, ApiError> {
        let forward = match self.dir.as_deref() {
            None => default_forward,
            Some("f") => true,
            Some("b") => false,
            Some(_) => return Err(ApiError::invalid_param("Unknown direction: dir must be f or b")),
        };
        Ok(moss_core::admin::Page {
            from: non_negative("from", self.from.as_deref(), 0)?,
            limit: non_negative("limit", self.limit.as_deref(), 100)?,
            forward,
        })
    }

    /// `next_token` as Synapse gives it: present only when more follow.
    fn next(&self, page: &moss_core::admin::Page, returned: usize, total: i64) -> Option<i64> {
        let next = page.from + returned as i64;
        (next < total && returned > 0).then_some(next)
    }
}

fn non_negative(name: &str, v: Option<&str>, default: i64) -> Result<i64, ApiError> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::invalid_param(format!("Query parameter {name} must be a positive integer."))),
    }
}

fn boolean(name: &str, v: Option<&str>, default: bool) -> Result<bool, ApiError> {
    match v {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => {
            Err(ApiError::invalid_param(format!("Boolean query parameter {name} must be one of ['true', 'false']")))
        }
    }
}

fn unknown_order() -> ApiError {
    ApiError::invalid_param("Unknown value for order_by")
}

/// A JSON body that may be absent (then `T::default()`), as Synapse's optional bodies.
fn optional_body<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    body(bytes)
}

fn body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| ApiError::not_json("Content not JSON."))?;
    if !v.is_object() {
        return Err(ApiError::bad_json("Content must be a JSON object."));
    }
    serde_json::from_value(v).map_err(|e| ApiError::bad_json(e.to_string()))
}
