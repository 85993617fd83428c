//! Discovery, capabilities, the room directory, aliases, /sync and Synapse's shared-secret
//! registration.

use std::{sync::Arc, time::Duration};

use axum::{extract::State, Json};
use moss_core::{
    accounts::Nonces,
    rooms::SUPPORTED_VERSIONS,
    sliding_sync::SlidingRequest,
    sync::{SyncRequest, SyncToken},
    Moss,
};
use ruma::{
    api::client::{
        alias::{create_alias, delete_alias, get_alias},
        directory::{get_public_rooms, get_public_rooms_filtered, get_room_visibility, set_room_visibility},
        filter::FilterDefinition,
        room::{aliases, Visibility},
        sync::sync_events::{self, v3::Filter},
    },
    RoomAliasId,
};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    ruma_wrapper::{HandlerResult, Ruma, RumaResponse},
};

pub async fn versions() -> Json<Value> {
    Json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12", "v1.13", "v1.14", "v1.15", "v1.16", "v1.17", "v1.18"],
        "unstable_features": {"org.matrix.simplified_msc3575": true},
    }))
}

pub async fn well_known_client(State(moss): State<Arc<Moss>>) -> Json<Value> {
    Json(json!({"m.homeserver": {"base_url": moss.config.public_baseurl().trim_end_matches('/')}}))
}

/// `GET /health`: `OK` when the database and the media store answer within 5 s, else 503 with
/// what failed (for load balancers, container health checks and monitoring).
pub async fn health(State(moss): State<Arc<Moss>>) -> (axum::http::StatusCode, String) {
    match moss.health(std::time::Duration::from_secs(5)).await {
        Ok(()) => (axum::http::StatusCode::OK, "OK".into()),
        Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

pub async fn well_known_server(State(moss): State<Arc<Moss>>) -> Json<Value> {
    let fed = &moss.config.federation;
    let address = match (&fed.public_address, fed.enabled) {
        (Some(a), _) => a.clone(),
        (None, true) => format!("{}:{}", moss.server_name.host(), fed.bind.port()),
        // Federation handled by something else in front (a reverse proxy on 443).
        (None, false) => format!("{}:443", moss.server_name.host()),
    };
    Json(json!({ "m.server": address }))
}

pub async fn capabilities(
    State(moss): State<Arc<Moss>>,
    req: Ruma<ruma::api::client::discovery::get_capabilities::v3::Request>,
) -> Json<Value> {
    // Admins may lock and suspend accounts (spec v1.18 `m.account_moderation`).
    let admin = match &req.session {
        Some(s) => moss.require_admin(s).await.is_ok(),
        None => false,
    };
    let available: serde_json::Map<String, Value> =
        SUPPORTED_VERSIONS.iter().map(|v| (v.to_string(), json!("stable"))).collect();
    Json(json!({
        "capabilities": {
            "m.change_password": {"enabled": true},
            "m.room_versions": {"default": moss.default_room_version().to_string(), "available": available},
            "m.set_displayname": {"enabled": true},
            "m.set_avatar_url": {"enabled": true},
            "m.3pid_changes": {"enabled": false},
            "m.get_login_token": {"enabled": moss.config.auth.login_token_enabled},
            "m.account_moderation": {"lock": admin, "suspend": admin},
        }
    }))
}

// ---- aliases and directory ----

pub async fn put_alias(
    moss: Arc<Moss>,
    req: Ruma<create_alias::v3::Request>,
) -> HandlerResult<create_alias::v3::Request> {
    moss.put_alias(&req.session()?.user_id, &req.body.room_alias, &req.body.room_id).await?;
    Ok(RumaResponse(create_alias::v3::Response::new()))
}

pub async fn get_alias(moss: Arc<Moss>, req: Ruma<get_alias::v3::Request>) -> HandlerResult<get_alias::v3::Request> {
    let (room, servers) = moss.resolve_alias_with_servers(&req.body.room_alias).await?;
    Ok(RumaResponse(get_alias::v3::Response::new(room, servers)))
}

pub async fn delete_alias(
    moss: Arc<Moss>,
    req: Ruma<delete_alias::v3::Request>,
) -> HandlerResult<delete_alias::v3::Request> {
    moss.delete_alias(&req.session()?.user_id, &req.body.room_alias).await?;
    Ok(RumaResponse(delete_alias::v3::Response::new()))
}

pub async fn room_aliases(moss: Arc<Moss>, req: Ruma<aliases::v3::Request>) -> HandlerResult<aliases::v3::Request> {
    let list = moss.room_aliases(&req.session()?.user_id, &req.body.room_id).await?;
    let list = list.into_iter().filter_map(|a| RoomAliasId::parse(a).ok()).collect();
    Ok(RumaResponse(aliases::v3::Response::new(list)))
}

pub async fn get_visibility(
    moss: Arc<Moss>,
    req: Ruma<get_room_visibility::v3::Request>,
) -> HandlerResult<get_room_visibility::v3::Request> {
    let public = moss.room_published(&req.body.room_id).await?;
    Ok(RumaResponse(get_room_visibility::v3::Response::new(if public {
        Visibility::Public
    } else {
        Visibility::Private
    })))
}

pub async fn set_visibility(
    moss: Arc<Moss>,
    req: Ruma<set_room_visibility::v3::Request>,
) -> HandlerResult<set_room_visibility::v3::Request> {
    let public = matches!(req.body.visibility, Visibility::Public);
    moss.set_room_published(&req.session()?.user_id, &req.body.room_id, public).await?;
    Ok(RumaResponse(set_room_visibility::v3::Response::new()))
}

fn public_chunk(v: Vec<Value>) -> Vec<ruma::directory::PublicRoomsChunk> {
    v.into_iter().filter_map(|e| serde_json::from_value(e).ok()).collect()
}

pub async fn public_rooms(
    moss: Arc<Moss>,
    req: Ruma<get_public_rooms::v3::Request>,
) -> HandlerResult<get_public_rooms::v3::Request> {
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let page = match req.body.server.as_ref().filter(|s| **s != moss.server_name) {
        Some(server) => moss.remote_public_rooms(server, req.body.since.as_deref(), limit, None).await?,
        None => {
            moss.public_rooms(req.body.since.as_deref(), limit, None, &ruma::directory::RoomNetwork::Matrix).await?
        }
    };
    let mut res = get_public_rooms::v3::Response::new(public_chunk(page.chunk));
    res.next_batch = page.next_batch;
    res.prev_batch = page.prev_batch;
    res.total_room_count_estimate = ruma::UInt::new(page.total as u64);
    Ok(RumaResponse(res))
}

pub async fn public_rooms_filtered(
    moss: Arc<Moss>,
    req: Ruma<get_public_rooms_filtered::v3::Request>,
) -> HandlerResult<get_public_rooms_filtered::v3::Request> {
    let term = req.body.filter.generic_search_term.clone();
    let limit = req.body.limit.map(|l| u64::from(l) as usize);
    let page = match req.body.server.as_ref().filter(|s| **s != moss.server_name) {
        Some(server) => moss.remote_public_rooms(server, req.body.since.as_deref(), limit, term).await?,
        None => moss.public_rooms(req.body.since.as_deref(), limit, term, &req.body.room_network).await?,
    };
    let mut res = get_public_rooms_filtered::v3::Response::new();
    res.chunk = public_chunk(page.chunk);
    res.next_batch = page.next_batch;
    res.prev_batch = page.prev_batch;
    res.total_room_count_estimate = ruma::UInt::new(page.total as u64);
    Ok(RumaResponse(res))
}

// ---- sync ----

pub async fn sync(State(moss): State<Arc<Moss>>, req: Ruma<sync_events::v3::Request>) -> Result<Json<Value>, ApiError> {
    let session = req.session()?.clone();
    let b = req.body;
    let filter = match b.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(f)) => f,
        Some(Filter::FilterId(id)) => moss.filter(&session.user_id, &id).await?,
        Some(_) => FilterDefinition::default(),
    };
    moss_core::filter::check_filter(&filter)?;
    let since = b.since.as_deref().map(SyncToken::parse).transpose()?;
    let timeout = b.timeout.unwrap_or(Duration::ZERO);
    let set_presence = b.set_presence.as_str().to_owned();
    let res =
        moss.sync(&session, SyncRequest { since, full_state: b.full_state, timeout, filter, set_presence }).await?;
    Ok(Json(res))
}

// ---- simplified sliding sync (MSC4186) ----

pub async fn sliding_sync(
    moss: Arc<Moss>,
    req: Ruma<sync_events::v5::Request>,
) -> Result<Json<moss_core::sliding_sync::wire::Response>, ApiError> {
    let session = req.session()?.clone();
    // Each list's `filters.spaces`, which ruma's request type does not keep.
    let mut list_spaces = std::collections::BTreeMap::new();
    if let Some(lists) = req.json.as_ref().and_then(|j| j["lists"].as_object()) {
        for (name, list) in lists {
            if let Some(spaces) = list["filters"]["spaces"].as_array() {
                list_spaces.insert(name.clone(), spaces.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect());
            }
        }
    }
    let res = moss.sliding_sync(&session, SlidingRequest { body: req.body, list_spaces }).await?;
    Ok(Json(res))
}

// ---- Synapse's shared-secret registration ----

static NONCES: std::sync::OnceLock<Nonces> = std::sync::OnceLock::new();

pub async fn shared_secret_nonce(State(moss): State<Arc<Moss>>) -> Result<Json<Value>, ApiError> {
    if moss.config.registration_shared_secret.is_none() {
        return Err(moss_core::Error::new(
            ruma::api::error::ErrorKind::Forbidden,
            400,
            "shared secret registration is not enabled",
        )
        .into());
    }
    Ok(Json(json!({"nonce": moss.shared_secret_nonce(NONCES.get_or_init(Default::default))})))
}

#[derive(Deserialize)]
pub struct SharedSecretRegister {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    admin: bool,
    mac: String,
    displayname: Option<String>,
}

pub async fn shared_secret_register(
    State(moss): State<Arc<Moss>>,
    body: Result<Json<SharedSecretRegister>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(b) = body.map_err(|e| ApiError::bad_json(e.body_text()))?;
    moss.check_shared_secret_mac(
        NONCES.get_or_init(Default::default),
        &b.nonce,
        &b.username,
        &b.password,
        b.admin,
        &b.mac,
    )?;
    let user_id = moss.new_user_id(&b.username.to_lowercase())?;
    moss.create_user(&user_id, Some(&b.password), b.admin, None).await?;
    if let Some(name) = b.displayname {
        moss.set_profile_field(&user_id, "displayname", Some(name)).await?;
    }
    let s = moss.create_session(&user_id, None, None, false, None).await?;
    Ok(Json(json!({
        "user_id": user_id, "access_token": s.access_token, "device_id": s.device_id, "home_server": moss.server_name,
    })))
}

// ---- VoIP and third-party networks ----

/// `GET /voip/turnServer` (plain JSON: with no TURN configured the answer is `{}`).
pub async fn turn_server(
    moss: Arc<Moss>,
    req: Ruma<ruma::api::client::voip::get_turn_server_info::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(moss.turn_server(&req.session()?.user_id)))
}
