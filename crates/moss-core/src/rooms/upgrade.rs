//! `/upgrade`: replace a room with a new one of another version, carrying its state, aliases
//! and power levels over and pointing the old room at the new one.

use ruma::{events::StateEventType, OwnedRoomId, RoomId, RoomVersionId, UserId};
use serde_json::{json, Value};

use super::{
    create::CreateRoom,
    power_levels, room_info,
    timeline::{current_state_pdu, NewPdu},
};
use crate::{
    error::{Error, Result},
    Moss,
};

/// State copied into the replacement room.
const CARRIED: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

impl Moss {
    pub async fn upgrade_room(&self, user: &UserId, old: &RoomId, new_version: RoomVersionId) -> Result<OwnedRoomId> {
        self.require_joined(user, old).await?;
        let (room, u) = (old.to_string(), user.to_owned());
        let (carried, mut pl) = self
            .db
            .read(move |r| {
                let info = room_info(r, &room)?.ok_or_else(|| Error::not_found("unknown room"))?;
                if !power_levels(r, &room, &info.rules)?.user_can_send_state(&u, StateEventType::RoomTombstone) {
                    return Err(Error::forbidden("you may not upgrade this room"));
                }
                let mut carried = Vec::new();
                for kind in CARRIED {
                    if let Some(p) = current_state_pdu(r, &room, kind, "")? {
                        carried.push((kind.to_string(), String::new(), p.content_value()));
                    }
                }
                let pl = current_state_pdu(r, &room, "m.room.power_levels", "")?
                    .map(|p| p.content_value())
                    .unwrap_or_else(|| json!({}));
                Ok::<_, Error>((carried, pl))
            })
            .await?;

        // The upgrader must be able to finish setting the new room up; from room v12 on, the
        // creator is privileged by the create event and must not be listed.
        let rules = super::timeline::rules_for(&new_version)?;
        if let Some(users) = pl["users"].as_object_mut() {
            if rules.authorization.explicitly_privilege_room_creators {
                users.remove(user.as_str());
            } else {
                users.insert(user.to_string(), json!(100));
            }
        }
        let new_room = self
            .create_room(
                user,
                CreateRoom {
                    room_version: Some(new_version),
                    creation_content: Some(
                        json!({"predecessor": {"room_id": old}}).as_object().cloned().unwrap_or_default(),
                    ),
                    initial_state: carried,
                    power_level_override: pl.as_object().cloned(),
                    ..Default::default()
                },
            )
            .await?;

        // Point the old room at the new one and quieten it.
        self.append_event(
            old,
            user,
            NewPdu::state(
                "m.room.tombstone",
                "",
                json!({"body": "This room has been replaced", "replacement_room": new_room}),
            ),
            None,
        )
        .await?;
        let mut old_pl = self.state_event(user, old, "m.room.power_levels", "").await?["content"].clone();
        if old_pl.is_object() {
            let users_default = old_pl["users_default"].as_i64().unwrap_or(0);
            let restricted = (users_default + 1).max(50);
            for key in ["events_default", "invite"] {
                if old_pl[key].as_i64().unwrap_or(0) < restricted {
                    old_pl[key] = json!(restricted);
                }
            }
            if let Err(e) = self.append_event(old, user, NewPdu::state("m.room.power_levels", "", old_pl), None).await {
                tracing::warn!(room_id = %old, error = %e, "could not restrict the old room after an upgrade");
            }
        }

        // Aliases follow the room.
        let (from, to) = (old.to_string(), new_room.to_string());
        self.db.write(move |w| Ok::<_, Error>(w.move_aliases(&from, &to)?)).await?;
        let canonical =
            self.state_event(user, old, "m.room.canonical_alias", "").await.ok().map(|e| e["content"].clone());
        if let Some(c) = canonical.filter(|c: &Value| c["alias"].is_string() || c["alt_aliases"].is_array()) {
            self.append_event(&new_room, user, NewPdu::state("m.room.canonical_alias", "", c), None).await?;
            self.append_event(old, user, NewPdu::state("m.room.canonical_alias", "", json!({})), None).await?;
        }
        Ok(new_room)
    }
}
