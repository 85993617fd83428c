//! `/_synapse/admin/v2/users` and its neighbours: accounts, their devices, rooms and pushers.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, Json};
use moss_core::{
    admin::users::UserUpsert,
    storage::{AdminUserRow, DeviceRow, UserFilter, UserOrder},
    Moss,
};
use ruma::{OwnedRoomId, UserId};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::{body, boolean, optional_body, unknown_order, Admin, Body, Empty, ListParams};
use crate::{
    error::ApiError,
    extract::{Path, Query},
    ruma_wrapper::Authed,
};

/// A user as the list shows it (`creation_ts` in milliseconds, as Synapse's list).
#[derive(Serialize)]
pub(super) struct ListedUser {
    name: String,
    user_type: Option<String>,
    is_guest: bool,
    admin: bool,
    deactivated: bool,
    shadow_banned: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    creation_ts: i64,
    approved: bool,
    erased: bool,
    last_seen_ts: Option<i64>,
    locked: bool,
}

impl From<AdminUserRow> for ListedUser {
    fn from(u: AdminUserRow) -> Self {
        ListedUser {
            name: u.user_id,
            user_type: u.user_type,
            is_guest: false,
            admin: u.admin,
            deactivated: u.deactivated,
            shadow_banned: u.shadow_banned,
            displayname: u.displayname,
            avatar_url: u.avatar_url,
            creation_ts: u.created_ts,
            approved: true,
            erased: u.erased,
            last_seen_ts: u.last_seen_ts,
            locked: u.locked,
        }
    }
}

/// One user in full (`creation_ts` in seconds, as Synapse's `GET /v2/users/{id}`).
#[derive(Serialize)]
pub(super) struct UserDetails {
    name: String,
    admin: bool,
    deactivated: bool,
    locked: bool,
    shadow_banned: bool,
    creation_ts: i64,
    appservice_id: Option<String>,
    consent_server_notice_sent: Option<String>,
    consent_version: Option<String>,
    consent_ts: Option<i64>,
    user_type: Option<String>,
    is_guest: bool,
    suspended: bool,
    displayname: Option<String>,
    avatar_url: Option<String>,
    threepids: Vec<Value>,
    external_ids: Vec<Value>,
    erased: bool,
    last_seen_ts: Option<i64>,
}

fn details(moss: &Moss, u: AdminUserRow) -> UserDetails {
    let appservice_id = moss.appservices.exclusive_user_owner(&u.user_id).map(|s| s.registration.id.clone());
    UserDetails {
        name: u.user_id,
        admin: u.admin,
        deactivated: u.deactivated,
        locked: u.locked,
        shadow_banned: u.shadow_banned,
        creation_ts: u.created_ts / 1000,
        appservice_id,
        consent_server_notice_sent: None,
        consent_version: None,
        consent_ts: None,
        user_type: u.user_type,
        is_guest: false,
        suspended: u.suspended,
        displayname: u.displayname,
        avatar_url: u.avatar_url,
        threepids: vec![],
        external_ids: vec![],
        erased: u.erased,
        last_seen_ts: u.last_seen_ts,
    }
}

#[derive(Deserialize)]
pub(super) struct UserListParams {
    #[serde(flatten)]
    list: ListParams,
    name: Option<String>,
    user_id: Option<String>,
    guests: Option<String>,
    deactivated: Option<String>,
    locked: Option<String>,
    admins: Option<String>,
}

#[derive(Serialize)]
pub(super) struct UserList {
    users: Vec<ListedUser>,
    total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_token: Option<String>,
}

/// `GET /_synapse/admin/v2/users`
pub(super) async fn list(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<UserListParams>,
) -> Result<Json<UserList>, ApiError> {
    let page = q.list.page(true)?;
    let order = match q.list.order_by.as_deref().unwrap_or("name") {
        "name" => UserOrder::Name,
        "displayname" => UserOrder::DisplayName,
        "is_guest" => UserOrder::IsGuest,
        "admin" => UserOrder::Admin,
        "deactivated" => UserOrder::Deactivated,
        "user_type" => UserOrder::UserType,
        "avatar_url" => UserOrder::AvatarUrl,
        "shadow_banned" => UserOrder::ShadowBanned,
        "creation_ts" => UserOrder::CreationTs,
        "last_seen_ts" => UserOrder::LastSeenTs,
        "locked" => UserOrder::Locked,
        _ => return Err(unknown_order()),
    };
    boolean("guests", q.guests.as_deref(), true)?;
    let admins = match q.admins.as_deref() {
        None => None,
        v => Some(boolean("admins", v, false)?),
    };
    let filter = UserFilter {
        name: q.name.filter(|n| !n.is_empty()),
        user_id: q.user_id.filter(|n| !n.is_empty()),
        include_deactivated: boolean("deactivated", q.deactivated.as_deref(), false)?,
        include_locked: boolean("locked", q.locked.as_deref(), false)?,
        admins,
    };
    let (rows, total) = moss.admin_users(filter, order, page).await?;
    let next_token = q.list.next(&page, rows.len(), total).map(|n| n.to_string());
    Ok(Json(UserList { users: rows.into_iter().map(ListedUser::from).collect(), total, next_token }))
}

fn local(moss: &Moss, raw: &str) -> Result<ruma::OwnedUserId, ApiError> {
    Ok(moss.local_user_id(raw)?)
}

/// `GET /_synapse/admin/v2/users/{userId}`
pub(super) async fn show(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<UserDetails>, ApiError> {
    let user = local(&moss, &user_id)?;
    let row = moss.admin_user(&user).await?;
    Ok(Json(details(&moss, row)))
}

/// A field that may be absent (`None`), null (`Some(None)`) or set.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::<String>::deserialize(d)?))
}

#[derive(Deserialize, Default)]
pub(super) struct PutUser {
    password: Option<String>,
    logout_devices: Option<bool>,
    displayname: Option<String>,
    avatar_url: Option<String>,
    admin: Option<bool>,
    deactivated: Option<bool>,
    locked: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    user_type: Option<Option<String>>,
}

/// `PUT /_synapse/admin/v2/users/{userId}`: creates the account (201) or changes it (200).
pub(super) async fn upsert(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(user_id): Path<String>,
    Body(bytes): Body,
) -> Result<(StatusCode, Json<UserDetails>), ApiError> {
    let b: PutUser = body(&bytes)?;
    let user = match moss.local_user_id(&user_id) {
        Ok(u) => u,
        Err(_) if UserId::parse(&user_id).is_ok() => {
            return Err(moss_core::Error::new(
                ruma::api::error::ErrorKind::Unknown,
                400,
                "This endpoint can only be used with local users",
            )
            .into())
        }
        Err(e) => return Err(e.into()),
    };
    let empty_is_none = |v: Option<String>| v.map(|s| Some(s).filter(|s| !s.is_empty()));
    let change = UserUpsert {
        password: b.password,
        logout_devices: b.logout_devices.unwrap_or(true),
        displayname: empty_is_none(b.displayname),
        avatar_url: empty_is_none(b.avatar_url),
        admin: b.admin,
        deactivated: b.deactivated,
        locked: b.locked,
        user_type: b.user_type,
    };
    let (row, created) = moss.admin_upsert_user(&session.user_id, &user, change).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(details(&moss, row))))
}

#[derive(Deserialize, Default)]
pub(super) struct Deactivate {
    #[serde(default)]
    erase: bool,
}

#[derive(Serialize)]
pub(super) struct Deactivated {
    id_server_unbind_result: &'static str,
}

/// `POST /_synapse/admin/v1/deactivate/{userId}` (`{"erase": bool}`, body optional)
pub(super) async fn deactivate(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Deactivated>, ApiError> {
    let b: Deactivate = optional_body(&bytes)?;
    let user = local(&moss, &user_id)?;
    moss.admin_deactivate(&user, b.erase).await?;
    Ok(Json(Deactivated { id_server_unbind_result: "no-support" }))
}

#[derive(Deserialize)]
pub(super) struct ResetPassword {
    new_password: Option<String>,
    logout_devices: Option<bool>,
}

/// `POST /_synapse/admin/v1/reset_password/{userId}`
pub(super) async fn reset_password(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Empty>, ApiError> {
    let b: ResetPassword = body(&bytes)?;
    let password =
        b.new_password.ok_or_else(|| ApiError(moss_core::Error::missing_param("Missing param new_password")))?;
    let user = local(&moss, &user_id)?;
    moss.admin_user(&user).await.map_err(|_| ApiError(moss_core::Error::not_found("Unknown user")))?;
    let change =
        UserUpsert { password: Some(password), logout_devices: b.logout_devices.unwrap_or(true), ..Default::default() };
    moss.admin_upsert_user(&user, &user, change).await?;
    Ok(Json(Empty {}))
}

#[derive(Serialize)]
pub(super) struct Whois {
    user_id: String,
    devices: std::collections::BTreeMap<String, WhoisDevice>,
}

#[derive(Serialize)]
pub(super) struct WhoisDevice {
    sessions: Vec<WhoisSession>,
}

#[derive(Serialize)]
pub(super) struct WhoisSession {
    connections: Vec<WhoisConnection>,
}

#[derive(Serialize)]
pub(super) struct WhoisConnection {
    ip: Option<String>,
    last_seen: Option<i64>,
    user_agent: Option<String>,
}

/// `GET /_synapse/admin/v1/whois/{userId}` and the client-server `GET /admin/whois/{userId}`:
/// a user may ask about themselves, anyone else must be an admin. As Synapse (and as
/// synapse-admin reads it), every connection sits under the device key `""`.
pub(super) async fn whois(
    State(moss): State<Arc<Moss>>,
    Authed(session): Authed,
    Path(user_id): Path<String>,
) -> Result<Json<Whois>, ApiError> {
    let user = local(&moss, &user_id)?;
    if user != session.user_id {
        moss.require_admin(&session).await?;
    }
    let connections = moss
        .whois(&user)
        .await?
        .into_iter()
        .map(|c| WhoisConnection { ip: c.ip, last_seen: c.last_seen, user_agent: c.user_agent })
        .collect();
    let mut devices = std::collections::BTreeMap::new();
    devices.insert(String::new(), WhoisDevice { sessions: vec![WhoisSession { connections }] });
    Ok(Json(Whois { user_id: user.to_string(), devices }))
}

#[derive(Serialize, Deserialize)]
pub(super) struct IsAdmin {
    admin: bool,
}

/// `GET /_synapse/admin/v1/users/{userId}/admin`
pub(super) async fn get_admin(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<IsAdmin>, ApiError> {
    let user = local(&moss, &user_id)?;
    Ok(Json(IsAdmin { admin: moss.admin_user(&user).await?.admin }))
}

/// `PUT /_synapse/admin/v1/users/{userId}/admin`
pub(super) async fn put_admin(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(user_id): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Empty>, ApiError> {
    let b: IsAdmin = body(&bytes)?;
    let user = local(&moss, &user_id)?;
    moss.admin_user(&user).await?;
    moss.admin_upsert_user(&session.user_id, &user, UserUpsert { admin: Some(b.admin), ..Default::default() }).await?;
    Ok(Json(Empty {}))
}

#[derive(Serialize)]
pub(super) struct Device {
    device_id: String,
    display_name: Option<String>,
    last_seen_ip: Option<String>,
    last_seen_user_agent: Option<String>,
    last_seen_ts: Option<i64>,
    user_id: String,
}

fn device_out(user: &UserId, d: DeviceRow) -> Device {
    Device {
        device_id: d.device_id,
        display_name: d.display_name,
        last_seen_ip: d.last_seen_ip,
        last_seen_user_agent: d.last_seen_user_agent,
        last_seen_ts: d.last_seen_ts,
        user_id: user.to_string(),
    }
}

#[derive(Serialize)]
pub(super) struct Devices {
    devices: Vec<Device>,
    total: usize,
}

async fn existing_user(moss: &Moss, raw: &str) -> Result<ruma::OwnedUserId, ApiError> {
    let user = local(moss, raw)?;
    moss.admin_user(&user).await.map_err(|_| ApiError(moss_core::Error::not_found("Unknown user")))?;
    Ok(user)
}

/// `GET /_synapse/admin/v2/users/{userId}/devices`
pub(super) async fn devices(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Devices>, ApiError> {
    let user = existing_user(&moss, &user_id).await?;
    let devices: Vec<Device> = moss
        .devices(&user)
        .await?
        .into_iter()
        .filter(|d| !d.device_id.starts_with("appservice:"))
        .map(|d| device_out(&user, d))
        .collect();
    Ok(Json(Devices { total: devices.len(), devices }))
}

async fn device_show(moss: &Moss, user_id: &str, device_id: &str) -> Result<Json<Device>, ApiError> {
    let user = existing_user(moss, user_id).await?;
    let d =
        moss.device(&user, device_id).await?.ok_or_else(|| ApiError(moss_core::Error::not_found("No device found")))?;
    Ok(Json(device_out(&user, d)))
}

/// `GET /_synapse/admin/v2/users/{userId}/devices/{deviceId}`
pub(super) async fn device(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Json<Device>, ApiError> {
    device_show(&moss, &user_id, &device_id).await
}

#[derive(Deserialize, Default)]
pub(super) struct PutDevice {
    display_name: Option<String>,
}

/// `PUT /_synapse/admin/v2/users/{userId}/devices/{deviceId}`
pub(super) async fn put_device(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
    Body(bytes): Body,
) -> Result<Json<Empty>, ApiError> {
    let b: PutDevice = optional_body(&bytes)?;
    let user = existing_user(&moss, &user_id).await?;
    if b.display_name.is_some() {
        moss.rename_device(&user, &device_id, b.display_name).await?;
    }
    Ok(Json(Empty {}))
}

/// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}` (no interactive auth; a
/// missing device is fine)
pub(super) async fn delete_device(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Json<Empty>, ApiError> {
    let user = existing_user(&moss, &user_id).await?;
    moss.delete_devices(&user, vec![device_id]).await?;
    Ok(Json(Empty {}))
}

#[derive(Deserialize)]
pub(super) struct DeleteDevices {
    devices: Vec<String>,
}

/// `POST /_synapse/admin/v2/users/{userId}/delete_devices`
pub(super) async fn delete_devices(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Empty>, ApiError> {
    let b: DeleteDevices = body(&bytes)?;
    let user = existing_user(&moss, &user_id).await?;
    moss.delete_devices(&user, b.devices).await?;
    Ok(Json(Empty {}))
}

#[derive(Serialize)]
pub(super) struct JoinedRooms {
    joined_rooms: Vec<OwnedRoomId>,
    total: usize,
}

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`
pub(super) async fn joined_rooms(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<JoinedRooms>, ApiError> {
    let user = UserId::parse(&user_id).map_err(|_| ApiError::invalid_param("invalid user id"))?;
    let rooms = moss.admin_joined_rooms(&user).await?;
    Ok(Json(JoinedRooms { total: rooms.len(), joined_rooms: rooms }))
}

#[derive(Serialize)]
pub(super) struct Pushers {
    pushers: Vec<Value>,
    total: usize,
}

/// `GET /_synapse/admin/v1/users/{userId}/pushers`
pub(super) async fn pushers(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Pushers>, ApiError> {
    let user = existing_user(&moss, &user_id).await?;
    let pushers = moss.pushers(&user).await?;
    Ok(Json(Pushers { total: pushers.len(), pushers }))
}

/// `POST /_synapse/admin/v1/users/{userId}/shadow_ban`
pub(super) async fn shadow_ban(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    let user = shadow_ban_target(&moss, &user_id)?;
    moss.admin_shadow_ban(&user, true).await?;
    Ok(Json(Empty {}))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/shadow_ban`
pub(super) async fn unshadow_ban(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    let user = shadow_ban_target(&moss, &user_id)?;
    moss.admin_shadow_ban(&user, false).await?;
    Ok(Json(Empty {}))
}

fn shadow_ban_target(moss: &Moss, raw: &str) -> Result<ruma::OwnedUserId, ApiError> {
    let user = UserId::parse(raw).map_err(|_| ApiError::invalid_param("invalid user id"))?;
    if user.server_name() != moss.server_name {
        return Err(moss_core::Error::new(
            ruma::api::error::ErrorKind::Unknown,
            400,
            "Only local users can be shadow-banned",
        )
        .into());
    }
    Ok(user)
}

#[derive(Serialize, Deserialize, Default)]
pub(super) struct Ratelimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    messages_per_second: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    burst_count: Option<i64>,
}

/// `GET /_synapse/admin/v1/users/{userId}/override_ratelimit` (`{}` when none is set)
pub(super) async fn get_ratelimit(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Ratelimit>, ApiError> {
    let user = existing_user(&moss, &user_id).await?;
    Ok(Json(match moss.ratelimit_override(user.as_str()) {
        Some((p, b)) => Ratelimit { messages_per_second: Some(p), burst_count: Some(b) },
        None => Ratelimit::default(),
    }))
}

/// `POST /_synapse/admin/v1/users/{userId}/override_ratelimit` (missing values are 0; 0/0
/// means not limited)
pub(super) async fn set_ratelimit(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
    Body(bytes): Body,
) -> Result<Json<Ratelimit>, ApiError> {
    let b: Value = optional_body::<Option<Value>>(&bytes)?.unwrap_or_else(|| serde_json::json!({}));
    let field = |k: &str| -> Result<i64, ApiError> {
        match b.get(k) {
            None | Some(Value::Null) => Ok(0),
            Some(v) => v
                .as_i64()
                .filter(|n| *n >= 0)
                .ok_or_else(|| ApiError::invalid_param(format!("{k} must be a positive integer"))),
        }
    };
    let (p, c) = (field("messages_per_second")?, field("burst_count")?);
    let user = existing_user(&moss, &user_id).await?;
    moss.admin_set_ratelimit(&user, Some((p, c))).await?;
    Ok(Json(Ratelimit { messages_per_second: Some(p), burst_count: Some(c) }))
}

/// `DELETE /_synapse/admin/v1/users/{userId}/override_ratelimit`
pub(super) async fn delete_ratelimit(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Empty>, ApiError> {
    let user = existing_user(&moss, &user_id).await?;
    moss.admin_set_ratelimit(&user, None).await?;
    Ok(Json(Empty {}))
}

#[derive(Deserialize, Default)]
pub(super) struct LoginAs {
    valid_until_ms: Option<i64>,
}

#[derive(Serialize)]
pub(super) struct LoginAsToken {
    access_token: String,
}

/// `POST /_synapse/admin/v1/users/{userId}/login`: a token acting as the user, without a new
/// device.
pub(super) async fn login_as(
    State(moss): State<Arc<Moss>>,
    Admin(session): Admin,
    Path(user_id): Path<String>,
    Body(bytes): Body,
) -> Result<Json<LoginAsToken>, ApiError> {
    let b: LoginAs = optional_body(&bytes)?;
    let user = UserId::parse(&user_id).map_err(|_| ApiError::invalid_param("invalid user id"))?;
    if user.server_name() != moss.server_name {
        return Err(moss_core::Error::new(
            ruma::api::error::ErrorKind::Unknown,
            400,
            "Only local users can be logged in as",
        )
        .into());
    }
    let access_token = moss.admin_login_as(&session.user_id, &user, b.valid_until_ms).await?;
    Ok(Json(LoginAsToken { access_token }))
}

#[derive(Serialize)]
pub(super) struct Memberships {
    memberships: std::collections::BTreeMap<String, String>,
}

/// `GET /_synapse/admin/v1/users/{userId}/memberships`
pub(super) async fn memberships(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Memberships>, ApiError> {
    let user = existing_user(&moss, &user_id).await?;
    Ok(Json(Memberships { memberships: moss.admin_memberships(&user).await?.into_iter().collect() }))
}

#[derive(Serialize)]
pub(super) struct AccountData {
    account_data: AccountDataSets,
}

#[derive(Serialize, Default)]
pub(super) struct AccountDataSets {
    global: serde_json::Map<String, Value>,
    rooms: std::collections::BTreeMap<String, serde_json::Map<String, Value>>,
}

/// `GET /_synapse/admin/v1/users/{userId}/accountdata`
pub(super) async fn account_data(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Path(user_id): Path<String>,
) -> Result<Json<AccountData>, ApiError> {
    let user = existing_user(&moss, &user_id).await?;
    let mut sets = AccountDataSets::default();
    for (room, kind, content) in moss.admin_account_data(&user).await? {
        if room.is_empty() {
            sets.global.insert(kind, content);
        } else {
            sets.rooms.entry(room).or_default().insert(kind, content);
        }
    }
    Ok(Json(AccountData { account_data: sets }))
}

#[derive(Deserialize)]
pub(super) struct UsernameParams {
    username: Option<String>,
}

#[derive(Serialize)]
pub(super) struct Available {
    available: bool,
}

/// `GET /_synapse/admin/v1/username_available?username=` (400 `M_USER_IN_USE` when taken,
/// as the client-server check)
pub(super) async fn username_available(
    State(moss): State<Arc<Moss>>,
    _: Admin,
    Query(q): Query<UsernameParams>,
) -> Result<Json<Available>, ApiError> {
    let name = q
        .username
        .ok_or_else(|| ApiError(moss_core::Error::missing_param("Missing string query parameter 'username'")))?;
    let id = moss.new_user_id(&name)?;
    if moss.appservices.exclusive_user_owner(id.as_str()).is_some() {
        return Err(moss_core::Error::new(
            ruma::api::error::ErrorKind::Exclusive,
            400,
            "User ID reserved by an application service.",
        )
        .into());
    }
    if !moss.username_available(&name).await? {
        return Err(moss_core::Error::new(ruma::api::error::ErrorKind::UserInUse, 400, "User ID already taken.").into());
    }
    Ok(Json(Available { available: true }))
}
