//! `createRoom`: every initial event in one transaction, so a room is created whole or not at all.

use ruma::{events::TimelineEventType, OwnedRoomId, OwnedUserId, RoomAliasId, RoomVersionId, UserId};
use serde_json::{json, Map, Value};

use super::{
    timeline::{append, rules_for, NewPdu},
    SUPPORTED_VERSIONS,
};
use crate::{
    error::{Error, Result},
    now_ms, Moss,
};
use ruma::api::error::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    PublicChat,
    TrustedPrivateChat,
}

/// The parts of a createRoom request the service needs, already parsed.
#[derive(Debug, Default)]
pub struct CreateRoom {
    pub preset: Option<Preset>,
    pub public: bool,
    pub name: Option<String>,
    pub topic: Option<String>,
    pub alias_localpart: Option<String>,
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub room_version: Option<RoomVersionId>,
    pub creation_content: Option<Map<String, Value>>,
    pub initial_state: Vec<(String, String, Value)>,
    pub power_level_override: Option<Map<String, Value>>,
}

impl Moss {
    pub async fn create_room(&self, creator: &UserId, req: CreateRoom) -> Result<OwnedRoomId> {
        self.check_not_suspended(creator).await?;
        let version = req.room_version.clone().unwrap_or_else(|| self.default_room_version());
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(Error::new(
                ErrorKind::UnsupportedRoomVersion,
                400,
                format!("room version {version} is not supported"),
            ));
        }
        let rules = rules_for(&version)?;
        let alias = match &req.alias_localpart {
            Some(local) => {
                let alias = RoomAliasId::parse(format!("#{local}:{}", self.server_name))
                    .map_err(|e| Error::new(ErrorKind::InvalidParam, 400, format!("invalid room_alias_name: {e}")))?;
                Some(alias)
            }
            None => None,
        };
        // Users of other servers are invited once the room exists: their servers must countersign.
        let remote_invites: Vec<_> =
            req.invite.iter().filter(|u| u.server_name() != self.server_name).cloned().collect();
        if !remote_invites.is_empty() && self.federation.is_none() {
            return Err(Error::forbidden("inviting users of other servers needs federation, which is not enabled"));
        }
        for user in req.invite.iter().filter(|u| u.server_name() == self.server_name) {
            if !self.is_local_user_active(user).await? {
                return Err(Error::new(ErrorKind::NotFound, 404, format!("cannot invite unknown user {user}")));
            }
        }
        let is_direct = req.is_direct;
        let profile = self.user(creator).await?.ok_or_else(|| Error::forbidden("unknown user"))?;
        let preset = req.preset.unwrap_or(if req.public { Preset::PublicChat } else { Preset::PrivateChat });
        let signer = self.signer.clone();
        let creator = creator.to_owned();
        let creator_id = creator.clone();
        let server_name = self.server_name.clone();

        let (room_id, notify) = self
            .db
            .write(move |w| {
                let now = creation_ts();
                let push = |room: Option<&ruma::RoomId>, new: NewPdu| {
                    append(w, &signer, &version, room, &creator, new, None, now)
                };

                // 1. m.room.create
                let mut create = req.creation_content.clone().unwrap_or_default();
                create.insert("room_version".into(), json!(version));
                if !rules.authorization.use_room_create_sender {
                    create.insert("creator".into(), json!(creator));
                } else {
                    create.remove("creator");
                }
                let trusted_creators =
                    rules.authorization.additional_room_creators && preset == Preset::TrustedPrivateChat;
                if trusted_creators && !req.invite.is_empty() {
                    create.insert("additional_creators".into(), json!(req.invite));
                }
                // Before room v12 the id is chosen freely; since, it is the create event's hash.
                let chosen_id = if rules.authorization.room_create_event_id_as_room_id {
                    None
                } else {
                    let local = crate::accounts::random_string(18);
                    Some(
                        ruma::RoomId::parse(format!("!{local}:{server_name}"))
                            .map_err(|e| Error::internal(e.to_string()))?,
                    )
                };
                let created = push(chosen_id.as_deref(), NewPdu::state("m.room.create", "", Value::Object(create)))
                    .map_err(|e| match e {
                        Error::Matrix { kind: ErrorKind::Forbidden, message, .. } => Error::bad_json(message),
                        e => e,
                    })?;
                let room_id = created.room_id.clone();
                let room = Some(room_id.as_ref());
                w.insert_room(room_id.as_str(), version.as_str(), creator.as_str(), now as i64)?;

                // 2. the creator joins
                let mut member = json!({"membership": "join"});
                if let Some(n) = &profile.displayname {
                    member["displayname"] = json!(n);
                }
                if let Some(a) = &profile.avatar_url {
                    member["avatar_url"] = json!(a);
                }
                push(room, NewPdu::state("m.room.member", creator.as_str(), member))?;

                // 3. power levels
                let mut users = Map::new();
                if !rules.authorization.explicitly_privilege_room_creators {
                    users.insert(creator.to_string(), json!(100));
                }
                if preset == Preset::TrustedPrivateChat && !trusted_creators {
                    for u in &req.invite {
                        users.insert(u.to_string(), json!(100));
                    }
                }
                let mut pl = json!({
                    "users": users,
                    "users_default": 0,
                    "events": {
                        "m.room.name": 50, "m.room.power_levels": 100, "m.room.history_visibility": 100,
                        "m.room.canonical_alias": 50, "m.room.avatar": 50, "m.room.tombstone": 100,
                        "m.room.server_acl": 100, "m.room.encryption": 100,
                    },
                    "events_default": 0, "state_default": 50, "ban": 50, "kick": 50, "redact": 50, "invite": 0,
                    "notifications": {"room": 50},
                });
                if let Some(over) = &req.power_level_override {
                    for (k, v) in over {
                        pl[k] = v.clone();
                    }
                }
                push(room, NewPdu::state("m.room.power_levels", "", pl))
                    .map_err(|e| forbidden_as_bad_json(e, "power_level_content_override"))?;

                // 4. canonical alias
                if let Some(alias) = &alias {
                    if !w.put_alias(alias.as_str(), room_id.as_str(), creator.as_str())? {
                        return Err(Error::new(ErrorKind::RoomInUse, 400, "room alias already taken"));
                    }
                    push(room, NewPdu::state("m.room.canonical_alias", "", json!({"alias": alias})))?;
                }

                // 5. preset state
                let (join_rule, guest) = match preset {
                    Preset::PublicChat => ("public", "forbidden"),
                    _ => ("invite", "can_join"),
                };
                push(room, NewPdu::state("m.room.join_rules", "", json!({"join_rule": join_rule})))?;
                push(room, NewPdu::state("m.room.history_visibility", "", json!({"history_visibility": "shared"})))?;
                // Forbidden is what no guest_access event means: Synapse sends none then either.
                if guest != "forbidden" {
                    push(room, NewPdu::state("m.room.guest_access", "", json!({"guest_access": guest})))?;
                }

                // 6. initial_state, then name and topic
                for (kind, sk, content) in &req.initial_state {
                    if kind == "m.room.create" || kind == "m.room.member" {
                        return Err(Error::bad_json(format!("initial_state may not contain {kind}")));
                    }
                    push(room, NewPdu::state(kind.as_str(), sk.as_str(), content.clone()))
                        .map_err(|e| forbidden_as_bad_json(e, "initial_state"))?;
                }
                if let Some(name) = &req.name {
                    push(room, NewPdu::state("m.room.name", "", json!({"name": name})))?;
                }
                if let Some(topic) = &req.topic {
                    push(
                        room,
                        NewPdu::state(
                            "m.room.topic",
                            "",
                            json!({"topic": topic, "m.topic": [{"mimetype": "text/plain", "body": topic}]}),
                        ),
                    )?;
                }

                // 7. invites
                let mut notify = vec![creator.clone()];
                for invitee in req.invite.iter().filter(|u| u.server_name() == server_name) {
                    let mut content = json!({"membership": "invite"});
                    if req.is_direct {
                        content["is_direct"] = json!(true);
                    }
                    push(room, NewPdu::state(TimelineEventType::RoomMember, invitee.as_str(), content))?;
                    notify.push(invitee.clone());
                }
                if req.public {
                    w.set_room_published(room_id.as_str(), true)?;
                }
                Ok::<_, Error>((room_id, notify))
            })
            .await?;
        self.events_stored();
        self.notifier.notify(notify.iter().map(|u| u.as_ref()));
        for invitee in remote_invites {
            let mut content = json!({"membership": "invite"});
            if is_direct {
                content["is_direct"] = json!(true);
            }
            // The room exists either way; a server that cannot be reached costs only its invite.
            if let Err(e) = self.invite_remote(&creator_id, &room_id, &invitee, content).await {
                tracing::warn!(%invitee, room = %room_id, error = %e, "inviting a remote user at room creation failed");
            }
        }
        Ok(room_id)
    }
}

/// Content the client supplied that breaks the auth rules is a bad request, not a permission error.
fn forbidden_as_bad_json(e: Error, what: &str) -> Error {
    match e {
        Error::Matrix { kind: ErrorKind::Forbidden, message, .. } => Error::bad_json(format!("{what}: {message}")),
        e => e,
    }
}

/// The timestamp of a new room's events: strictly after the previous room's. Since room v12
/// the room id is the create event's hash, and a create event's only entropy is its
/// `origin_server_ts`: two rooms created by the same user in the same millisecond with the same
/// `creation_content` would get one id (the second failing on the events' unique key). Room
/// creation runs inside the one writer, so a monotonic counter here keeps them apart.
fn creation_ts() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = now_ms();
    let next = |last: u64| now.max(last + 1);
    let prev = LAST.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| Some(next(last))).unwrap_or(0);
    next(prev)
}

#[cfg(test)]
mod tests {
    #[test]
    fn creation_timestamps_never_repeat() {
        // Many rooms in one millisecond (the writer creates one in ~0.2 ms in release builds).
        let stamps: Vec<u64> = (0..10_000).map(|_| super::creation_ts()).collect();
        assert!(stamps.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert!(stamps[0] >= crate::now_ms() - 60_000, "close to the clock");
    }
}
