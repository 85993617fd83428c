//! `/_synapse/admin/v1/media/...`, a user's media and the media statistics.

use std::sync::Arc;

use axum::{extract::State, Json};
use moss_core::{
    storage::{AdminMediaRow, MediaOrder, MediaStatsOrder, UserMediaStats},
    Moss,
};
use serde::{Deserialize, Serialize};

use super::{boolean, non_negative, unknown_order, Admin, Empty, ListParams};
use crate::{
    error::ApiError,
    extract::{Path, Query},
};

#[derive(Serialize)]
pub(super) struct Media {
    media_id: String,
    media_type: Option<String>,
    media_length: Option<i64>,
    upload_name: Option<String>,
    created_ts: i64,
    url_cache: Option<String>,
    last_access_ts: Option<i64>,
    quarantined_by: Option<String>,
    safe_from_quarantine: bool,
    user_id: String,
    authenticated: bool,
    sha256: Option<String>,
}

impl From<AdminMediaRow> for Media {
    fn from(m: AdminMediaRow) -> Self {
        Media {
            media_id: m.media.media_id,
            media_type: m.media.content_type,
            media_length: m.media.size,
            upload_name: m.media.filename,
            created_ts: m.media.created_ts,
            url_cache: None,
            last_access_ts: m.last_access_ts,
            // moss does not record who quarantined an item.
            quarantined_by: m.media.quarantined.then(|| "admin".to_owned()),
            safe_from_quarantine: m.protected,
            user_id: m.media.user_id,
            authenticated: true,
            sha256: m.sha256,
        }
    }
}

#[derive(Serialize)]
pub(super) struct MediaList {
    media: Vec<Media>,
    total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<i64>,
}

/// The order and page of a user's media that `order_by`, `dir`, `from` and `limit` ask for:
/// newest first when neither `order_by` nor `dir` is given, as Synapse.
fn media_page(q: &ListParams) -> Result<(MediaOrder, moss_core::admin::Page), ApiError> {
    let newest_first = q.order_by.is_none() && q.dir.is_none();
    let order = match q.order_by.as_deref().unwrap_or("created_ts") {
        "media_id" => MediaOrder::MediaId,
        "upload_name" => MediaOrder::UploadName,
        "created_ts" => MediaOrder::CreatedTs,
        "last_access_ts" => MediaOrder::LastAccessTs,
        "media_length" => MediaOrder::MediaLength,
        "media_type" => MediaOrder::MediaType,
        "quarantined_by" => MediaOrder::QuarantinedBy,
        "safe_from_quarantine" => MediaOrder::SafeFromQuarantine,
        _ => return Err(unknown_order()),
    };
    Ok((order, q.page(!newest_first)?))
}

/// `GET /_synapse/admin/v1/users/{userId}/media`
pub(super) async fn user_media(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Json<MediaList>, ApiError> {
    let user = moss.local_user_id(&user_id)?;
    moss.admin_user(&user).await.map_err(|_| ApiError(moss_core::Error::not_found("Unknown user")))?;
    let (order, page) = media_page(&q)?;
    let (rows, total) = moss.admin_user_media(&user, order, page).await?;
    let next_token = q.next(&page, rows.len(), total);
    Ok(Json(MediaList { media: rows.into_iter().map(Media::from).collect(), total, next_token }))
}

#[derive(Serialize)]
pub(super) struct Deleted {
    deleted_media: Vec<String>,
    total: usize,
}

fn own_server(moss: &Moss, server: &str) -> Result<(), ApiError> {
    if server != moss.server_name.as_str() {
        return Err(
            moss_core::Error::new(ruma::api::error::ErrorKind::Unknown, 400, "Can only delete local media").into()
        );
    }
    Ok(())
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`
pub(super) async fn delete_one(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Deleted>, ApiError> {
    own_server(&moss, &server)?;
    moss.admin_media(&media_id).await?;
    let deleted_media = moss.admin_delete_media(vec![media_id]).await?;
    Ok(Json(Deleted { total: deleted_media.len(), deleted_media }))
}

#[derive(Serialize)]
pub(super) struct MediaInfo {
    media_info: MediaItem,
}

#[derive(Serialize)]
struct MediaItem {
    /// Null for this server's uploads, as in Synapse.
    media_origin: Option<String>,
    /// Synapse's own file name for a remote item; moss does not show its object keys.
    filesystem_id: Option<String>,
    #[serde(flatten)]
    media: Media,
}

/// `GET /_synapse/admin/v1/media/{serverName}/{mediaId}`: an upload of this server or another
/// server's item kept here.
pub(super) async fn info(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<MediaInfo>, ApiError> {
    let row = moss.admin_media_info(&server, &media_id).await?;
    let media_origin = (server != moss.server_name.as_str()).then_some(server);
    Ok(Json(MediaInfo { media_info: MediaItem { media_origin, filesystem_id: None, media: row.into() } }))
}

#[derive(Serialize)]
pub(super) struct RoomMedia {
    local: Vec<String>,
    remote: Vec<String>,
}

/// `GET /_synapse/admin/v1/room/{roomId}/media`
pub(super) async fn room_media(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<RoomMedia>, ApiError> {
    let room = ruma::RoomId::parse(&raw).map_err(|_| ApiError::invalid_param("invalid room id"))?;
    let m = moss.admin_room_media(&room).await?;
    Ok(Json(RoomMedia { local: m.local, remote: m.remote }))
}

#[derive(Deserialize)]
pub(super) struct DeleteBefore {
    before_ts: Option<String>,
    size_gt: Option<String>,
    keep_profiles: Option<String>,
}

/// `POST /_synapse/admin/v1/media/{serverName}/delete?before_ts=…&size_gt=…&keep_profiles=…`
pub(super) async fn delete_before(
    State(moss): State<Arc<Moss>>,
    admin: Admin,
    Path(server): Path<String>,
    Query(q): Query<DeleteBefore>,
) -> Result<Json<Deleted>, ApiError> {
    own_server(&moss, &server)?;
    delete_before_here(State(moss), admin, Query(q)).await
}

/// `POST /_synapse/admin/v1/media/delete?before_ts=…`: the same for this server's media.
pub(super) async fn delete_before_here(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<DeleteBefore>,
) -> Result<Json<Deleted>, ApiError> {
    let before = before_ts(q.before_ts.as_deref())?;
    let size_gt = non_negative("size_gt", q.size_gt.as_deref(), 0)?;
    let keep_profiles = boolean("keep_profiles", q.keep_profiles.as_deref(), true)?;
    let deleted_media = moss.admin_delete_media_before(before, size_gt, keep_profiles).await?;
    Ok(Json(Deleted { total: deleted_media.len(), deleted_media }))
}

/// `POST /_synapse/admin/v1/media/protect/{mediaId}`
pub(super) async fn protect(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(media_id): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    moss.admin_protect_media(&media_id, true).await?;
    Ok(Json(Empty {}))
}

/// `POST /_synapse/admin/v1/media/unprotect/{mediaId}`
pub(super) async fn unprotect(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(media_id): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    moss.admin_protect_media(&media_id, false).await?;
    Ok(Json(Empty {}))
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`
pub(super) async fn quarantine(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Empty>, ApiError> {
    moss.quarantine(Some(&format!("mxc://{server}/{media_id}")), None).await?;
    Ok(Json(Empty {}))
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`
pub(super) async fn unquarantine(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path((server, media_id)): Path<(String, String)>,
) -> Result<Json<Empty>, ApiError> {
    own_server(&moss, &server)?;
    moss.unquarantine(&media_id).await?;
    Ok(Json(Empty {}))
}

#[derive(Deserialize)]
pub(super) struct StatsParams {
    #[serde(flatten)]
    list: ListParams,
    search_term: Option<String>,
}

#[derive(Serialize)]
pub(super) struct StatsUser {
    user_id: String,
    displayname: Option<String>,
    media_count: i64,
    media_length: i64,
}

impl From<UserMediaStats> for StatsUser {
    fn from(s: UserMediaStats) -> Self {
        StatsUser {
            user_id: s.user_id,
            displayname: s.displayname,
            media_count: s.media_count,
            media_length: s.media_length,
        }
    }
}

#[derive(Serialize)]
pub(super) struct Stats {
    users: Vec<StatsUser>,
    total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<i64>,
}

/// `GET /_synapse/admin/v1/statistics/users/media`
pub(super) async fn stats(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<StatsParams>,
) -> Result<Json<Stats>, ApiError> {
    let order = match q.list.order_by.as_deref().unwrap_or("user_id") {
        "user_id" => MediaStatsOrder::UserId,
        "displayname" => MediaStatsOrder::DisplayName,
        "media_length" => MediaStatsOrder::MediaLength,
        "media_count" => MediaStatsOrder::MediaCount,
        _ => return Err(unknown_order()),
    };
    let page = q.list.page(true)?;
    if q.search_term.as_deref() == Some("") {
        return Err(ApiError::invalid_param("Query parameter search_term cannot be an empty string."));
    }
    let (rows, total) = moss.admin_media_stats(q.search_term, order, page).await?;
    let next_token = q.list.next(&page, rows.len(), total);
    Ok(Json(Stats { users: rows.into_iter().map(StatsUser::from).collect(), total, next_token }))
}

#[derive(Serialize)]
pub(super) struct Quarantined {
    num_quarantined: usize,
}

/// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`: this server's media the room
/// points at.
pub(super) async fn quarantine_room(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Quarantined>, ApiError> {
    let room = ruma::RoomId::parse(&raw).map_err(|_| ApiError::invalid_param("invalid room id"))?;
    Ok(Json(Quarantined { num_quarantined: moss.admin_quarantine_room_media(&room).await? }))
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`: everything the user uploaded.
pub(super) async fn quarantine_user(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Quarantined>, ApiError> {
    let user = ruma::UserId::parse(&raw).map_err(|_| ApiError::invalid_param("invalid user id"))?;
    Ok(Json(Quarantined { num_quarantined: moss.quarantine(None, Some(&user)).await? }))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`: deletes the page of the user's uploads the
/// same parameters would list.
pub(super) async fn delete_user_media(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
    Query(q): Query<ListParams>,
) -> Result<Json<Deleted>, ApiError> {
    let user = moss.local_user_id(&user_id)?;
    moss.admin_user(&user).await.map_err(|_| ApiError(moss_core::Error::not_found("Unknown user")))?;
    let (order, page) = media_page(&q)?;
    let (rows, _) = moss.admin_user_media(&user, order, page).await?;
    let deleted_media = moss.admin_delete_media(rows.into_iter().map(|m| m.media.media_id).collect()).await?;
    Ok(Json(Deleted { total: deleted_media.len(), deleted_media }))
}

#[derive(Deserialize)]
pub(super) struct PurgeCache {
    before_ts: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Purged {
    deleted: u64,
}

/// `POST /_synapse/admin/v1/purge_media_cache?before_ts=`: other servers' media kept here and
/// not served since then.
pub(super) async fn purge_cache(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<PurgeCache>,
) -> Result<Json<Purged>, ApiError> {
    let before = before_ts(q.before_ts.as_deref())?;
    Ok(Json(Purged { deleted: moss.purge_remote_media_before(before).await? }))
}

/// `before_ts`, required, in milliseconds: Synapse refuses seconds where milliseconds are meant
/// (and synapse-admin's default of 0).
fn before_ts(v: Option<&str>) -> Result<i64, ApiError> {
    let before = match v {
        None => return Err(moss_core::Error::missing_param("Missing integer query parameter 'before_ts'").into()),
        v => non_negative("before_ts", v, 0)?,
    };
    if before < 30_000_000_000 {
        return Err(ApiError::invalid_param(
            "Query parameter before_ts you provided is from the year 1970. Double check that you are providing a \
             timestamp in milliseconds.",
        ));
    }
    Ok(before)
}
