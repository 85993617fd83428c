//! `/_synapse/admin/v1/rooms`, room deletion (v1 and v2 with its status), blocking, and event
//! reports.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

use axum::{extract::State, Json};
use moss_core::{
    admin::rooms::{DeleteRoom, Shutdown},
    storage::{AdminReportRow, AdminRoomRow, ReportFilter, RoomOrder},
    Moss,
};
use ruma::{OwnedRoomId, OwnedUserId, RoomId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{body, unknown_order, Admin, Body, ListParams};
use crate::{
    error::ApiError,
    extract::{Path, Query},
};

#[derive(Serialize)]
pub(super) struct ListedRoom {
    room_id: String,
    name: Option<String>,
    canonical_alias: Option<String>,
    joined_members: i64,
    joined_local_members: i64,
    version: String,
    creator: String,
    encryption: Option<String>,
    federatable: bool,
    public: bool,
    join_rules: Option<String>,
    guest_access: Option<String>,
    history_visibility: Option<String>,
    state_events: i64,
    room_type: Option<String>,
}

impl From<AdminRoomRow> for ListedRoom {
    fn from(r: AdminRoomRow) -> Self {
        ListedRoom {
            room_id: r.room_id,
            name: r.name,
            canonical_alias: r.canonical_alias,
            joined_members: r.joined_members,
            joined_local_members: r.joined_local_members,
            version: r.version,
            creator: r.creator,
            encryption: r.encryption,
            federatable: r.federatable,
            public: r.public,
            join_rules: r.join_rules,
            guest_access: r.guest_access,
            history_visibility: r.history_visibility,
            state_events: r.state_events,
            room_type: r.room_type,
        }
    }
}

#[derive(Deserialize)]
pub(super) struct RoomListParams {
    #[serde(flatten)]
    list: ListParams,
    search_term: Option<String>,
}

#[derive(Serialize)]
pub(super) struct RoomList {
    rooms: Vec<ListedRoom>,
    offset: i64,
    total_rooms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_batch: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_batch: Option<i64>,
}

/// `GET /_synapse/admin/v1/rooms`
pub(super) async fn list(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<RoomListParams>,
) -> Result<Json<RoomList>, ApiError> {
    let order = match q.list.order_by.as_deref().unwrap_or("name") {
        "name" | "alphabetical" => RoomOrder::Name,
        "canonical_alias" => RoomOrder::CanonicalAlias,
        "joined_members" | "size" => RoomOrder::JoinedMembers,
        "joined_local_members" => RoomOrder::JoinedLocalMembers,
        "version" => RoomOrder::Version,
        "creator" => RoomOrder::Creator,
        "encryption" => RoomOrder::Encryption,
        "federatable" => RoomOrder::Federatable,
        "public" => RoomOrder::Public,
        "join_rules" => RoomOrder::JoinRules,
        "guest_access" => RoomOrder::GuestAccess,
        "history_visibility" => RoomOrder::HistoryVisibility,
        "state_events" => RoomOrder::StateEvents,
        _ => return Err(unknown_order()),
    };
    // Synapse sorts sizes largest first unless told otherwise.
    let default_forward = !matches!(
        order,
        RoomOrder::JoinedMembers | RoomOrder::JoinedLocalMembers | RoomOrder::StateEvents | RoomOrder::Version
    );
    let page = q.list.page(default_forward)?;
    if q.search_term.as_deref() == Some("") {
        return Err(ApiError::invalid_param("search_term cannot be an empty string"));
    }
    let (rows, total) = moss.admin_rooms(q.search_term, order, page).await?;
    let next_batch = q.list.next(&page, rows.len(), total);
    let prev_batch = (page.from > 0).then(|| (page.from - page.limit).max(0));
    Ok(Json(RoomList {
        rooms: rows.into_iter().map(ListedRoom::from).collect(),
        offset: page.from,
        total_rooms: total,
        next_batch,
        prev_batch,
    }))
}

#[derive(Serialize)]
pub(super) struct RoomDetails {
    #[serde(flatten)]
    listed: ListedRoom,
    topic: Option<String>,
    avatar: Option<String>,
    joined_local_devices: i64,
    forgotten: bool,
}

fn room_id(raw: &str) -> Result<OwnedRoomId, ApiError> {
    RoomId::parse(raw).map_err(|_| {
        ApiError(moss_core::Error::new(
            ruma::api::error::ErrorKind::Unknown,
            400,
            format!("{raw} is not a legal room ID"),
        ))
    })
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`
pub(super) async fn show(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<RoomDetails>, ApiError> {
    let r = moss.admin_room(&room_id(&raw)?).await?;
    let (topic, avatar) = (r.topic.clone(), r.avatar.clone());
    Ok(Json(RoomDetails { listed: r.into(), topic, avatar, joined_local_devices: 0, forgotten: false }))
}

#[derive(Serialize)]
pub(super) struct Members {
    members: Vec<String>,
    total: usize,
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`
pub(super) async fn members(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Members>, ApiError> {
    let members = moss.admin_room_members(&room_id(&raw)?).await?;
    Ok(Json(Members { total: members.len(), members }))
}

#[derive(Serialize)]
pub(super) struct State_ {
    state: Vec<Value>,
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`
pub(super) async fn state(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
) -> Result<Json<State_>, ApiError> {
    Ok(Json(State_ { state: moss.admin_room_state(&session.user_id, &room_id(&raw)?).await? }))
}

#[derive(Deserialize, Default)]
pub(super) struct DeleteBody {
    #[serde(default)]
    block: bool,
    purge: Option<bool>,
    new_room_user_id: Option<OwnedUserId>,
    room_name: Option<String>,
    message: Option<String>,
}

#[derive(Serialize, Clone)]
pub(super) struct ShutdownOut {
    kicked_users: Vec<OwnedUserId>,
    failed_to_kick_users: Vec<OwnedUserId>,
    local_aliases: Vec<String>,
    new_room_id: Option<OwnedRoomId>,
}

impl From<Shutdown> for ShutdownOut {
    fn from(s: Shutdown) -> Self {
        ShutdownOut {
            kicked_users: s.kicked_users,
            failed_to_kick_users: s.failed_to_kick_users,
            local_aliases: s.local_aliases.into_iter().map(|a| a.to_string()).collect(),
            new_room_id: s.new_room_id,
        }
    }
}

async fn run_delete(
    moss: &Moss,
    session_user: &ruma::UserId,
    raw: &str,
    bytes: &[u8],
) -> Result<(OwnedRoomId, ShutdownOut), ApiError> {
    let room = room_id(raw)?;
    // A body is required, as Synapse (`{}` for the defaults).
    let b: DeleteBody = body(bytes)?;
    let req = DeleteRoom {
        block: b.block,
        purge: b.purge.unwrap_or(true),
        new_room_user_id: b.new_room_user_id,
        room_name: b.room_name,
        message: b.message,
    };
    let out = moss.admin_delete_room(session_user, &room, req).await?;
    Ok((room, out.into()))
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}`: deletes and answers what it did.
pub(super) async fn delete_v1(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Body(bytes): Body,
) -> Result<Json<ShutdownOut>, ApiError> {
    Ok(Json(run_delete(&moss, &session.user_id, &raw, &bytes).await?.1))
}

/// Finished deletions by id, for the status endpoints (kept for this process's life, as
/// Synapse keeps them in memory too; bounded).
#[derive(Clone)]
pub(super) struct Finished {
    room_id: OwnedRoomId,
    shutdown: ShutdownOut,
}

fn deletions() -> &'static Mutex<HashMap<String, Finished>> {
    static D: OnceLock<Mutex<HashMap<String, Finished>>> = OnceLock::new();
    D.get_or_init(Default::default)
}

#[derive(Serialize)]
pub(super) struct DeleteId {
    delete_id: String,
}

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`: Synapse deletes in the background and answers
/// an id to poll; moss has finished when it answers (synapse-admin lists rooms again right
/// after), and the status endpoints say `complete`.
pub(super) async fn delete_v2(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Body(bytes): Body,
) -> Result<Json<DeleteId>, ApiError> {
    let (room_id, shutdown) = run_delete(&moss, &session.user_id, &raw, &bytes).await?;
    let delete_id = moss_core::accounts::random_string(16);
    let mut d = deletions().lock().unwrap_or_else(|p| p.into_inner());
    if d.len() >= 10_000 {
        d.clear();
    }
    d.insert(delete_id.clone(), Finished { room_id, shutdown });
    Ok(Json(DeleteId { delete_id }))
}

#[derive(Serialize)]
pub(super) struct DeleteStatus {
    delete_id: String,
    room_id: OwnedRoomId,
    status: &'static str,
    shutdown_room: ShutdownOut,
}

#[derive(Serialize)]
pub(super) struct DeleteStatuses {
    results: Vec<DeleteStatus>,
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`
pub(super) async fn delete_status_of_room(_: Admin, Path(raw): Path<String>) -> Result<Json<DeleteStatuses>, ApiError> {
    let room = room_id(&raw)?;
    let d = deletions().lock().unwrap_or_else(|p| p.into_inner());
    let results: Vec<DeleteStatus> = d
        .iter()
        .filter(|(_, f)| f.room_id == room)
        .map(|(id, f)| DeleteStatus {
            delete_id: id.clone(),
            room_id: f.room_id.clone(),
            status: "complete",
            shutdown_room: f.shutdown.clone(),
        })
        .collect();
    if results.is_empty() {
        return Err(moss_core::Error::not_found("No delete task for room_id found").into());
    }
    Ok(Json(DeleteStatuses { results }))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`
pub(super) async fn delete_status(_: Admin, Path(id): Path<String>) -> Result<Json<DeleteStatus>, ApiError> {
    let d = deletions().lock().unwrap_or_else(|p| p.into_inner());
    let f = d.get(&id).ok_or_else(|| ApiError(moss_core::Error::not_found("delete id not found")))?;
    let (room_id, shutdown_room) = (f.room_id.clone(), f.shutdown.clone());
    Ok(Json(DeleteStatus { delete_id: id, room_id, status: "complete", shutdown_room }))
}

#[derive(Serialize)]
pub(super) struct Extremity {
    event_id: String,
    depth: i64,
    received_ts: i64,
    state_group: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct Extremities {
    count: usize,
    results: Vec<Extremity>,
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities`
pub(super) async fn forward_extremities(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Extremities>, ApiError> {
    let results: Vec<Extremity> = moss
        .admin_forward_extremities(&room_id(&raw)?)
        .await?
        .into_iter()
        .map(|x| Extremity {
            event_id: x.event_id,
            depth: x.depth,
            received_ts: x.received_ts,
            state_group: x.state_group,
        })
        .collect();
    Ok(Json(Extremities { count: results.len(), results }))
}

#[derive(Serialize)]
pub(super) struct BlockStatus {
    block: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/block`
pub(super) async fn get_block(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<BlockStatus>, ApiError> {
    let by = moss.admin_room_blocked(&room_id(&raw)?).await?;
    Ok(Json(BlockStatus { block: by.is_some(), user_id: by }))
}

#[derive(Deserialize)]
pub(super) struct PutBlock {
    block: bool,
}

/// `PUT /_synapse/admin/v1/rooms/{roomId}/block`
pub(super) async fn put_block(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Body(bytes): Body,
) -> Result<Json<BlockStatus>, ApiError> {
    let b: PutBlock = body(&bytes)?;
    moss.admin_block_room(&session.user_id, &room_id(&raw)?, b.block).await?;
    Ok(Json(BlockStatus { block: b.block, user_id: None }))
}

#[derive(Serialize)]
pub(super) struct Report {
    id: i64,
    received_ts: i64,
    room_id: String,
    name: Option<String>,
    canonical_alias: Option<String>,
    event_id: Option<String>,
    user_id: String,
    reason: Option<String>,
    score: Option<i64>,
    sender: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_json: Option<Value>,
}

async fn report_out(moss: &Moss, r: AdminReportRow, with_event: bool) -> Report {
    let (name, alias) = match RoomId::parse(&r.room_id) {
        Ok(id) => match moss.admin_room(&id).await {
            Ok(room) => (room.name, room.canonical_alias),
            Err(_) => (None, None),
        },
        Err(_) => (None, None),
    };
    let event_json = if with_event { r.pdu.as_deref().and_then(|p| serde_json::from_str(p).ok()) } else { None };
    Report {
        id: r.id,
        received_ts: r.received_ts,
        room_id: r.room_id,
        name,
        canonical_alias: alias,
        event_id: r.event_id,
        user_id: r.reporter,
        reason: r.reason,
        score: r.score,
        sender: r.sender,
        event_json,
    }
}

#[derive(Deserialize)]
pub(super) struct ReportListParams {
    #[serde(flatten)]
    list: ListParams,
    room_id: Option<String>,
    user_id: Option<String>,
    event_sender_user_id: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Reports {
    event_reports: Vec<Report>,
    total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<i64>,
}

/// `GET /_synapse/admin/v1/event_reports` (newest first unless `dir=f`)
pub(super) async fn reports(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<ReportListParams>,
) -> Result<Json<Reports>, ApiError> {
    if !matches!(q.list.order_by.as_deref(), None | Some("received_ts")) {
        return Err(unknown_order());
    }
    let page = q.list.page(false)?;
    let filter = ReportFilter { room_id: q.room_id, user_id: q.user_id, event_sender: q.event_sender_user_id };
    let (rows, total) = moss.admin_reports(filter, page).await?;
    let next_token = q.list.next(&page, rows.len(), total);
    let mut event_reports = Vec::with_capacity(rows.len());
    for r in rows {
        event_reports.push(report_out(&moss, r, false).await);
    }
    Ok(Json(Reports { event_reports, total, next_token }))
}

fn report_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
        ApiError::invalid_param("The report_id parameter must be a string representing a positive integer.")
    })
}

/// `GET /_synapse/admin/v1/event_reports/{reportId}`
pub(super) async fn report(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<Report>, ApiError> {
    let r = moss.admin_report(report_id(&raw)?).await?;
    Ok(Json(report_out(&moss, r, true).await))
}

/// `DELETE /_synapse/admin/v1/event_reports/{reportId}`
pub(super) async fn delete_report(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(raw): Path<String>,
) -> Result<Json<super::Empty>, ApiError> {
    moss.admin_delete_report(report_id(&raw)?).await?;
    Ok(Json(super::Empty {}))
}

#[derive(Deserialize)]
pub(super) struct JoinBody {
    user_id: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Joined {
    room_id: OwnedRoomId,
}

/// `POST /_synapse/admin/v1/join/{roomIdOrAlias}` (`{"user_id": …}`): makes a local user join.
pub(super) async fn join(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Joined>, ApiError> {
    let b: JoinBody = body(&bytes)?;
    let user = b.user_id.ok_or_else(|| ApiError(moss_core::Error::missing_param("Missing param user_id")))?;
    let user = ruma::UserId::parse(&user).map_err(|_| ApiError::invalid_param("invalid user_id"))?;
    if user.server_name() != moss.server_name {
        return Err(moss_core::Error::new(
            ruma::api::error::ErrorKind::Unknown,
            400,
            "This endpoint can only be used with local users",
        )
        .into());
    }
    if moss.user(&user).await?.is_none() {
        return Err(moss_core::Error::not_found("User not found").into());
    }
    let target = ruma::RoomOrAliasId::parse(&raw).map_err(|_| {
        ApiError(moss_core::Error::new(
            ruma::api::error::ErrorKind::Unknown,
            400,
            format!("{raw} was not legal room ID or room alias"),
        ))
    })?;
    Ok(Json(Joined { room_id: moss.admin_join(&session.user_id, &user, &target).await? }))
}

#[derive(Deserialize)]
pub(super) struct MessagesParams {
    from: Option<String>,
    dir: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Messages {
    chunk: Vec<Value>,
    start: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    end: Option<String>,
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: every event, whatever the visibility.
pub(super) async fn messages(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(raw): Path<String>,
    Query(q): Query<MessagesParams>,
) -> Result<Json<Messages>, ApiError> {
    let dir = match q.dir.as_deref() {
        None | Some("f") => moss_core::Direction::Forward,
        Some("b") => moss_core::Direction::Backward,
        Some(_) => return Err(ApiError::invalid_param("Unknown direction: dir must be f or b")),
    };
    let limit = super::non_negative("limit", q.limit.as_deref(), 10)?.clamp(1, 1000);
    let m = moss.admin_room_messages(&session.user_id, &room_id(&raw)?, q.from, dir, limit).await?;
    Ok(Json(Messages { chunk: m.chunk, start: m.start, end: m.end }))
}

#[derive(Serialize)]
pub(super) struct RoomSize {
    room_id: String,
    estimated_size: i64,
}

#[derive(Serialize)]
pub(super) struct LargestRooms {
    rooms: Vec<RoomSize>,
}

/// `GET /_synapse/admin/v1/statistics/database/rooms`: the 10 rooms taking the most space.
pub(super) async fn largest_rooms(State(moss): State<Arc<Moss>>, _: Admin) -> Result<Json<LargestRooms>, ApiError> {
    let rooms = moss
        .admin_largest_rooms()
        .await?
        .into_iter()
        .map(|(room_id, estimated_size)| RoomSize { room_id, estimated_size })
        .collect();
    Ok(Json(LargestRooms { rooms }))
}
