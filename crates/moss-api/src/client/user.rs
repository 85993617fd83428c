//! Per-user endpoints: devices, profile, filters, account data, tags, push rules, pushers,
//! typing, receipts and read markers.

use std::{sync::Arc, time::Duration};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    Json,
};
use moss_core::{appservice::DeviceManagement, uiaa::password_flow, Moss};
use ruma::{
    api::client::{
        config::{get_global_account_data, get_room_account_data, set_global_account_data, set_room_account_data},
        device::{delete_device, delete_devices, get_device, get_devices, update_device},
        filter::{create_filter, get_filter},
        push::{
            delete_pushrule, get_pushers, get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
            set_pusher, set_pushrule, set_pushrule_actions, set_pushrule_enabled,
        },
        read_marker::set_read_marker,
        receipt::create_receipt,
        tag::{create_tag, delete_tag, get_tags},
        typing::create_typing_event,
        user_directory::search_users,
    },
    events::receipt::ReceiptThread,
    serde::Raw,
    UserId,
};
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    ruma_wrapper::{Authed, HandlerResult, Ruma, RumaResponse},
};

/// A device as the spec describes it: optional fields left out when unknown (ruma's `Device`
/// writes them as `null`, which the schema does not allow).
#[derive(serde::Serialize)]
pub struct DeviceJson {
    device_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    display_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen_ts: Option<i64>,
}

fn device(row: moss_core::DeviceRow) -> DeviceJson {
    DeviceJson {
        device_id: row.device_id,
        display_name: row.display_name,
        last_seen_ip: row.last_seen_ip,
        last_seen_ts: row.last_seen_ts.filter(|t| *t >= 0),
    }
}

#[derive(serde::Serialize)]
pub struct DevicesJson {
    devices: Vec<DeviceJson>,
}

pub async fn devices(moss: Arc<Moss>, req: Ruma<get_devices::v3::Request>) -> Result<Json<DevicesJson>, ApiError> {
    let rows = moss.devices(&req.session()?.user_id).await?;
    Ok(Json(DevicesJson { devices: rows.into_iter().map(device).collect() }))
}

pub async fn get_device(moss: Arc<Moss>, req: Ruma<get_device::v3::Request>) -> Result<Json<DeviceJson>, ApiError> {
    let row = moss
        .device(&req.session()?.user_id, req.body.device_id.as_str())
        .await?
        .ok_or_else(|| moss_core::Error::not_found("no such device"))?;
    Ok(Json(device(row)))
}

/// Plain JSON: an application service that manages devices (MSC4190) creates one with 201.
pub async fn update_device(
    moss: Arc<Moss>,
    req: Ruma<update_device::v3::Request>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let s = req.session()?.clone();
    let manages = s.appservice.as_ref().is_some_and(|a| a.device_management != DeviceManagement::Off);
    if manages {
        crate::rate_limit::check_session(&moss, crate::rate_limit::Class::Login, &s)?;
        let created =
            moss.put_device_as_service(&s, req.body.device_id.as_str(), req.body.display_name.clone()).await?;
        return Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(json!({}))));
    }
    moss.rename_device(&s.user_id, req.body.device_id.as_str(), req.body.display_name.clone()).await?;
    Ok((StatusCode::OK, Json(json!({}))))
}

pub async fn delete_device(
    moss: Arc<Moss>,
    req: Ruma<delete_device::v3::Request>,
) -> HandlerResult<delete_device::v3::Request> {
    let user = req.session()?.user_id.clone();
    if moss.device(&user, req.body.device_id.as_str()).await?.is_none() {
        return Err(moss_core::Error::not_found("no such device").into());
    }
    // Application services (admin-registered) delete their users' devices without UIA (MSC4190).
    if req.session()?.appservice.is_none() {
        moss.uiaa(password_flow("delete_device", &user), req.body.auth.clone()).await?;
    }
    moss.delete_devices(&user, vec![req.body.device_id.to_string()]).await?;
    Ok(RumaResponse(delete_device::v3::Response::new()))
}

pub async fn delete_devices(
    moss: Arc<Moss>,
    req: Ruma<delete_devices::v3::Request>,
) -> HandlerResult<delete_devices::v3::Request> {
    let user = req.session()?.user_id.clone();
    if req.session()?.appservice.is_none() {
        moss.uiaa(password_flow("delete_devices", &user), req.body.auth.clone()).await?;
    }
    moss.delete_devices(&user, req.body.devices.iter().map(|d| d.to_string()).collect()).await?;
    Ok(RumaResponse(delete_devices::v3::Response::new()))
}

// ---- profile (plain JSON: the v1.16 profile-field types are more than these need) ----

pub async fn get_profile(State(moss): State<Arc<Moss>>, Path(user): Path<String>) -> Result<Json<Value>, ApiError> {
    let user = UserId::parse(&user).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    if user.server_name() != moss.server_name {
        return Ok(Json(remote_profile(&moss, &user).await?));
    }
    let (name, avatar) = moss.profile(&user).await?;
    let mut v = json!({});
    if let Some(n) = name {
        v["displayname"] = json!(n);
    }
    if let Some(a) = avatar {
        v["avatar_url"] = json!(a);
    }
    Ok(Json(v))
}

pub async fn get_profile_field(
    State(moss): State<Arc<Moss>>,
    Path((user, field)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let user = UserId::parse(&user).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    let (name, avatar) = if user.server_name() != moss.server_name {
        let p = remote_profile(&moss, &user).await?;
        (p["displayname"].as_str().map(str::to_owned), p["avatar_url"].as_str().map(str::to_owned))
    } else {
        moss.profile(&user).await?
    };
    let value = match field.as_str() {
        "displayname" => name,
        "avatar_url" => avatar,
        _ => None,
    };
    match value {
        Some(v) => Ok(Json(json!({ field: v }))),
        None => Err(moss_core::Error::not_found("profile field not set").into()),
    }
}

/// A remote user's profile over federation; "not found" when federation is off or the other
/// server does not know them.
async fn remote_profile(moss: &Moss, user: &UserId) -> Result<Value, ApiError> {
    if moss.federation.is_none() {
        return Err(
            moss_core::Error::not_found("profiles of other servers' users need federation, which is disabled").into()
        );
    }
    Ok(moss.remote_profile(user).await?)
}

pub async fn set_profile_field(
    State(moss): State<Arc<Moss>>,
    Path((user, field)): Path<(String, String)>,
    Authed(session): Authed,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    // A suspended account may not change its profile (others see it in every room).
    moss.check_not_suspended(&session.user_id).await?;
    let Json(body) = body.map_err(|e| match e {
        axum::extract::rejection::JsonRejection::JsonSyntaxError(e) => ApiError::not_json(e.body_text()),
        e => ApiError::bad_json(e.body_text()),
    })?;
    let user = UserId::parse(&user).map_err(|e| ApiError::invalid_param(e.to_string()))?;
    if user != session.user_id {
        return Err(ApiError::forbidden("you may only change your own profile"));
    }
    if field != "displayname" && field != "avatar_url" {
        return Err(ApiError::invalid_param("only displayname and avatar_url are supported"));
    }
    let value = match &body[&field] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => return Err(ApiError::bad_json(format!("{field} must be a string"))),
    };
    moss.set_profile_field(&user, &field, value).await?;
    Ok(Json(json!({})))
}

// ---- filters ----

pub async fn create_filter(
    moss: Arc<Moss>,
    req: Ruma<create_filter::v3::Request>,
) -> HandlerResult<create_filter::v3::Request> {
    let s = req.session()?;
    if req.body.user_id != s.user_id {
        return Err(ApiError::forbidden("you may only create filters for yourself"));
    }
    let id = moss.create_filter(&s.user_id, &req.body.filter).await?;
    Ok(RumaResponse(create_filter::v3::Response::new(id)))
}

pub async fn get_filter(moss: Arc<Moss>, req: Ruma<get_filter::v3::Request>) -> HandlerResult<get_filter::v3::Request> {
    let s = req.session()?;
    if req.body.user_id != s.user_id {
        return Err(ApiError::forbidden("you may only read your own filters"));
    }
    let f = moss.filter(&s.user_id, &req.body.filter_id).await?;
    Ok(RumaResponse(get_filter::v3::Response::new(f)))
}

// ---- account data and tags ----

fn same_user(a: &UserId, b: &UserId) -> Result<(), ApiError> {
    if a == b {
        Ok(())
    } else {
        Err(ApiError::forbidden("you may only access your own account data"))
    }
}

fn raw_json<T>(v: &Value) -> Result<Raw<T>, ApiError> {
    Raw::new(v).map(|r| r.cast_unchecked()).map_err(|e| moss_core::Error::internal(e.to_string()).into())
}

pub async fn get_global_data(
    moss: Arc<Moss>,
    req: Ruma<get_global_account_data::v3::Request>,
) -> HandlerResult<get_global_account_data::v3::Request> {
    same_user(&req.body.user_id, &req.session()?.user_id)?;
    let v = moss.account_data(&req.body.user_id, None, &req.body.event_type.to_string()).await?;
    Ok(RumaResponse(get_global_account_data::v3::Response::new(raw_json(&v)?)))
}

pub async fn set_global_data(
    moss: Arc<Moss>,
    req: Ruma<set_global_account_data::v3::Request>,
) -> HandlerResult<set_global_account_data::v3::Request> {
    same_user(&req.body.user_id, &req.session()?.user_id)?;
    let content: Value =
        serde_json::from_str(req.body.data.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    moss.set_account_data(&req.body.user_id, None, &req.body.event_type.to_string(), content).await?;
    Ok(RumaResponse(set_global_account_data::v3::Response::new()))
}

pub async fn get_room_data(
    moss: Arc<Moss>,
    req: Ruma<get_room_account_data::v3::Request>,
) -> HandlerResult<get_room_account_data::v3::Request> {
    same_user(&req.body.user_id, &req.session()?.user_id)?;
    let v = moss.account_data(&req.body.user_id, Some(&req.body.room_id), &req.body.event_type.to_string()).await?;
    Ok(RumaResponse(get_room_account_data::v3::Response::new(raw_json(&v)?)))
}

pub async fn set_room_data(
    moss: Arc<Moss>,
    req: Ruma<set_room_account_data::v3::Request>,
) -> HandlerResult<set_room_account_data::v3::Request> {
    same_user(&req.body.user_id, &req.session()?.user_id)?;
    let content: Value =
        serde_json::from_str(req.body.data.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    moss.set_account_data(&req.body.user_id, Some(&req.body.room_id), &req.body.event_type.to_string(), content)
        .await?;
    Ok(RumaResponse(set_room_account_data::v3::Response::new()))
}

pub async fn get_tags(moss: Arc<Moss>, req: Ruma<get_tags::v3::Request>) -> HandlerResult<get_tags::v3::Request> {
    same_user(&req.body.user_id, &req.session()?.user_id)?;
    let tags = moss.tags(&req.body.user_id, &req.body.room_id).await?;
    let tags = serde_json::from_value(tags).unwrap_or_default();
    Ok(RumaResponse(get_tags::v3::Response::new(tags)))
}

pub async fn put_tag(moss: Arc<Moss>, req: Ruma<create_tag::v3::Request>) -> HandlerResult<create_tag::v3::Request> {
    same_user(&req.body.user_id, &req.session()?.user_id)?;
    let info = serde_json::to_value(&req.body.tag_info).map_err(|e| ApiError::bad_json(e.to_string()))?;
    moss.set_tag(&req.body.user_id, &req.body.room_id, &req.body.tag, Some(info)).await?;
    Ok(RumaResponse(create_tag::v3::Response::new()))
}

pub async fn delete_tag(moss: Arc<Moss>, req: Ruma<delete_tag::v3::Request>) -> HandlerResult<delete_tag::v3::Request> {
    same_user(&req.body.user_id, &req.session()?.user_id)?;
    moss.set_tag(&req.body.user_id, &req.body.room_id, &req.body.tag, None).await?;
    Ok(RumaResponse(delete_tag::v3::Response::new()))
}

// ---- push rules and pushers ----

pub async fn push_rules(
    moss: Arc<Moss>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> HandlerResult<get_pushrules_all::v3::Request> {
    let rules = moss.push_rules(&req.session()?.user_id).await?;
    Ok(RumaResponse(get_pushrules_all::v3::Response::new(rules)))
}

pub async fn push_rule(
    moss: Arc<Moss>,
    req: Ruma<get_pushrule::v3::Request>,
) -> HandlerResult<get_pushrule::v3::Request> {
    let rules = moss.push_rules(&req.session()?.user_id).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(|| moss_core::Error::not_found("push rule not found"))?;
    Ok(RumaResponse(get_pushrule::v3::Response::new(rule.into())))
}

pub async fn set_push_rule(
    moss: Arc<Moss>,
    req: Ruma<set_pushrule::v3::Request>,
) -> HandlerResult<set_pushrule::v3::Request> {
    moss.put_push_rule(
        &req.session()?.user_id,
        req.body.rule.clone(),
        req.body.after.as_deref(),
        req.body.before.as_deref(),
    )
    .await?;
    Ok(RumaResponse(set_pushrule::v3::Response::new()))
}

pub async fn delete_push_rule(
    moss: Arc<Moss>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> HandlerResult<delete_pushrule::v3::Request> {
    moss.delete_push_rule(&req.session()?.user_id, req.body.kind.clone(), &req.body.rule_id).await?;
    Ok(RumaResponse(delete_pushrule::v3::Response::new()))
}

pub async fn push_rule_enabled(
    moss: Arc<Moss>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> HandlerResult<get_pushrule_enabled::v3::Request> {
    let rules = moss.push_rules(&req.session()?.user_id).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(|| moss_core::Error::not_found("push rule not found"))?;
    Ok(RumaResponse(get_pushrule_enabled::v3::Response::new(rule.enabled())))
}

pub async fn set_push_rule_enabled(
    moss: Arc<Moss>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> HandlerResult<set_pushrule_enabled::v3::Request> {
    moss.set_push_rule_enabled(&req.session()?.user_id, req.body.kind.clone(), &req.body.rule_id, req.body.enabled)
        .await?;
    Ok(RumaResponse(set_pushrule_enabled::v3::Response::new()))
}

pub async fn push_rule_actions(
    moss: Arc<Moss>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> HandlerResult<get_pushrule_actions::v3::Request> {
    let rules = moss.push_rules(&req.session()?.user_id).await?;
    let rule = rules
        .get(req.body.kind.clone(), &req.body.rule_id)
        .ok_or_else(|| moss_core::Error::not_found("push rule not found"))?;
    Ok(RumaResponse(get_pushrule_actions::v3::Response::new(rule.actions().to_vec())))
}

pub async fn set_push_rule_actions(
    moss: Arc<Moss>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> HandlerResult<set_pushrule_actions::v3::Request> {
    moss.set_push_rule_actions(
        &req.session()?.user_id,
        req.body.kind.clone(),
        &req.body.rule_id,
        req.body.actions.clone(),
    )
    .await?;
    Ok(RumaResponse(set_pushrule_actions::v3::Response::new()))
}

pub async fn pushers(moss: Arc<Moss>, req: Ruma<get_pushers::v3::Request>) -> HandlerResult<get_pushers::v3::Request> {
    let list = moss.pushers(&req.session()?.user_id).await?;
    let pushers = list.into_iter().filter_map(|p| serde_json::from_value(p).ok()).collect();
    Ok(RumaResponse(get_pushers::v3::Response::new(pushers)))
}

pub async fn set_pusher(moss: Arc<Moss>, req: Ruma<set_pusher::v3::Request>) -> HandlerResult<set_pusher::v3::Request> {
    let body = req.json.clone().unwrap_or_default();
    let session = req.session()?;
    moss.set_pusher(&session.user_id, &session.device_id, body).await?;
    Ok(RumaResponse(set_pusher::v3::Response::new()))
}

// ---- typing, receipts, read markers ----

pub async fn typing(
    moss: Arc<Moss>,
    req: Ruma<create_typing_event::v3::Request>,
) -> HandlerResult<create_typing_event::v3::Request> {
    let s = req.session()?.clone();
    if req.body.user_id != s.user_id {
        return Err(ApiError::forbidden("you may only set your own typing state"));
    }
    let (typing, timeout) = match req.body.state {
        create_typing_event::v3::Typing::Yes(info) => (true, Some(info.timeout)),
        _ => (false, None),
    };
    moss.set_typing(&s.user_id, &req.body.room_id, typing, timeout.map(|t: Duration| t)).await?;
    Ok(RumaResponse(create_typing_event::v3::Response::new()))
}

pub async fn receipt(
    moss: Arc<Moss>,
    req: Ruma<create_receipt::v3::Request>,
) -> HandlerResult<create_receipt::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    let thread = match &b.thread {
        ReceiptThread::Unthreaded => None,
        ReceiptThread::Main => Some("main".to_owned()),
        ReceiptThread::Thread(id) => Some(id.to_string()),
        _ => None,
    };
    moss.set_receipt(&s.user_id, &b.room_id, b.receipt_type.as_ref(), &b.event_id, thread).await?;
    Ok(RumaResponse(create_receipt::v3::Response::new()))
}

pub async fn read_markers(
    moss: Arc<Moss>,
    req: Ruma<set_read_marker::v3::Request>,
) -> HandlerResult<set_read_marker::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    if let Some(ev) = &b.fully_read {
        moss.set_receipt(&s.user_id, &b.room_id, "m.fully_read", ev, None).await?;
    }
    if let Some(ev) = &b.read_receipt {
        moss.set_receipt(&s.user_id, &b.room_id, "m.read", ev, None).await?;
    }
    if let Some(ev) = &b.private_read_receipt {
        moss.set_receipt(&s.user_id, &b.room_id, "m.read.private", ev, None).await?;
    }
    Ok(RumaResponse(set_read_marker::v3::Response::new()))
}

pub async fn search_users(
    moss: Arc<Moss>,
    req: Ruma<search_users::v3::Request>,
) -> HandlerResult<search_users::v3::Request> {
    let (results, limited) =
        moss.search_users(&req.session()?.user_id, &req.body.search_term, u64::from(req.body.limit) as usize).await?;
    let results = results.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect();
    let res = search_users::v3::Response::new(results, limited);
    Ok(RumaResponse(res))
}

/// `GET /notifications` (plain JSON: the push actions are passed through as evaluated).
pub async fn notifications(
    moss: Arc<Moss>,
    req: Ruma<ruma::api::client::push::get_notifications::v3::Request>,
) -> Result<Json<Value>, ApiError> {
    let b = &req.body;
    let only_highlight = b.only.as_deref() == Some("highlight");
    Ok(Json(moss.notifications(&req.session()?.user_id, b.from.clone(), b.limit.map(u64::from), only_highlight).await?))
}
