//! Rooms: creating them, sending events, membership, reading state and history.

pub mod create;
pub mod directory;
pub mod external;
pub mod hierarchy;
pub mod membership;
pub mod pdu;
pub mod read;
pub mod relations;
pub mod report;
pub mod search;
pub mod timeline;
pub mod upgrade;
pub mod visibility;

use moss_storage::{Reader, RoomRow};
use ruma::{
    events::{
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent},
        TimelineEventType,
    },
    room_version_rules::RoomVersionRules,
    state_res::events::RoomCreateEvent,
    OwnedEventId, OwnedUserId, RoomId, RoomVersionId, UserId,
};
use serde_json::Value;

use self::{
    pdu::Pdu,
    timeline::{append, current_state_pdu, rules_for, Appended, NewPdu},
};
use crate::{
    error::{Error, Result},
    now_ms, Moss,
};

/// The state an invitee or knocker sees of a room they are not in (the spec's recommendation).
pub(crate) const STRIPPED_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.canonical_alias",
    "m.room.encryption",
    "m.room.topic",
];

/// Whether a user of `server` is joined to the room (so `server` holds its state and can send).
pub(crate) fn is_resident(r: &Reader<'_>, room: &str, server: &ruma::ServerName) -> Result<bool> {
    Ok(r.room(room)?.is_some()
        && r.room_members(room)?
            .iter()
            .any(|m| m.membership == "join" && UserId::parse(&m.user_id).is_ok_and(|u| u.server_name() == server)))
}

/// Room versions this server creates and joins; the first is the default.
pub const SUPPORTED_VERSIONS: &[RoomVersionId] = &[RoomVersionId::V12, RoomVersionId::V11, RoomVersionId::V10];
pub const DEFAULT_VERSION: RoomVersionId = RoomVersionId::V12;

/// One of [`SUPPORTED_VERSIONS`] by its name.
pub fn room_version(name: &str) -> Option<RoomVersionId> {
    SUPPORTED_VERSIONS.iter().find(|v| v.as_str() == name).cloned()
}

impl Moss {
    /// The version of new rooms (`default_room_version`).
    pub fn default_room_version(&self) -> RoomVersionId {
        room_version(&self.config.default_room_version).unwrap_or(DEFAULT_VERSION)
    }
}

/// The room row plus its version's rules.
pub struct RoomInfo {
    pub row: RoomRow,
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
}

pub fn room_info(r: &Reader<'_>, room_id: &str) -> Result<Option<RoomInfo>> {
    let Some(row) = r.room(room_id)? else {
        return Ok(None);
    };
    let version = RoomVersionId::try_from(row.room_version.as_str()).map_err(|e| Error::internal(e.to_string()))?;
    let rules = rules_for(&version)?;
    Ok(Some(RoomInfo { row, version, rules }))
}

/// The room's power levels as the auth rules see them (creators included for room v12).
pub fn power_levels(r: &Reader<'_>, room_id: &str, rules: &RoomVersionRules) -> Result<RoomPowerLevels> {
    let creators: Vec<OwnedUserId> = match current_state_pdu(r, room_id, "m.room.create", "")? {
        Some(create) => {
            RoomCreateEvent::new(create).creators(&rules.authorization).map_err(Error::internal)?.into_iter().collect()
        }
        None => vec![],
    };
    let content = match current_state_pdu(r, room_id, "m.room.power_levels", "")? {
        Some(pl) => Some(
            serde_json::from_str::<RoomPowerLevelsEventContent>(pl.content.get())
                .map_err(|e| Error::internal(format!("power levels: {e}")))?,
        ),
        None => None,
    };
    Ok(RoomPowerLevels::new(content.into(), &rules.authorization, creators))
}

/// Current membership of a user in a room, as a string (`join`, `invite`, `leave`, `ban`, `knock`).
pub fn membership_of(r: &Reader<'_>, room_id: &str, user_id: &str) -> Result<Option<String>> {
    Ok(r.membership(room_id, user_id)?.map(|m| m.membership))
}

impl Moss {
    /// Appends an event in its own transaction and wakes the room's members.
    pub(crate) async fn append_event(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        new: NewPdu,
        txn: Option<(String, String, String)>,
    ) -> Result<Appended> {
        let signer = self.signer.clone();
        let (room, sender) = (room_id.to_owned(), sender.to_owned());
        let federates = self.federation.is_some();
        let (appended, notify, dests) = self
            .db
            .write(move |w| {
                let info = room_info(w, room.as_str())?.ok_or_else(|| Error::not_found("unknown room"))?;
                if let Some((u, d, t)) = &txn {
                    if let Some(id) = w.event_by_txn(u, d, t)? {
                        let row = w.event(&id)?.ok_or_else(|| Error::internal("transaction event vanished"))?;
                        let pdu = Pdu::from_stored(&row.event_id, &row.pdu)?;
                        return Ok((Appended { pdu, room_id: room.clone(), stream: row.stream }, vec![], vec![]));
                    }
                }
                // Every server with a member in the room, before this event (a kick or ban must
                // still reach the server of the user it removes) and the target's if remote.
                let mut dests = Vec::new();
                if federates {
                    dests = crate::federation::rooms::remote_servers(w, room.as_str(), &signer.server_name)?;
                    if let (TimelineEventType::RoomMember, Some(Ok(target))) =
                        (&new.kind, new.state_key.as_deref().map(UserId::parse))
                    {
                        let s = target.server_name().to_string();
                        if target.server_name() != signer.server_name && !dests.contains(&s) {
                            dests.push(s);
                        }
                    }
                }
                let txn_ref = txn.as_ref().map(|(u, d, t)| (u.as_str(), d.as_str(), t.as_str()));
                let appended = append(w, &signer, &info.version, Some(&room), &sender, new, txn_ref, now_ms())?;
                crate::federation::sender::queue_pdu(
                    w,
                    dests.iter().map(String::as_str),
                    appended.pdu.event_id.as_str(),
                )?;
                let notify = interested_users(w, &appended)?;
                Ok::<_, Error>((appended, notify, dests))
            })
            .await?;
        self.wake_destinations(dests.iter().map(String::as_str));
        self.events_stored();
        self.notifier.notify(notify.iter().map(|u| u.as_ref()));
        Ok(appended)
    }

    /// New room events were stored: the push evaluator and the application-service senders look.
    pub(crate) fn events_stored(&self) {
        self.push.wake_evaluator();
        self.appservices.wake.send_modify(|n| *n += 1);
    }

    /// A room event from another server was stored: wakes the push evaluator and the
    /// application services, and the long-polls of everyone it concerns, as for a local event:
    /// joined and invited members, and the user a membership event is about (a kicked, banned
    /// or uninvited local user is no longer joined, and must still hear of it at once).
    pub(crate) async fn notify_appended(&self, a: &Appended) {
        self.events_stored();
        let a = a.clone();
        let users = self.db.read(move |r| interested_users(r, &a)).await.unwrap_or_default();
        self.notifier.notify(users.iter().map(|u| u.as_ref()));
    }

    /// Wakes the room's joined members' long-polls (and the push evaluator: new events may
    /// have been stored).
    pub(crate) async fn notify_room(&self, room_id: &RoomId) {
        self.events_stored();
        let room = room_id.to_string();
        let users = self
            .db
            .read(move |r| {
                Ok::<_, Error>(
                    r.room_members(&room)?
                        .into_iter()
                        .filter(|m| m.membership == "join")
                        .filter_map(|m| UserId::parse(m.user_id).ok())
                        .collect::<Vec<_>>(),
                )
            })
            .await
            .unwrap_or_default();
        self.notifier.notify(users.iter().map(|u| u.as_ref()));
    }

    /// Sends a message-like event; idempotent per (device, transaction id). `ts` is an
    /// application service's chosen timestamp (the caller checks who may).
    #[allow(clippy::too_many_arguments)]
    pub async fn send_message(
        &self,
        sender: &UserId,
        device_id: &str,
        room_id: &RoomId,
        kind: TimelineEventType,
        txn_id: &str,
        content: Value,
        ts: Option<u64>,
    ) -> Result<OwnedEventId> {
        if kind == TimelineEventType::RoomRedaction {
            return Err(Error::forbidden("use the /redact endpoint to redact events"));
        }
        let shadow_banned = self.check_sender(sender).await?;
        self.require_joined(sender, room_id).await?;
        if shadow_banned {
            return Ok(fake_event_id());
        }
        self.note_user_action(sender).await;
        let txn = Some((sender.to_string(), device_id.to_owned(), txn_id.to_owned()));
        let new = NewPdu { ts, ..NewPdu::message(kind, content) };
        Ok(self.append_event(room_id, sender, new, txn).await?.pdu.event_id)
    }

    /// Sets a state event. Membership changes must go through the membership endpoints.
    pub async fn send_state(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        kind: TimelineEventType,
        state_key: &str,
        content: Value,
        ts: Option<u64>,
    ) -> Result<OwnedEventId> {
        match kind {
            TimelineEventType::RoomMember if state_key != sender.as_str() => {
                return Err(Error::forbidden("use the membership endpoints to change other users' membership"));
            }
            TimelineEventType::RoomCreate => return Err(Error::forbidden("m.room.create cannot be changed")),
            TimelineEventType::RoomCanonicalAlias => self.check_canonical_alias(room_id, &content).await?,
            _ => {}
        }
        let shadow_banned = self.check_sender(sender).await?;
        self.require_joined(sender, room_id).await?;
        if shadow_banned {
            return Ok(fake_event_id());
        }
        self.note_user_action(sender).await;
        let new = NewPdu { ts, ..NewPdu::state(kind, state_key, content) };
        Ok(self.append_event(room_id, sender, new, None).await?.pdu.event_id)
    }

    /// Redacts an event the sender wrote, or any event if they hold the redact power level.
    pub async fn redact(
        &self,
        sender: &UserId,
        device_id: &str,
        room_id: &RoomId,
        event_id: &ruma::EventId,
        txn_id: &str,
        reason: Option<String>,
    ) -> Result<OwnedEventId> {
        self.require_joined(sender, room_id).await?;
        let (room, target, user) = (room_id.to_string(), event_id.to_string(), sender.to_owned());
        self.db
            .read(move |r| {
                let info = room_info(r, &room)?.ok_or_else(|| Error::not_found("unknown room"))?;
                let row =
                    r.event(&target)?.filter(|e| e.room_id == room).ok_or_else(|| Error::not_found("unknown event"))?;
                let pl = power_levels(r, &room, &info.rules)?;
                let own = row.sender == user.as_str();
                let allowed =
                    if own { pl.user_can_redact_own_event(&user) } else { pl.user_can_redact_event_of_other(&user) };
                if !allowed {
                    return Err(Error::forbidden("you may not redact this event"));
                }
                Ok(())
            })
            .await?;
        let mut content = serde_json::json!({});
        if let Some(reason) = reason {
            content["reason"] = Value::String(reason);
        }
        let new = NewPdu {
            kind: TimelineEventType::RoomRedaction,
            content,
            state_key: None,
            redacts: Some(event_id.to_owned()),
            ts: None,
        };
        let txn = Some((sender.to_string(), device_id.to_owned(), txn_id.to_owned()));
        Ok(self.append_event(room_id, sender, new, txn).await?.pdu.event_id)
    }

    pub(crate) async fn require_joined(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        let (room, u) = (room_id.to_string(), user.to_string());
        let m = self
            .db
            .read(move |r| {
                let m = membership_of(r, &room, &u)?;
                // Whether the room exists matters only for the refusal's wording.
                let known = m.as_deref() == Some("join") || r.room(&room)?.is_some();
                Ok::<_, Error>((known, m))
            })
            .await?;
        match m {
            (_, Some(m)) if m == "join" => Ok(()),
            (false, _) => Err(Error::forbidden("unknown room, or you are not in it")),
            _ => Err(Error::forbidden("you are not joined to this room")),
        }
    }
}

/// Who should wake up for an appended event: joined members, and the target of a membership change.
fn interested_users(r: &Reader<'_>, a: &Appended) -> Result<Vec<OwnedUserId>> {
    let mut users: Vec<OwnedUserId> = r
        .room_members(a.room_id.as_str())?
        .into_iter()
        .filter(|m| m.membership == "join" || m.membership == "invite" || m.stream == a.stream)
        .filter_map(|m| UserId::parse(m.user_id).ok())
        .collect();
    if a.pdu.kind == TimelineEventType::RoomMember {
        if let Some(Ok(target)) = a.pdu.state_key.as_deref().map(UserId::parse) {
            if !users.contains(&target) {
                users.push(target);
            }
        }
    }
    Ok(users)
}

/// What a shadow-banned user is told their event got: an id like a real one, for an event
/// that exists nowhere.
pub(crate) fn fake_event_id() -> OwnedEventId {
    let id = format!("${}", crate::accounts::random_string(43));
    OwnedEventId::try_from(id).unwrap_or_else(|_| ruma::owned_event_id!("$shadow"))
}
