//! End-to-end encryption endpoints: keys (upload, query, claim, changes, cross-signing,
//! signatures), send-to-device, and server-side key backup.

use std::{collections::BTreeMap, sync::Arc};

use axum::Json;
use moss_core::{
    e2ee::{backup::BackupSession, to_device::Target},
    Moss,
};
use ruma::{
    api::client::{
        backup::{
            add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session, create_backup_version,
            delete_backup_keys, delete_backup_keys_for_room, delete_backup_keys_for_session, delete_backup_version,
            get_backup_info, get_backup_keys, get_backup_keys_for_room, get_backup_keys_for_session,
            get_latest_backup_info, update_backup_version,
        },
        dehydrated_device::{delete_dehydrated_device, get_dehydrated_device, get_events, put_dehydrated_device},
        keys::{claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys},
        to_device::send_event_to_device,
    },
    serde::Raw,
    to_device::DeviceIdOrAllDevices,
    OneTimeKeyAlgorithm, UInt,
};
use serde_json::{json, Value};

use crate::{
    error::ApiError,
    ruma_wrapper::{HandlerResult, Ruma, RumaResponse},
};

fn value<T>(raw: &Raw<T>) -> Result<Value, ApiError> {
    serde_json::from_str(raw.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))
}

fn raw<T>(v: &Value) -> Result<Raw<T>, ApiError> {
    let json = serde_json::value::to_raw_value(v).map_err(|e| moss_core::Error::internal(e.to_string()))?;
    Ok(Raw::from_json(json))
}

fn uint(n: u64) -> UInt {
    UInt::new(n).unwrap_or(UInt::MAX)
}

// ---- keys ----

pub async fn upload_keys(
    moss: Arc<Moss>,
    req: Ruma<upload_keys::v3::Request>,
) -> HandlerResult<upload_keys::v3::Request> {
    let b = &req.body;
    let device_keys = b.device_keys.as_ref().map(value).transpose()?;
    let otks = b.one_time_keys.iter().map(|(k, v)| Ok((k.to_string(), value(v)?))).collect::<Result<_, ApiError>>()?;
    let fallback =
        b.fallback_keys.iter().map(|(k, v)| Ok((k.to_string(), value(v)?))).collect::<Result<_, ApiError>>()?;
    let counts = moss.upload_keys(req.session()?, device_keys, otks, fallback).await?;
    Ok(RumaResponse(upload_keys::v3::Response::new(
        counts.into_iter().map(|(alg, n)| (OneTimeKeyAlgorithm::from(alg.as_str()), uint(n))).collect(),
    )))
}

// keys/query and keys/claim answer in plain JSON: ruma's types leave out an empty `failures`,
// and Hydrogen (and older Element) crash without it; Synapse always sends it.

pub async fn query_keys(moss: Arc<Moss>, req: Ruma<get_keys::v3::Request>) -> Result<Json<Value>, ApiError> {
    let found = moss.query_keys(Some(&req.session()?.user_id), req.body.device_keys.clone()).await?;
    Ok(Json(json!({
        "failures": found.failures,
        "device_keys": found.device_keys,
        "master_keys": found.master_keys,
        "self_signing_keys": found.self_signing_keys,
        "user_signing_keys": found.user_signing_keys,
    })))
}

pub async fn claim_keys(moss: Arc<Moss>, req: Ruma<claim_keys::v3::Request>) -> Result<Json<Value>, ApiError> {
    let wanted = req
        .body
        .one_time_keys
        .iter()
        .map(|(u, devices)| (u.clone(), devices.iter().map(|(d, alg)| (d.clone(), alg.to_string())).collect()))
        .collect();
    let claimed = moss.claim_keys(wanted).await?;
    Ok(Json(json!({"failures": claimed.failures, "one_time_keys": claimed.one_time_keys})))
}

pub async fn key_changes(
    moss: Arc<Moss>,
    req: Ruma<get_key_changes::v3::Request>,
) -> HandlerResult<get_key_changes::v3::Request> {
    let (changed, left) = moss.key_changes(&req.session()?.user_id, &req.body.from, &req.body.to).await?;
    Ok(RumaResponse(get_key_changes::v3::Response::new(changed, left)))
}

pub async fn upload_signing_keys(
    moss: Arc<Moss>,
    req: Ruma<upload_signing_keys::v3::Request>,
) -> HandlerResult<upload_signing_keys::v3::Request> {
    let b = &req.body;
    moss.upload_signing_keys(
        req.session()?,
        b.auth.clone(),
        b.master_key.as_ref().map(value).transpose()?,
        b.self_signing_key.as_ref().map(value).transpose()?,
        b.user_signing_key.as_ref().map(value).transpose()?,
    )
    .await?;
    Ok(RumaResponse(upload_signing_keys::v3::Response::new()))
}

pub async fn upload_signatures(
    moss: Arc<Moss>,
    req: Ruma<upload_signatures::v3::Request>,
) -> HandlerResult<upload_signatures::v3::Request> {
    let mut signed = BTreeMap::new();
    for (user, keys) in &req.body.signed_keys {
        let mut per_user = BTreeMap::new();
        for (key_id, obj) in keys.iter() {
            let obj: Value = serde_json::from_str(obj.get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
            per_user.insert(key_id.to_owned(), obj);
        }
        signed.insert(user.clone(), per_user);
    }
    let failures = moss.upload_signatures(req.session()?, signed).await?;
    let mut res = upload_signatures::v3::Response::new();
    for (user, keys) in failures {
        let mut per_user = BTreeMap::new();
        for (key_id, failure) in keys {
            let failure = serde_json::from_value(failure).map_err(|e| moss_core::Error::internal(e.to_string()))?;
            per_user.insert(key_id, failure);
        }
        res.failures.insert(user, per_user);
    }
    Ok(RumaResponse(res))
}

// ---- send-to-device ----

pub async fn send_to_device(
    moss: Arc<Moss>,
    req: Ruma<send_event_to_device::v3::Request>,
) -> HandlerResult<send_event_to_device::v3::Request> {
    let mut messages = BTreeMap::new();
    for (user, targets) in &req.body.messages {
        let mut per_user = BTreeMap::new();
        for (target, content) in targets {
            let target = match target {
                DeviceIdOrAllDevices::AllDevices => Target::AllDevices,
                DeviceIdOrAllDevices::DeviceId(d) => Target::Device(d.to_string()),
            };
            per_user.insert(target, value(content)?);
        }
        messages.insert(user.clone(), per_user);
    }
    moss.send_to_device(req.session()?, &req.body.event_type.to_string(), req.body.txn_id.as_str(), messages).await?;
    Ok(RumaResponse(send_event_to_device::v3::Response::new()))
}

// ---- key backup ----

pub async fn create_backup(
    moss: Arc<Moss>,
    req: Ruma<create_backup_version::v3::Request>,
) -> HandlerResult<create_backup_version::v3::Request> {
    let version = moss.create_backup_version(&req.session()?.user_id, value(&req.body.algorithm)?).await?;
    Ok(RumaResponse(create_backup_version::v3::Response::new(version)))
}

pub async fn latest_backup(
    moss: Arc<Moss>,
    req: Ruma<get_latest_backup_info::v3::Request>,
) -> HandlerResult<get_latest_backup_info::v3::Request> {
    let info = moss.backup_info(&req.session()?.user_id, None).await?;
    Ok(RumaResponse(get_latest_backup_info::v3::Response::new(
        raw(&info.algorithm)?,
        uint(info.count),
        info.etag,
        info.version,
    )))
}

pub async fn backup(
    moss: Arc<Moss>,
    req: Ruma<get_backup_info::v3::Request>,
) -> HandlerResult<get_backup_info::v3::Request> {
    let info = moss.backup_info(&req.session()?.user_id, Some(&req.body.version)).await?;
    Ok(RumaResponse(get_backup_info::v3::Response::new(
        raw(&info.algorithm)?,
        uint(info.count),
        info.etag,
        info.version,
    )))
}

pub async fn update_backup(
    moss: Arc<Moss>,
    req: Ruma<update_backup_version::v3::Request>,
) -> HandlerResult<update_backup_version::v3::Request> {
    moss.update_backup_version(&req.session()?.user_id, &req.body.version, value(&req.body.algorithm)?).await?;
    Ok(RumaResponse(update_backup_version::v3::Response::new()))
}

pub async fn delete_backup(
    moss: Arc<Moss>,
    req: Ruma<delete_backup_version::v3::Request>,
) -> HandlerResult<delete_backup_version::v3::Request> {
    moss.delete_backup_version(&req.session()?.user_id, &req.body.version).await?;
    Ok(RumaResponse(delete_backup_version::v3::Response::new()))
}

fn sessions<'a, T: 'a>(
    room: &str,
    list: impl IntoIterator<Item = (&'a String, &'a Raw<T>)>,
) -> Result<Vec<BackupSession>, ApiError> {
    list.into_iter()
        .map(|(id, data)| Ok(BackupSession { room_id: room.to_owned(), session_id: id.clone(), data: value(data)? }))
        .collect()
}

pub async fn put_backup_keys(
    moss: Arc<Moss>,
    req: Ruma<add_backup_keys::v3::Request>,
) -> HandlerResult<add_backup_keys::v3::Request> {
    let mut all = Vec::new();
    for (room, backup) in &req.body.rooms {
        all.extend(sessions(room.as_str(), &backup.sessions)?);
    }
    let (etag, count) = moss.put_backup_keys(&req.session()?.user_id, &req.body.version, all).await?;
    Ok(RumaResponse(add_backup_keys::v3::Response::new(etag, uint(count))))
}

pub async fn put_backup_room_keys(
    moss: Arc<Moss>,
    req: Ruma<add_backup_keys_for_room::v3::Request>,
) -> HandlerResult<add_backup_keys_for_room::v3::Request> {
    let all = sessions(req.body.room_id.as_str(), &req.body.sessions)?;
    let (etag, count) = moss.put_backup_keys(&req.session()?.user_id, &req.body.version, all).await?;
    Ok(RumaResponse(add_backup_keys_for_room::v3::Response::new(etag, uint(count))))
}

pub async fn put_backup_session_key(
    moss: Arc<Moss>,
    req: Ruma<add_backup_keys_for_session::v3::Request>,
) -> HandlerResult<add_backup_keys_for_session::v3::Request> {
    let b = &req.body;
    let all = vec![BackupSession {
        room_id: b.room_id.to_string(),
        session_id: b.session_id.clone(),
        data: value(&b.session_data)?,
    }];
    let (etag, count) = moss.put_backup_keys(&req.session()?.user_id, &b.version, all).await?;
    Ok(RumaResponse(add_backup_keys_for_session::v3::Response::new(etag, uint(count))))
}

pub async fn get_backup_keys(
    moss: Arc<Moss>,
    req: Ruma<get_backup_keys::v3::Request>,
) -> HandlerResult<get_backup_keys::v3::Request> {
    let rows = moss.backup_keys(&req.session()?.user_id, &req.body.version, None, None).await?;
    let mut rooms = BTreeMap::new();
    for (room, sessions) in moss_core::e2ee::backup::group_by_room(&rows)? {
        let Ok(room) = ruma::OwnedRoomId::try_from(room) else { continue };
        let sessions = sessions.iter().map(|(id, d)| Ok((id.clone(), raw(d)?))).collect::<Result<_, ApiError>>()?;
        rooms.insert(room, ruma::api::client::backup::RoomKeyBackup::new(sessions));
    }
    Ok(RumaResponse(get_backup_keys::v3::Response::new(rooms)))
}

pub async fn get_backup_room_keys(
    moss: Arc<Moss>,
    req: Ruma<get_backup_keys_for_room::v3::Request>,
) -> HandlerResult<get_backup_keys_for_room::v3::Request> {
    let room = req.body.room_id.to_string();
    let rows = moss.backup_keys(&req.session()?.user_id, &req.body.version, Some(room), None).await?;
    let sessions = rows
        .iter()
        .map(|r| Ok((r.session_id.clone(), raw(&moss_core::e2ee::backup::session_json(r)?)?)))
        .collect::<Result<_, ApiError>>()?;
    Ok(RumaResponse(get_backup_keys_for_room::v3::Response::new(sessions)))
}

pub async fn get_backup_session_key(
    moss: Arc<Moss>,
    req: Ruma<get_backup_keys_for_session::v3::Request>,
) -> HandlerResult<get_backup_keys_for_session::v3::Request> {
    let b = &req.body;
    let rows = moss
        .backup_keys(&req.session()?.user_id, &b.version, Some(b.room_id.to_string()), Some(b.session_id.clone()))
        .await?;
    let row = rows.first().ok_or_else(|| moss_core::Error::not_found("no such session in the backup"))?;
    Ok(RumaResponse(get_backup_keys_for_session::v3::Response::new(raw(&moss_core::e2ee::backup::session_json(row)?)?)))
}

pub async fn delete_backup_keys(
    moss: Arc<Moss>,
    req: Ruma<delete_backup_keys::v3::Request>,
) -> HandlerResult<delete_backup_keys::v3::Request> {
    let (etag, count) = moss.delete_backup_keys(&req.session()?.user_id, &req.body.version, None, None).await?;
    Ok(RumaResponse(delete_backup_keys::v3::Response::new(etag, uint(count))))
}

pub async fn delete_backup_room_keys(
    moss: Arc<Moss>,
    req: Ruma<delete_backup_keys_for_room::v3::Request>,
) -> HandlerResult<delete_backup_keys_for_room::v3::Request> {
    let room = Some(req.body.room_id.to_string());
    let (etag, count) = moss.delete_backup_keys(&req.session()?.user_id, &req.body.version, room, None).await?;
    Ok(RumaResponse(delete_backup_keys_for_room::v3::Response::new(etag, uint(count))))
}

pub async fn delete_backup_session_key(
    moss: Arc<Moss>,
    req: Ruma<delete_backup_keys_for_session::v3::Request>,
) -> HandlerResult<delete_backup_keys_for_session::v3::Request> {
    let b = &req.body;
    let (etag, count) = moss
        .delete_backup_keys(
            &req.session()?.user_id,
            &b.version,
            Some(b.room_id.to_string()),
            Some(b.session_id.clone()),
        )
        .await?;
    Ok(RumaResponse(delete_backup_keys_for_session::v3::Response::new(etag, uint(count))))
}

// ---- dehydrated devices (MSC3814) ----

pub async fn put_dehydrated_device(
    moss: Arc<Moss>,
    req: Ruma<put_dehydrated_device::unstable::Request>,
) -> HandlerResult<put_dehydrated_device::unstable::Request> {
    let b = &req.body;
    let otks = b.one_time_keys.iter().map(|(k, v)| Ok((k.to_string(), value(v)?))).collect::<Result<_, ApiError>>()?;
    let fallback =
        b.fallback_keys.iter().map(|(k, v)| Ok((k.to_string(), value(v)?))).collect::<Result<_, ApiError>>()?;
    moss.put_dehydrated_device(
        &req.session()?.user_id,
        b.device_id.clone(),
        b.initial_device_display_name.clone(),
        value(&b.device_data)?,
        value(&b.device_keys)?,
        otks,
        fallback,
    )
    .await?;
    Ok(RumaResponse(put_dehydrated_device::unstable::Response::new(b.device_id.clone())))
}

pub async fn get_dehydrated_device(
    moss: Arc<Moss>,
    req: Ruma<get_dehydrated_device::unstable::Request>,
) -> HandlerResult<get_dehydrated_device::unstable::Request> {
    let (id, data) = moss.get_dehydrated_device(&req.session()?.user_id).await?;
    Ok(RumaResponse(get_dehydrated_device::unstable::Response::new(id.into(), raw(&data)?)))
}

pub async fn delete_dehydrated_device(
    moss: Arc<Moss>,
    req: Ruma<delete_dehydrated_device::unstable::Request>,
) -> HandlerResult<delete_dehydrated_device::unstable::Request> {
    let id = moss.delete_dehydrated_device(&req.session()?.user_id).await?;
    Ok(RumaResponse(delete_dehydrated_device::unstable::Response::new(id.into())))
}

pub async fn dehydrated_device_events(
    moss: Arc<Moss>,
    req: Ruma<get_events::unstable::Request>,
) -> Result<Json<Value>, ApiError> {
    let b = &req.body;
    let (events, next) =
        moss.dehydrated_device_events(&req.session()?.user_id, b.device_id.as_str(), b.next_batch.clone()).await?;
    Ok(Json(json!({"events": events, "next_batch": next})))
}
