//! The server-server API, served on the federation listener.

use std::{collections::HashMap, sync::Arc};

use axum::{
    extract::{FromRequest, Request, State},
    routing::{get, put},
    Json, Router,
};
use moss_core::Moss;
use ruma::{api::federation::openid::get_openid_userinfo, UserId};
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    extract::Query,
    ruma_wrapper::{HandlerResult, RouterExt, Ruma, RumaResponse},
};

/// Largest federation request body accepted (transactions are bounded by the spec well below).
const MAX_BODY: usize = 8 * 1024 * 1024;

/// A request whose X-Matrix signature verified: the origin server and the body.
pub struct Signed {
    pub origin: ruma::OwnedServerName,
    pub body: Vec<u8>,
}

impl FromRequest<Arc<Moss>> for Signed {
    type Rejection = ApiError;

    async fn from_request(req: Request, moss: &Arc<Moss>) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| ApiError::too_large(format!("request body is larger than {MAX_BODY} bytes")))?
            .to_vec();
        // Signatures cover the path and query as sent, not the whole URL.
        let uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").to_owned();
        let mut signed = http::Request::builder().method(parts.method.clone()).uri(uri);
        for (k, v) in &parts.headers {
            signed = signed.header(k, v);
        }
        let signed = signed.body(bytes).map_err(|e| ApiError::bad_json(e.to_string()))?;
        let origin = moss.authenticate_server(&signed).await?;
        crate::rate_limit::check(moss, crate::rate_limit::Class::Federation, origin.as_str())?;
        // It is up: whatever we had queued for it need not wait out a backoff.
        moss.destination_is_back(&origin);
        Ok(Signed { origin, body: signed.into_body() })
    }
}

pub fn router(moss: Arc<Moss>) -> Router {
    let measured = moss.config.metrics.bind.is_some();
    let r: Router<Arc<Moss>> = Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/query/{server_name}", get(notary_one))
        .route("/_matrix/key/v2/query", axum::routing::post(notary_batch))
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/query/profile", get(query_profile))
        .route("/_matrix/federation/v1/query/directory", get(query_directory))
        .route("/_matrix/federation/v1/publicRooms", get(public_rooms).post(public_rooms_filtered))
        .route("/_matrix/federation/v1/user/keys/query", axum::routing::post(user_keys_query))
        .route("/_matrix/federation/v1/user/keys/claim", axum::routing::post(user_keys_claim))
        .route("/_matrix/federation/v1/user/devices/{user_id}", get(user_devices))
        .merge(media_routes())
        .route("/_matrix/federation/v1/make_join/{room_id}/{user_id}", get(make_join))
        .route("/_matrix/federation/v1/make_leave/{room_id}/{user_id}", get(make_leave))
        .route("/_matrix/federation/v2/send_join/{room_id}/{event_id}", put(send_join))
        .route("/_matrix/federation/v2/send_leave/{room_id}/{event_id}", put(send_leave))
        .route("/_matrix/federation/v2/invite/{room_id}/{event_id}", put(invite))
        .route("/_matrix/federation/v1/invite/{room_id}/{event_id}", put(invite_v1))
        .route("/_matrix/federation/v1/make_knock/{room_id}/{user_id}", get(make_knock))
        .route("/_matrix/federation/v1/send_knock/{room_id}/{event_id}", put(send_knock))
        .route("/_matrix/federation/v1/send/{txn_id}", put(send_transaction))
        .route("/_matrix/federation/v1/event/{event_id}", get(event))
        .route("/_matrix/federation/v1/state_ids/{room_id}", get(state_ids))
        .route("/_matrix/federation/v1/state/{room_id}", get(state))
        .route("/_matrix/federation/v1/event_auth/{room_id}/{event_id}", get(event_auth))
        .route("/_matrix/federation/v1/backfill/{room_id}", get(backfill))
        .route("/_matrix/federation/v1/get_missing_events/{room_id}", axum::routing::post(missing_events))
        .route("/_matrix/federation/v1/timestamp_to_event/{room_id}", get(timestamp_to_event))
        .route("/_matrix/federation/v1/hierarchy/{room_id}", get(hierarchy))
        .ruma(openid_userinfo);
    // Request metrics only when something will read them (`metrics.bind`).
    let r = if measured {
        r.route_layer(axum::middleware::from_fn_with_state(moss.clone(), crate::metrics::record))
    } else {
        r
    };
    r.fallback(|| async { ApiError::unrecognized() })
        .with_state(moss)
        // A panic in a handler answers 500 with an id and leaves the listener serving.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(crate::panic_response))
}

/// The federation media endpoints (also served by `moss media-repo`, on its one listener).
pub fn media_routes() -> Router<Arc<Moss>> {
    Router::new()
        .route("/_matrix/federation/v1/media/download/{media_id}", get(media_download))
        .route("/_matrix/federation/v1/media/thumbnail/{media_id}", get(media_thumbnail))
}

/// `GET /_matrix/federation/v1/openid/userinfo?access_token=`: whose OpenID token this is. Asked
/// by any service a user handed the token to, without server signatures.
async fn openid_userinfo(
    moss: Arc<Moss>,
    req: Ruma<get_openid_userinfo::v1::Request>,
) -> HandlerResult<get_openid_userinfo::v1::Request> {
    let user = moss.openid_userinfo(&req.body.access_token).await?;
    Ok(RumaResponse(get_openid_userinfo::v1::Response::new(user)))
}

async fn server_keys(State(moss): State<Arc<Moss>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(moss.server_keys_document()?))
}

async fn version() -> Json<Value> {
    Json(json!({"server": {"name": "moss", "version": env!("CARGO_PKG_VERSION")}}))
}

async fn query_profile(
    State(moss): State<Arc<Moss>>,
    Query(q): Query<HashMap<String, String>>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let _ = signed.origin;
    let user =
        q.get("user_id").ok_or_else(|| ApiError::from(moss_core::Error::missing_param("user_id is required")))?;
    let user = UserId::parse(user.as_str()).map_err(|e| ApiError::invalid_param(format!("user_id: {e}")))?;
    Ok(Json(moss.serve_profile_query(&user, q.get("field").map(String::as_str)).await?))
}

/// The spec's multipart/mixed answer: a JSON part (metadata, empty today) then the content,
/// streamed without buffering.
fn multipart(dl: moss_core::media::Download) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures_util::StreamExt;
    let boundary = moss_core::accounts::random_string(32);
    let ctype = dl.content_type.clone().unwrap_or_else(|| "application/octet-stream".into());
    let head = format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--{boundary}\r\nContent-Type: {ctype}\r\n\
         Content-Disposition: {}\r\n\r\n",
        crate::media::disposition("attachment", dl.filename.as_deref())
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    let body = futures_util::stream::once(async move { Ok(bytes::Bytes::from(head)) })
        .chain(dl.body)
        .chain(futures_util::stream::once(async move { Ok(bytes::Bytes::from(tail)) }));
    (
        [(http::header::CONTENT_TYPE, format!("multipart/mixed; boundary={boundary}"))],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn media_download(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(media_id): crate::extract::Path<String>,
    signed: Signed,
) -> Result<axum::response::Response, ApiError> {
    // Only our own media: servers do not proxy each other's.
    let row = moss.media_row(&media_id, std::time::Duration::ZERO).await?;
    tracing::info!(origin = %signed.origin, %media_id, "serving media over federation");
    Ok(multipart(moss.download_media(&row, None).await?))
}

async fn media_thumbnail(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(media_id): crate::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
    signed: Signed,
) -> Result<axum::response::Response, ApiError> {
    let _ = signed.origin;
    let dim = |name: &str| -> Result<u32, ApiError> {
        q.get(name)
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| (1..=10_000).contains(n))
            .ok_or_else(|| ApiError::invalid_param(format!("{name} must be a positive integer")))
    };
    let method = match q.get("method").map(String::as_str) {
        None | Some("scale") => moss_core::media::thumbnail::Method::Scale,
        Some("crop") => moss_core::media::thumbnail::Method::Crop,
        Some(other) => return Err(ApiError::invalid_param(format!("unknown method {other:?}"))),
    };
    let row = moss.media_row(&media_id, std::time::Duration::ZERO).await?;
    let animated = q.get("animated").is_some_and(|v| v == "true");
    Ok(multipart(moss.thumbnail(&row, dim("width")?, dim("height")?, method, animated).await?))
}

fn json_body(signed: &Signed) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(&signed.body).map_err(|e| ApiError::not_json(e.to_string()))?;
    if !v.is_object() {
        return Err(ApiError::bad_json("the body must be a JSON object"));
    }
    Ok(v)
}

/// The users of a request map that live here: a server answers only for its own users.
fn local_users<T: serde::de::DeserializeOwned>(
    moss: &Moss,
    v: &Value,
) -> Result<std::collections::BTreeMap<ruma::OwnedUserId, T>, ApiError> {
    let map: std::collections::BTreeMap<ruma::OwnedUserId, T> =
        serde_json::from_value(v.clone()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    Ok(map.into_iter().filter(|(u, _)| u.server_name() == moss.server_name).collect())
}

async fn user_keys_query(State(moss): State<Arc<Moss>>, signed: Signed) -> Result<Json<Value>, ApiError> {
    let v = json_body(&signed)?;
    let wanted = local_users::<Vec<ruma::OwnedDeviceId>>(&moss, &v["device_keys"])?;
    let found = moss.query_keys(None, wanted).await?;
    Ok(Json(json!({
        "device_keys": found.device_keys,
        "master_keys": found.master_keys,
        "self_signing_keys": found.self_signing_keys,
    })))
}

async fn user_keys_claim(State(moss): State<Arc<Moss>>, signed: Signed) -> Result<Json<Value>, ApiError> {
    let v = json_body(&signed)?;
    let wanted = local_users::<std::collections::BTreeMap<ruma::OwnedDeviceId, String>>(&moss, &v["one_time_keys"])?;
    let claimed = moss.claim_keys(wanted).await?;
    Ok(Json(json!({ "one_time_keys": claimed.one_time_keys })))
}

async fn user_devices(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(user_id): crate::extract::Path<String>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let _ = signed.origin;
    let user = UserId::parse(user_id.as_str()).map_err(|e| ApiError::invalid_param(format!("user id: {e}")))?;
    Ok(Json(moss.serve_user_devices(&user).await?))
}

async fn query_directory(
    State(moss): State<Arc<Moss>>,
    Query(q): Query<HashMap<String, String>>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let _ = signed.origin;
    let alias =
        q.get("room_alias").ok_or_else(|| ApiError::from(moss_core::Error::missing_param("room_alias is required")))?;
    let alias =
        ruma::RoomAliasId::parse(alias.as_str()).map_err(|e| ApiError::invalid_param(format!("room_alias: {e}")))?;
    Ok(Json(moss.serve_directory_query(&alias).await?))
}

fn public_rooms_json(page: moss_core::rooms::directory::PublicRoomsPage) -> Json<Value> {
    let mut v = json!({"chunk": page.chunk, "total_room_count_estimate": page.total});
    if let Some(n) = page.next_batch {
        v["next_batch"] = json!(n);
    }
    if let Some(p) = page.prev_batch {
        v["prev_batch"] = json!(p);
    }
    Json(v)
}

async fn public_rooms(
    State(moss): State<Arc<Moss>>,
    Query(q): Query<HashMap<String, String>>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let _ = signed.origin;
    let limit = q.get("limit").and_then(|l| l.parse().ok());
    let network = room_network(
        q.get("include_all_networks").is_some_and(|v| v == "true"),
        q.get("third_party_instance_id").map(String::as_str),
    );
    Ok(public_rooms_json(moss.public_rooms(q.get("since").map(String::as_str), limit, None, &network).await?))
}

/// Which networks' rooms a directory query asks for (as the client-server `RoomNetwork`).
fn room_network(all: bool, instance: Option<&str>) -> ruma::directory::RoomNetwork {
    use ruma::directory::RoomNetwork;
    match (all, instance) {
        (true, _) => RoomNetwork::All,
        (false, Some(i)) => RoomNetwork::ThirdParty(i.to_owned()),
        (false, None) => RoomNetwork::Matrix,
    }
}

async fn public_rooms_filtered(State(moss): State<Arc<Moss>>, signed: Signed) -> Result<Json<Value>, ApiError> {
    let v = json_body(&signed)?;
    let limit = v["limit"].as_u64().map(|l| l as usize);
    let term = v["filter"]["generic_search_term"].as_str().map(str::to_owned);
    let network = room_network(v["include_all_networks"] == true, v["third_party_instance_id"].as_str());
    Ok(public_rooms_json(moss.public_rooms(v["since"].as_str(), limit, term, &network).await?))
}

/// Notary: `GET /_matrix/key/v2/query/{serverName}` (no authentication, as the spec says).
async fn notary_one(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(server): crate::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let server = ruma::ServerName::parse(&server).map_err(|e| ApiError::invalid_param(format!("server name: {e}")))?;
    let min = q.get("minimum_valid_until_ts").and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Json(json!({ "server_keys": moss.notary_key_docs(vec![(server, min)]).await? })))
}

/// Notary: `POST /_matrix/key/v2/query` with `{"server_keys": {server: {key id: {minimum_valid_until_ts}}}}`.
async fn notary_batch(
    State(moss): State<Arc<Moss>>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_json(e.body_text()))?;
    let wanted = body["server_keys"].as_object().ok_or_else(|| ApiError::bad_json("server_keys must be an object"))?;
    let mut servers = Vec::new();
    for (name, keys) in wanted {
        let server =
            ruma::ServerName::parse(name).map_err(|e| ApiError::invalid_param(format!("server name {name:?}: {e}")))?;
        let min = keys
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(_, k)| k["minimum_valid_until_ts"].as_u64())
            .max()
            .unwrap_or(0);
        servers.push((server, min));
    }
    Ok(Json(json!({ "server_keys": moss.notary_key_docs(servers).await? })))
}

// ---- rooms ----

fn room_id(s: &str) -> Result<ruma::OwnedRoomId, ApiError> {
    ruma::RoomId::parse(s).map_err(|e| ApiError::invalid_param(format!("room id: {e}")))
}

fn event_id(s: &str) -> Result<ruma::OwnedEventId, ApiError> {
    ruma::EventId::parse(s).map_err(|e| ApiError::invalid_param(format!("event id: {e}")))
}

fn user_id(s: &str) -> Result<ruma::OwnedUserId, ApiError> {
    UserId::parse(s).map_err(|e| ApiError::invalid_param(format!("user id: {e}")))
}

/// The room versions a make_join/make_knock caller supports; without `ver` it speaks only room
/// version 1, which we do not.
fn caller_versions(q: &[(String, String)]) -> Vec<String> {
    let versions = all(q, "ver");
    if versions.is_empty() {
        vec!["1".to_owned()]
    } else {
        versions
    }
}

/// Query parameters that may repeat (`ver`, `v`).
fn all(q: &[(String, String)], name: &str) -> Vec<String> {
    q.iter().filter(|(k, _)| k == name).map(|(_, v)| v.clone()).collect()
}

/// `GET /make_{join,leave,knock}/{roomId}/{userId}`.
async fn make_membership(
    moss: Arc<Moss>,
    (room, user): (String, String),
    q: Vec<(String, String)>,
    signed: Signed,
    membership: &'static str,
) -> Result<Json<Value>, ApiError> {
    let versions = if membership == "leave" { vec![] } else { caller_versions(&q) };
    let (room, user) = (room_id(&room)?, user_id(&user)?);
    Ok(Json(moss.serve_make_membership(&signed.origin, &room, &user, membership, versions).await?))
}

/// `PUT /send_{join,leave}` (v2) and `/send_knock`.
async fn send_membership(
    moss: Arc<Moss>,
    (room, event): (String, String),
    signed: Signed,
    membership: &'static str,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&signed)?;
    let (room, event) = (room_id(&room)?, event_id(&event)?);
    Ok(Json(moss.serve_send_membership(&signed.origin, &room, &event, membership, body).await?))
}

type PathPair = crate::extract::Path<(String, String)>;
type Versions = Query<Vec<(String, String)>>;

async fn make_join(State(m): State<Arc<Moss>>, p: PathPair, q: Versions, s: Signed) -> Result<Json<Value>, ApiError> {
    make_membership(m, p.0, q.0, s, "join").await
}

async fn make_leave(State(m): State<Arc<Moss>>, p: PathPair, q: Versions, s: Signed) -> Result<Json<Value>, ApiError> {
    make_membership(m, p.0, q.0, s, "leave").await
}

async fn make_knock(State(m): State<Arc<Moss>>, p: PathPair, q: Versions, s: Signed) -> Result<Json<Value>, ApiError> {
    make_membership(m, p.0, q.0, s, "knock").await
}

async fn send_join(State(m): State<Arc<Moss>>, p: PathPair, s: Signed) -> Result<Json<Value>, ApiError> {
    send_membership(m, p.0, s, "join").await
}

async fn send_leave(State(m): State<Arc<Moss>>, p: PathPair, s: Signed) -> Result<Json<Value>, ApiError> {
    send_membership(m, p.0, s, "leave").await
}

async fn send_knock(State(m): State<Arc<Moss>>, p: PathPair, s: Signed) -> Result<Json<Value>, ApiError> {
    send_membership(m, p.0, s, "knock").await
}

async fn invite(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path((room, event)): crate::extract::Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&signed)?;
    Ok(Json(moss.serve_invite(&signed.origin, &room_id(&room)?, &event_id(&event)?, body).await?))
}

async fn invite_v1(State(moss): State<Arc<Moss>>, p: PathPair, signed: Signed) -> Result<Json<Value>, ApiError> {
    Err(moss.serve_invite_v1(&signed.origin, &room_id(&p.0 .0)?).into())
}

async fn send_transaction(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(txn_id): crate::extract::Path<String>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&signed)?;
    Ok(Json(moss.receive_transaction(&signed.origin, &txn_id, body).await?))
}

async fn event(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(event): crate::extract::Path<String>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(moss.serve_event(&signed.origin, &event_id(&event)?).await?))
}

async fn state_ids(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(room): crate::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let at =
        q.get("event_id").ok_or_else(|| ApiError::from(moss_core::Error::missing_param("event_id is required")))?;
    Ok(Json(moss.serve_state(&signed.origin, &room_id(&room)?, &event_id(at)?, true).await?))
}

async fn state(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(room): crate::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let at =
        q.get("event_id").ok_or_else(|| ApiError::from(moss_core::Error::missing_param("event_id is required")))?;
    Ok(Json(moss.serve_state(&signed.origin, &room_id(&room)?, &event_id(at)?, false).await?))
}

async fn event_auth(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path((room, event)): crate::extract::Path<(String, String)>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(moss.serve_event_auth(&signed.origin, &room_id(&room)?, &event_id(&event)?).await?))
}

async fn backfill(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(room): crate::extract::Path<String>,
    Query(q): Query<Vec<(String, String)>>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let from = all(&q, "v");
    if from.is_empty() {
        return Err(moss_core::Error::missing_param("v is required").into());
    }
    let limit = all(&q, "limit").first().and_then(|l| l.parse().ok()).unwrap_or(10);
    Ok(Json(moss.serve_backfill(&signed.origin, &room_id(&room)?, from, limit).await?))
}

#[derive(serde::Deserialize)]
struct HierarchyQuery {
    suggested_only: Option<String>,
}

/// `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`
async fn hierarchy(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(room): crate::extract::Path<String>,
    Query(q): Query<HierarchyQuery>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let suggested_only = match q.suggested_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid_param("suggested_only must be true or false")),
    };
    Ok(Json(moss.serve_hierarchy(&signed.origin, &room_id(&room)?, suggested_only).await?))
}

#[derive(serde::Deserialize)]
struct TimestampQuery {
    ts: Option<String>,
    dir: Option<String>,
}

#[derive(serde::Serialize)]
struct TimestampAnswer {
    event_id: String,
    origin_server_ts: u64,
}

/// `GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=`
async fn timestamp_to_event(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(room): crate::extract::Path<String>,
    Query(q): Query<TimestampQuery>,
    signed: Signed,
) -> Result<Json<TimestampAnswer>, ApiError> {
    let ts = q.ts.ok_or_else(|| moss_core::Error::missing_param("ts is required"))?;
    let ts: u64 = ts.parse().map_err(|_| ApiError::invalid_param("ts must be a timestamp in milliseconds"))?;
    let dir = match q.dir.as_deref() {
        Some("f") => moss_core::Direction::Forward,
        Some("b") => moss_core::Direction::Backward,
        Some(_) => return Err(ApiError::invalid_param("dir must be f or b")),
        None => return Err(moss_core::Error::missing_param("dir is required").into()),
    };
    let room = room_id(&room)?;
    let (event_id, origin_server_ts) = moss.serve_timestamp_to_event(&signed.origin, &room, ts, dir).await?;
    Ok(Json(TimestampAnswer { event_id, origin_server_ts }))
}

async fn missing_events(
    State(moss): State<Arc<Moss>>,
    crate::extract::Path(room): crate::extract::Path<String>,
    signed: Signed,
) -> Result<Json<Value>, ApiError> {
    let body = json_body(&signed)?;
    Ok(Json(moss.serve_missing_events(&signed.origin, &room_id(&room)?, body).await?))
}
