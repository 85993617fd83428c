//! Rooms: creation, sending, state, redaction, history and membership.

use std::sync::Arc;

use moss_core::{
    rooms::create::{CreateRoom, Preset},
    Moss,
};
use ruma::{
    api::{
        client::{
            context::get_context,
            knock::knock_room,
            membership::{
                ban_user, forget_room, get_member_events, invite_user, join_room_by_id, join_room_by_id_or_alias,
                joined_members, joined_rooms, kick_user, leave_room, unban_user,
            },
            message::{get_message_events, send_message_event},
            redact::redact_event,
            room::{create_room, get_event_by_timestamp, get_room_event, upgrade_room},
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
        Direction,
    },
    events::TimelineEventType,
    serde::Raw,
    MilliSecondsSinceUnixEpoch, RoomOrAliasId,
};
use serde_json::Value;

use crate::{
    error::ApiError,
    rate_limit::{self, Class},
    ruma_wrapper::{HandlerResult, Ruma, RumaResponse},
};

fn raw<T>(v: &Value) -> Result<Raw<T>, ApiError> {
    Raw::new(v).map(|r| r.cast_unchecked()).map_err(|e| ApiError::from(moss_core::Error::internal(e.to_string())))
}

fn raws<T>(v: &[Value]) -> Result<Vec<Raw<T>>, ApiError> {
    v.iter().map(raw).collect()
}

pub(crate) fn dir(d: Direction) -> moss_core::Direction {
    match d {
        Direction::Forward => moss_core::Direction::Forward,
        Direction::Backward => moss_core::Direction::Backward,
    }
}

pub async fn create(moss: Arc<Moss>, req: Ruma<create_room::v3::Request>) -> HandlerResult<create_room::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    let json = req.json.unwrap_or_default();
    let preset = b.preset.map(|p| match p {
        create_room::v3::RoomPreset::PublicChat => Ok(Preset::PublicChat),
        create_room::v3::RoomPreset::TrustedPrivateChat => Ok(Preset::TrustedPrivateChat),
        create_room::v3::RoomPreset::PrivateChat => Ok(Preset::PrivateChat),
        _ => Err(ApiError::bad_json("unknown preset")),
    });
    let preset = preset.transpose()?;
    let mut initial_state = Vec::new();
    for ev in json["initial_state"].as_array().cloned().unwrap_or_default() {
        let kind = ev["type"].as_str().ok_or_else(|| ApiError::bad_json("initial_state events need a type"))?;
        if !ev["content"].is_object() {
            return Err(ApiError::bad_json("initial_state events need a content object"));
        }
        initial_state.push((
            kind.to_owned(),
            ev["state_key"].as_str().unwrap_or_default().to_owned(),
            ev["content"].clone(),
        ));
    }
    let obj = |k: &str| json[k].as_object().cloned();
    let room_id = moss
        .create_room(
            &s.user_id,
            CreateRoom {
                preset,
                public: matches!(b.visibility, ruma::api::client::room::Visibility::Public),
                name: b.name,
                topic: b.topic,
                alias_localpart: b.room_alias_name,
                invite: b.invite,
                is_direct: b.is_direct,
                room_version: b.room_version,
                creation_content: obj("creation_content"),
                initial_state,
                power_level_override: obj("power_level_content_override"),
            },
        )
        .await?;
    Ok(RumaResponse(create_room::v3::Response::new(room_id)))
}

pub async fn send_message(
    moss: Arc<Moss>,
    req: Ruma<send_message_event::v3::Request>,
) -> HandlerResult<send_message_event::v3::Request> {
    let s = req.session()?.clone();
    rate_limit::check_session(&moss, Class::Message, &s)?;
    let content: Value =
        serde_json::from_str(req.body.body.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let kind = TimelineEventType::from(req.body.event_type.to_string());
    // Timestamp massaging is for application services; others' `ts` is ignored, as Synapse does.
    let ts = req.body.timestamp.filter(|_| s.appservice.is_some()).map(|t| u64::from(t.get()));
    let id = moss
        .send_message(&s.user_id, s.device_id.as_str(), &req.body.room_id, kind, req.body.txn_id.as_str(), content, ts)
        .await?;
    Ok(RumaResponse(send_message_event::v3::Response::new(id)))
}

pub async fn send_state(
    moss: Arc<Moss>,
    req: Ruma<send_state_event::v3::Request>,
) -> HandlerResult<send_state_event::v3::Request> {
    let s = req.session()?.clone();
    let content: Value =
        serde_json::from_str(req.body.body.json().get()).map_err(|e| ApiError::bad_json(e.to_string()))?;
    let kind = TimelineEventType::from(req.body.event_type.to_string());
    let ts = req.body.timestamp.filter(|_| s.appservice.is_some()).map(|t| u64::from(t.get()));
    let id = moss.send_state(&s.user_id, &req.body.room_id, kind, &req.body.state_key, content, ts).await?;
    Ok(RumaResponse(send_state_event::v3::Response::new(id)))
}

pub async fn redact(moss: Arc<Moss>, req: Ruma<redact_event::v3::Request>) -> HandlerResult<redact_event::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    let id =
        moss.redact(&s.user_id, s.device_id.as_str(), &b.room_id, &b.event_id, b.txn_id.as_str(), b.reason).await?;
    Ok(RumaResponse(redact_event::v3::Response::new(id)))
}

pub async fn get_event(
    moss: Arc<Moss>,
    req: Ruma<get_room_event::v3::Request>,
) -> HandlerResult<get_room_event::v3::Request> {
    let s = req.session()?.clone();
    let ev = moss.get_event(&s.user_id, s.device_id.as_str(), &req.body.room_id, &req.body.event_id).await?;
    Ok(RumaResponse(get_room_event::v3::Response::new(raw(&ev)?)))
}

pub async fn state(
    moss: Arc<Moss>,
    req: Ruma<get_state_events::v3::Request>,
) -> HandlerResult<get_state_events::v3::Request> {
    let s = req.session()?.clone();
    let evs = moss.room_state(&s.user_id, &req.body.room_id).await?;
    Ok(RumaResponse(get_state_events::v3::Response::new(raws(&evs)?)))
}

pub async fn state_event(
    moss: Arc<Moss>,
    req: Ruma<get_state_event_for_key::v3::Request>,
) -> HandlerResult<get_state_event_for_key::v3::Request> {
    let s = req.session()?.clone();
    let b = &req.body;
    let ev = moss.state_event(&s.user_id, &b.room_id, &b.event_type.to_string(), &b.state_key).await?;
    let full = req.json.is_none() && b.format == get_state_event_for_key::v3::StateEventFormat::Event;
    let value = if full { ev } else { ev["content"].clone() };
    let raw_value = serde_json::value::to_raw_value(&value)
        .map_err(|e| ApiError::from(moss_core::Error::internal(e.to_string())))?;
    Ok(RumaResponse(get_state_event_for_key::v3::Response::new(raw_value)))
}

pub async fn messages(
    moss: Arc<Moss>,
    req: Ruma<get_message_events::v3::Request>,
) -> HandlerResult<get_message_events::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    let page = moss
        .messages(
            &s.user_id,
            s.device_id.as_str(),
            &b.room_id,
            b.from,
            b.to,
            dir(b.dir),
            u64::from(b.limit) as usize,
            b.filter,
        )
        .await?;
    let mut res = get_message_events::v3::Response::new();
    res.start = page.start;
    res.end = page.end;
    res.chunk = raws(&page.chunk)?;
    res.state = raws(&page.state)?;
    Ok(RumaResponse(res))
}

pub async fn context(moss: Arc<Moss>, req: Ruma<get_context::v3::Request>) -> HandlerResult<get_context::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    let c = moss
        .context(&s.user_id, s.device_id.as_str(), &b.room_id, &b.event_id, u64::from(b.limit) as usize, b.filter)
        .await?;
    let mut res = get_context::v3::Response::new();
    res.start = Some(c.start);
    res.end = Some(c.end);
    res.event = Some(raw(&c.event)?);
    res.events_before = raws(&c.events_before)?;
    res.events_after = raws(&c.events_after)?;
    res.state = raws(&c.state)?;
    Ok(RumaResponse(res))
}

pub async fn timestamp_to_event(
    moss: Arc<Moss>,
    req: Ruma<get_event_by_timestamp::v1::Request>,
) -> HandlerResult<get_event_by_timestamp::v1::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    let (id, ts) = moss.timestamp_to_event_anywhere(&s.user_id, &b.room_id, u64::from(b.ts.get()), dir(b.dir)).await?;
    let id = ruma::EventId::parse(id).map_err(|e| ApiError::from(moss_core::Error::internal(e.to_string())))?;
    let ts = MilliSecondsSinceUnixEpoch(ruma::UInt::new(ts).unwrap_or_default());
    Ok(RumaResponse(get_event_by_timestamp::v1::Response::new(id, ts)))
}

// ---- membership ----

pub async fn join_by_id(
    moss: Arc<Moss>,
    req: Ruma<join_room_by_id::v3::Request>,
) -> HandlerResult<join_room_by_id::v3::Request> {
    let s = req.session()?.clone();
    rate_limit::check_session(&moss, Class::Join, &s)?;
    let target: &RoomOrAliasId = <&RoomOrAliasId>::from(&*req.body.room_id);
    let room_id = moss.join_room(&s.user_id, target, req.body.reason, vec![]).await?;
    Ok(RumaResponse(join_room_by_id::v3::Response::new(room_id)))
}

pub async fn join(
    moss: Arc<Moss>,
    req: Ruma<join_room_by_id_or_alias::v3::Request>,
) -> HandlerResult<join_room_by_id_or_alias::v3::Request> {
    let s = req.session()?.clone();
    rate_limit::check_session(&moss, Class::Join, &s)?;
    let room_id = moss.join_room(&s.user_id, &req.body.room_id_or_alias, req.body.reason, req.body.via).await?;
    Ok(RumaResponse(join_room_by_id_or_alias::v3::Response::new(room_id)))
}

pub async fn knock(moss: Arc<Moss>, req: Ruma<knock_room::v3::Request>) -> HandlerResult<knock_room::v3::Request> {
    let s = req.session()?.clone();
    rate_limit::check_session(&moss, Class::Join, &s)?;
    let room_id =
        moss.knock(&s.user_id, &req.body.room_id_or_alias, req.body.reason.clone(), req.body.via.clone()).await?;
    Ok(RumaResponse(knock_room::v3::Response::new(room_id)))
}

pub async fn invite(moss: Arc<Moss>, req: Ruma<invite_user::v3::Request>) -> HandlerResult<invite_user::v3::Request> {
    let s = req.session()?.clone();
    let invite_user::v3::InvitationRecipient::UserId(target) = &req.body.recipient else {
        return Err(ApiError::forbidden("third-party invites are not supported"));
    };
    moss.invite(&s.user_id, &req.body.room_id, &target.user_id, target.reason.clone()).await?;
    Ok(RumaResponse(invite_user::v3::Response::new()))
}

pub async fn leave(moss: Arc<Moss>, req: Ruma<leave_room::v3::Request>) -> HandlerResult<leave_room::v3::Request> {
    let s = req.session()?.clone();
    moss.leave_room(&s.user_id, &req.body.room_id, req.body.reason).await?;
    Ok(RumaResponse(leave_room::v3::Response::new()))
}

pub async fn forget(moss: Arc<Moss>, req: Ruma<forget_room::v3::Request>) -> HandlerResult<forget_room::v3::Request> {
    let s = req.session()?.clone();
    moss.forget_room(&s.user_id, &req.body.room_id).await?;
    Ok(RumaResponse(forget_room::v3::Response::new()))
}

pub async fn kick(moss: Arc<Moss>, req: Ruma<kick_user::v3::Request>) -> HandlerResult<kick_user::v3::Request> {
    let s = req.session()?.clone();
    moss.kick(&s.user_id, &req.body.room_id, &req.body.user_id, req.body.reason).await?;
    Ok(RumaResponse(kick_user::v3::Response::new()))
}

pub async fn ban(moss: Arc<Moss>, req: Ruma<ban_user::v3::Request>) -> HandlerResult<ban_user::v3::Request> {
    let s = req.session()?.clone();
    moss.ban(&s.user_id, &req.body.room_id, &req.body.user_id, req.body.reason).await?;
    Ok(RumaResponse(ban_user::v3::Response::new()))
}

pub async fn unban(moss: Arc<Moss>, req: Ruma<unban_user::v3::Request>) -> HandlerResult<unban_user::v3::Request> {
    let s = req.session()?.clone();
    moss.unban(&s.user_id, &req.body.room_id, &req.body.user_id, req.body.reason).await?;
    Ok(RumaResponse(unban_user::v3::Response::new()))
}

pub async fn joined_rooms(
    moss: Arc<Moss>,
    req: Ruma<joined_rooms::v3::Request>,
) -> HandlerResult<joined_rooms::v3::Request> {
    let rooms = moss.joined_rooms(&req.session()?.user_id).await?;
    Ok(RumaResponse(joined_rooms::v3::Response::new(rooms)))
}

pub async fn members(
    moss: Arc<Moss>,
    req: Ruma<get_member_events::v3::Request>,
) -> HandlerResult<get_member_events::v3::Request> {
    let s = req.session()?.clone();
    let b = req.body;
    let evs = moss
        .members(
            &s.user_id,
            &b.room_id,
            b.at,
            b.membership.map(|m| m.to_string()),
            b.not_membership.map(|m| m.to_string()),
        )
        .await?;
    Ok(RumaResponse(get_member_events::v3::Response::new(raws(&evs)?)))
}

pub async fn joined_members(
    moss: Arc<Moss>,
    req: Ruma<joined_members::v3::Request>,
) -> HandlerResult<joined_members::v3::Request> {
    let s = req.session()?.clone();
    let list = moss.joined_members(&s.user_id, &req.body.room_id).await?;
    let mut joined = std::collections::BTreeMap::new();
    for (user, name, avatar) in list {
        let Ok(user) = ruma::UserId::parse(user) else {
            continue;
        };
        let mut m = joined_members::v3::RoomMember::new();
        m.display_name = name;
        m.avatar_url = avatar.map(Into::into);
        joined.insert(user, m);
    }
    Ok(RumaResponse(joined_members::v3::Response::new(joined)))
}

pub async fn upgrade(
    moss: Arc<Moss>,
    req: Ruma<upgrade_room::v3::Request>,
) -> HandlerResult<upgrade_room::v3::Request> {
    let s = req.session()?.clone();
    if !moss_core::rooms::SUPPORTED_VERSIONS.contains(&req.body.new_version) {
        return Err(moss_core::Error::new(
            ruma::api::error::ErrorKind::UnsupportedRoomVersion,
            400,
            format!("room version {} is not supported", req.body.new_version),
        )
        .into());
    }
    let new_room = moss.upgrade_room(&s.user_id, &req.body.room_id, req.body.new_version.clone()).await?;
    Ok(RumaResponse(upgrade_room::v3::Response::new(new_room)))
}
