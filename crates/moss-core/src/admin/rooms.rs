//! Rooms as an admin manages them (Synapse's `/_synapse/admin/v1/rooms` family and the v2 room
//! deletion): list, details, members, state, deletion with purge and block, blocking.

use moss_storage::{AdminRoomRow, Page, RoomOrder};
use ruma::{events::TimelineEventType, OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    error::Error,
    now_ms,
    rooms::{create::CreateRoom, create::Preset, read::client_event},
    Moss, Result,
};

/// What deleting a room asks for (`DELETE /_synapse/admin/v2/rooms/{roomId}`).
#[derive(Debug, Clone)]
pub struct DeleteRoom {
    /// Nobody on this server may join the room again.
    pub block: bool,
    /// Remove everything this server keeps of the room (default true).
    pub purge: bool,
    /// Move the local members into a new room created by this user, with `room_name` and a
    /// first message `message`.
    pub new_room_user_id: Option<OwnedUserId>,
    pub room_name: Option<String>,
    pub message: Option<String>,
}

/// What a deletion did (Synapse's `shutdown_room` part of the delete status).
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub kicked_users: Vec<OwnedUserId>,
    pub failed_to_kick_users: Vec<OwnedUserId>,
    pub local_aliases: Vec<OwnedRoomAliasId>,
    pub new_room_id: Option<OwnedRoomId>,
}

const DEFAULT_NEW_ROOM_NAME: &str = "Content Violation Notification";
const DEFAULT_MESSAGE: &str =
    "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.";

impl Moss {
    pub async fn admin_rooms(
        &self,
        search: Option<String>,
        order: RoomOrder,
        page: Page,
    ) -> Result<(Vec<AdminRoomRow>, i64)> {
        let server = self.server_name.to_string();
        self.db.read(move |r| Ok::<_, Error>(r.admin_rooms(&server, search.as_deref(), order, page)?)).await
    }

    pub async fn admin_room(&self, room: &RoomId) -> Result<AdminRoomRow> {
        let (server, room) = (self.server_name.to_string(), room.to_string());
        self.db
            .read(move |r| Ok::<_, Error>(r.admin_room(&server, &room)?))
            .await?
            .ok_or_else(|| Error::not_found("Room not found"))
    }

    /// The room's joined members.
    pub async fn admin_room_members(&self, room: &RoomId) -> Result<Vec<String>> {
        self.admin_room(room).await?;
        let room = room.to_string();
        let all = self.db.read(move |r| Ok::<_, Error>(r.room_memberships(&room)?)).await?;
        Ok(all.into_iter().filter(|(_, m)| m == "join").map(|(u, _)| u).collect())
    }

    /// The room's current state in the client format.
    pub async fn admin_room_state(&self, requester: &UserId, room: &RoomId) -> Result<Vec<Value>> {
        self.admin_room(room).await?;
        let (room, u) = (room.to_string(), requester.to_string());
        self.db
            .read(move |r| {
                let mut out = Vec::new();
                for id in r.current_state(&room)?.values() {
                    if let Some(row) = r.event(id)? {
                        out.push(client_event(&row, &u, None)?);
                    }
                }
                Ok::<_, Error>(out)
            })
            .await
    }

    /// The room's forward extremities.
    pub async fn admin_forward_extremities(&self, room: &RoomId) -> Result<Vec<moss_storage::ExtremityRow>> {
        self.admin_room(room).await?;
        let room = room.to_string();
        self.db.read(move |r| Ok::<_, Error>(r.forward_extremities_detail(&room)?)).await
    }

    pub async fn admin_room_blocked(&self, room: &RoomId) -> Result<Option<String>> {
        let room = room.to_string();
        self.db.read(move |r| Ok::<_, Error>(r.room_blocked(&room)?)).await
    }

    pub async fn admin_block_room(&self, requester: &UserId, room: &RoomId, block: bool) -> Result<()> {
        let (room, by) = (room.to_string(), requester.to_string());
        self.db
            .write(move |w| {
                if block {
                    w.block_room(&room, &by, now_ms() as i64)?;
                } else {
                    w.unblock_room(&room)?;
                }
                Ok::<_, Error>(())
            })
            .await
    }

    /// Refuses joining a room an admin blocked (403, as Synapse).
    pub(crate) async fn check_not_blocked(&self, room: &RoomId) -> Result<()> {
        match self.admin_room_blocked(room).await? {
            Some(_) => Err(Error::forbidden("This room has been blocked on this server")),
            None => Ok(()),
        }
    }

    /// Deletes a room for this server: every local member leaves it (and, with
    /// `new_room_user_id`, is put in a new room with a message), its local aliases go and it
    /// leaves the directory; then, with `purge`, everything kept of it is removed, and with
    /// `block` nobody here may join it again.
    pub async fn admin_delete_room(&self, requester: &UserId, room: &RoomId, req: DeleteRoom) -> Result<Shutdown> {
        let r = room.to_string();
        // An unknown room is nothing to do (as Synapse: the deletion completes at once), or
        // only to block.
        let known = self.db.read(move |x| Ok::<_, Error>(x.room(&r)?.is_some())).await?;
        if req.block {
            self.admin_block_room(requester, room, true).await?;
        }
        let mut out = Shutdown::default();
        if !known {
            return Ok(out);
        }
        if let Some(owner) = &req.new_room_user_id {
            if owner.server_name() != self.server_name || self.user(owner).await?.is_none() {
                return Err(Error::invalid_param("new_room_user_id must be a local user"));
            }
            let mut pl = Map::new();
            pl.insert("users_default".into(), json!(-10));
            let new_room = self
                .create_room(
                    owner,
                    CreateRoom {
                        preset: Some(Preset::PublicChat),
                        name: Some(req.room_name.clone().unwrap_or_else(|| DEFAULT_NEW_ROOM_NAME.to_owned())),
                        power_level_override: Some(pl),
                        ..Default::default()
                    },
                )
                .await?;
            let body = req.message.clone().unwrap_or_else(|| DEFAULT_MESSAGE.to_owned());
            self.send_message(
                owner,
                "",
                &new_room,
                TimelineEventType::RoomMessage,
                &format!("shutdown-{}", now_ms()),
                json!({"msgtype": "m.text", "body": body}),
                None,
            )
            .await?;
            out.new_room_id = Some(new_room);
        }

        let r = room.to_string();
        let server = format!(":{}", self.server_name);
        let members = self.db.read(move |x| Ok::<_, Error>(x.room_memberships(&r)?)).await?;
        for (user, membership) in members {
            if !user.ends_with(&server) || !matches!(membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            let Ok(user) = OwnedUserId::try_from(user) else { continue };
            match self.leave_room(&user, room, None).await {
                Ok(()) => {
                    if let Some(new_room) = &out.new_room_id {
                        let target: ruma::OwnedRoomOrAliasId = new_room.clone().into();
                        if let Err(e) = self.join_room(&user, &target, None, vec![]).await {
                            tracing::warn!(%user, error = %e, "could not move a user into the replacement room");
                        }
                    }
                    out.kicked_users.push(user);
                }
                Err(e) => {
                    tracing::warn!(%user, %room, error = %e, "could not remove a user from a room being deleted");
                    out.failed_to_kick_users.push(user);
                }
            }
        }

        let r = room.to_string();
        let aliases = self.db.read(move |x| Ok::<_, Error>(x.room_aliases(&r)?)).await?;
        for alias in aliases {
            let Ok(alias) = OwnedRoomAliasId::try_from(alias) else { continue };
            if alias.server_name() == self.server_name {
                let a: &RoomAliasId = &alias;
                let a = a.to_string();
                self.db.write(move |w| Ok::<_, Error>(w.delete_alias(&a)?)).await?;
                // Listed when moved to the replacement room (Synapse's `local_aliases`).
                if let Some(new_room) = &out.new_room_id {
                    let (a, r, by) = (alias.to_string(), new_room.to_string(), requester.to_string());
                    self.db.write(move |w| Ok::<_, Error>(w.put_alias(&a, &r, &by)?)).await?;
                    out.local_aliases.push(alias);
                }
            }
        }
        let r = room.to_string();
        self.db.write(move |w| Ok::<_, Error>(w.set_room_published(&r, false)?)).await?;
        if req.purge {
            let (r, local) = (room.to_string(), format!("%:{}", self.server_name));
            self.db.write(move |w| Ok::<_, Error>(w.purge_room(&r, &local)?)).await?;
        }
        Ok(out)
    }
}

/// The media a room's events point at, as `mxc://` URIs (`/_synapse/admin/v1/room/{roomId}/media`).
#[derive(Debug, Clone, Default)]
pub struct RoomMedia {
    pub local: Vec<String>,
    pub remote: Vec<String>,
}

/// A page of a room's events for an admin (`/_synapse/admin/v1/rooms/{roomId}/messages`): every
/// event, whatever the history visibility.
#[derive(Debug, Clone)]
pub struct AdminMessages {
    pub chunk: Vec<Value>,
    pub start: String,
    pub end: Option<String>,
}

impl Moss {
    pub async fn admin_room_messages(
        &self,
        requester: &UserId,
        room: &RoomId,
        from: Option<String>,
        dir: moss_storage::Direction,
        limit: i64,
    ) -> Result<AdminMessages> {
        self.admin_room(room).await?;
        let from = from.map(|t| crate::rooms::read::parse_token(&t)).transpose()?;
        let (r, u) = (room.to_string(), requester.to_string());
        self.db
            .read(move |x| {
                let start = match (from, dir) {
                    (Some(f), _) => f,
                    (None, moss_storage::Direction::Backward) => x.current_stream()?,
                    (None, moss_storage::Direction::Forward) => i64::MIN + 1,
                };
                let rows = x.room_events(&r, start, None, dir, limit)?;
                let end = rows.last().map(|e| match dir {
                    moss_storage::Direction::Backward => crate::rooms::read::token(e.stream - 1),
                    moss_storage::Direction::Forward => crate::rooms::read::token(e.stream),
                });
                let chunk = rows.iter().map(|e| client_event(e, &u, None)).collect::<Result<Vec<_>>>()?;
                Ok::<_, Error>(AdminMessages {
                    chunk,
                    start: crate::rooms::read::token(if start == i64::MIN + 1 { 0 } else { start }),
                    end,
                })
            })
            .await
    }

    /// The rooms taking the most space, `(room, bytes of stored events)`.
    pub async fn admin_largest_rooms(&self) -> Result<Vec<(String, i64)>> {
        self.db.read(|r| Ok::<_, Error>(r.largest_rooms(10)?)).await
    }

    /// The media the room's events point at (`content.url`, `content.info.thumbnail_url`) as
    /// `mxc://` URIs: this server's, and other servers'.
    pub async fn admin_room_media(&self, room: &RoomId) -> Result<RoomMedia> {
        let r = room.to_string();
        let all = self.db.read(move |x| Ok::<_, Error>(x.media_in_room(&r, "mxc://")?)).await?;
        let own = format!("{}/", self.server_name);
        let (local, remote) = all.into_iter().map(|m| format!("mxc://{m}")).partition(|m| m[6..].starts_with(&own));
        Ok(RoomMedia { local, remote })
    }

    /// Quarantines this server's media the room's events point at; how many.
    pub async fn admin_quarantine_room_media(&self, room: &RoomId) -> Result<usize> {
        let (r, prefix) = (room.to_string(), format!("mxc://{}/", self.server_name));
        let ids = self.db.read(move |x| Ok::<_, Error>(x.media_in_room(&r, &prefix)?)).await?;
        let mut n = 0;
        for id in ids {
            n += self.quarantine(Some(&format!("mxc://{}/{id}", self.server_name)), None).await?;
        }
        Ok(n)
    }

    /// Makes a local user join a room (the admin's `v1/join`): a room they may not join by
    /// themselves is joined after an invite from the admin, who must be in it.
    pub async fn admin_join(
        &self,
        requester: &UserId,
        user: &UserId,
        target: &ruma::RoomOrAliasId,
    ) -> Result<OwnedRoomId> {
        match self.join_room(user, target, None, vec![]).await {
            Ok(room) => Ok(room),
            Err(Error::Matrix { kind: ruma::api::error::ErrorKind::Forbidden, .. }) => {
                let (room, _) = self.room_and_servers(target, vec![]).await?;
                self.invite(requester, &room, user, None)
                    .await
                    .map_err(|_| Error::forbidden("the room is not public and the admin cannot invite into it"))?;
                self.join_room(user, target, None, vec![]).await
            }
            Err(e) => Err(e),
        }
    }
}
