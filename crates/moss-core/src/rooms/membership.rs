//! Membership changes: join, invite, leave, kick, ban, unban, forget.
//!
//! The auth rules decide whether a change is allowed; these functions add the checks the rules
//! cannot express (the target must exist, a kick needs someone to kick) and fill in profiles.

use moss_storage::Reader;
use ruma::{events::TimelineEventType, OwnedRoomId, OwnedServerName, RoomId, RoomOrAliasId, ServerName, UserId};
use serde_json::{json, Value};

use super::{membership_of, timeline::NewPdu};
use crate::{
    error::{Error, Result},
    Moss,
};

impl Moss {
    /// Joins a room by id or alias; rooms this server is not in are joined through `via`, the
    /// alias's servers, the inviting server or the server in the room id.
    pub async fn join_room(
        &self,
        user: &UserId,
        target: &RoomOrAliasId,
        reason: Option<String>,
        via: Vec<OwnedServerName>,
    ) -> Result<OwnedRoomId> {
        self.check_not_suspended(user).await?;
        let (room_id, mut servers) = self.room_and_servers(target, via).await?;
        self.check_not_blocked(&room_id).await?;
        let (room, u, server) = (room_id.to_string(), user.to_string(), self.server_name.clone());
        let (resident, current, inviter) = self
            .db
            .read(move |r| {
                let resident = super::is_resident(r, &room, &server)?;
                let current = membership_of(r, &room, &u)?;
                let inviter = match r.remote_invite(&room, &u)? {
                    Some(inv) => r.outlier(&inv.event_id)?.and_then(|(_, pdu, _)| {
                        serde_json::from_str::<Value>(&pdu).ok()?["sender"].as_str().map(str::to_owned)
                    }),
                    None => None,
                };
                Ok::<_, Error>((resident, current, inviter))
            })
            .await?;
        if current.as_deref() == Some("join") && resident {
            return Ok(room_id);
        }
        if !resident {
            if self.federation.is_none() {
                return Err(Error::not_found("no known room with that id or alias"));
            }
            if let Some(s) = inviter.as_deref().and_then(|i| UserId::parse(i).ok()) {
                servers.insert(0, s.server_name().to_owned());
            }
            self.join_remote(user, &room_id, &servers).await?;
            return Ok(room_id);
        }
        let (room, u, server) = (room_id.to_string(), user.to_string(), self.server_name.clone());
        let authoriser = self
            .db
            .read(move |r| {
                Ok::<_, Error>(
                    match !matches!(membership_of(r, &room, &u)?.as_deref(), Some("join") | Some("invite")) {
                        true => restricted_join_authoriser(r, &room, &u, &server)?,
                        false => None,
                    },
                )
            })
            .await?;
        let mut content = self.member_content(user, "join").await?;
        if let Some(a) = authoriser {
            content["join_authorised_via_users_server"] = json!(a);
        }
        self.send_member(user, &room_id, user, content, reason).await?;
        Ok(room_id)
    }

    /// `POST /knock/{roomIdOrAlias}`: asks to be let into a room whose join rule is `knock` or
    /// `knock_restricted`. Members with invite power answer by inviting (or kicking).
    pub async fn knock(
        &self,
        user: &UserId,
        target: &RoomOrAliasId,
        reason: Option<String>,
        via: Vec<OwnedServerName>,
    ) -> Result<OwnedRoomId> {
        let (room_id, servers) = self.room_and_servers(target, via).await?;
        let (room, u, server) = (room_id.to_string(), user.to_string(), self.server_name.clone());
        let (resident, current) = self
            .db
            .read(move |r| Ok::<_, Error>((super::is_resident(r, &room, &server)?, membership_of(r, &room, &u)?)))
            .await?;
        if !resident {
            if self.federation.is_none() {
                return Err(Error::not_found("no known room with that id or alias"));
            }
            if current.as_deref() == Some("knock") {
                return Ok(room_id);
            }
            self.knock_remote(user, &room_id, &servers, reason).await?;
            return Ok(room_id);
        }
        match current.as_deref() {
            Some("join") => return Err(Error::forbidden("you are already in this room")),
            Some("invite") => return Err(Error::forbidden("you are already invited; join instead")),
            Some("ban") => return Err(Error::forbidden("you are banned from this room")),
            Some("knock") => return Ok(room_id),
            _ => {}
        }
        let content = self.member_content(user, "knock").await?;
        self.send_member(user, &room_id, user, content, reason).await?;
        Ok(room_id)
    }

    pub async fn invite(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        let shadow_banned = self.check_sender(sender).await?;
        self.require_joined(sender, room_id).await?;
        // A shadow-banned user's invites answer as sent and reach nobody.
        if shadow_banned {
            return Ok(());
        }
        let remote = target.server_name() != self.server_name;
        if remote && self.federation.is_none() {
            return Err(Error::forbidden("inviting users of other servers needs federation, which is not enabled"));
        }
        if !remote && !self.is_local_user_active(target).await? {
            return Err(Error::not_found(format!("unknown user {target}")));
        }
        let current = self.membership(room_id, target).await?;
        match current.as_deref() {
            Some("join") => return Err(Error::forbidden(format!("{target} is already in the room"))),
            Some("ban") => return Err(Error::forbidden(format!("{target} is banned from the room"))),
            Some("invite") => return Ok(()),
            _ => {}
        }
        if remote {
            let mut content = json!({"membership": "invite"});
            if let Some(r) = reason {
                content["reason"] = json!(r);
            }
            return self.invite_remote(sender, room_id, target, content).await;
        }
        let content = self.member_content(target, "invite").await?;
        self.send_member(sender, room_id, target, content, reason).await
    }

    /// Leaves a room, or rejects an invite or withdraws a knock.
    pub async fn leave_room(&self, user: &UserId, room_id: &RoomId, reason: Option<String>) -> Result<()> {
        let current = self.membership(room_id, user).await?;
        match current.as_deref() {
            Some("join") | Some("invite") | Some("knock") => {}
            Some("leave") => return Ok(()),
            Some("ban") => return Err(Error::forbidden("you are banned from this room")),
            _ => return Err(Error::forbidden("you are not in this room")),
        }
        if current.as_deref() == Some("invite") && self.is_server_notice_room(user, room_id).await? {
            // As Synapse: the invite to the server notices room cannot be rejected, only left
            // once joined, so the notice that caused it is read.
            return Err(Error::new(
                ruma::api::error::ErrorKind::CannotLeaveServerNoticeRoom,
                403,
                "You cannot reject this invite",
            ));
        }
        // An invite to a room this server is not in is rejected through the inviting server.
        let (room, u) = (room_id.to_string(), user.to_string());
        let inviter = self
            .db
            .read(move |r| {
                let Some(inv) = r.remote_invite(&room, &u)? else { return Ok::<_, Error>(None) };
                Ok(r.outlier(&inv.event_id)?.and_then(|(_, pdu, _)| {
                    serde_json::from_str::<Value>(&pdu).ok()?["sender"].as_str().and_then(|s| UserId::parse(s).ok())
                }))
            })
            .await?;
        if let Some(inviter) = inviter {
            // A knock of ours is withdrawn here only (the server we knocked through is not kept).
            let outcome = if inviter == user {
                Err(Error::not_found("no server to withdraw the knock through"))
            } else {
                self.leave_remote(user, room_id, inviter.server_name()).await
            };
            if let Err(e) = outcome {
                // The inviting server may be gone for good; the user still gets rid of the invite.
                tracing::info!(room = %room_id, error = %e, "rejecting a remote invite failed; dropping it locally");
                let (room, u) = (room_id.to_string(), user.to_string());
                self.db
                    .write(move |w| {
                        w.delete_remote_invite(&room, &u)?;
                        let stream = w.next_stream()?;
                        let event = w.membership(&room, &u)?.map(|m| m.event_id).unwrap_or_default();
                        w.set_membership(&room, &u, "leave", &event, stream)?;
                        Ok::<_, Error>(())
                    })
                    .await?;
                self.notifier.notify([user]);
            }
            return Ok(());
        }
        self.send_member(user, room_id, user, json!({"membership": "leave"}), reason).await
    }

    pub async fn kick(&self, sender: &UserId, room_id: &RoomId, target: &UserId, reason: Option<String>) -> Result<()> {
        self.require_joined(sender, room_id).await?;
        let current = self.membership(room_id, target).await?;
        if !matches!(current.as_deref(), Some("join") | Some("invite") | Some("knock")) {
            return Err(Error::forbidden(format!("{target} is not in the room")));
        }
        self.set_membership_of(sender, room_id, target, "leave", reason).await
    }

    pub async fn ban(&self, sender: &UserId, room_id: &RoomId, target: &UserId, reason: Option<String>) -> Result<()> {
        self.require_joined(sender, room_id).await?;
        self.set_membership_of(sender, room_id, target, "ban", reason).await
    }

    pub async fn unban(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        reason: Option<String>,
    ) -> Result<()> {
        self.require_joined(sender, room_id).await?;
        let current = self.membership(room_id, target).await?;
        if current.as_deref() != Some("ban") {
            return Err(Error::forbidden(format!("{target} is not banned")));
        }
        self.set_membership_of(sender, room_id, target, "leave", reason).await
    }

    pub async fn forget_room(&self, user: &UserId, room_id: &RoomId) -> Result<()> {
        let (room, u) = (room_id.to_string(), user.to_string());
        self.db
            .write(move |w| {
                match membership_of(w, &room, &u)?.as_deref() {
                    Some("leave") | Some("ban") => {}
                    Some(_) => {
                        return Err(Error::new(
                            ruma::api::error::ErrorKind::Unknown,
                            400,
                            "leave the room before forgetting it",
                        ))
                    }
                    None => return Err(Error::not_found("you were never in this room")),
                }
                w.forget_room(&room, &u)?;
                Ok(())
            })
            .await
    }

    async fn set_membership_of(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        membership: &str,
        reason: Option<String>,
    ) -> Result<()> {
        self.send_member(sender, room_id, target, json!({"membership": membership}), reason).await
    }

    /// Appends `sender`'s change of `target`'s membership, with the reason if one was given.
    async fn send_member(
        &self,
        sender: &UserId,
        room_id: &RoomId,
        target: &UserId,
        mut content: Value,
        reason: Option<String>,
    ) -> Result<()> {
        if let Some(r) = reason {
            content["reason"] = json!(r);
        }
        let new = NewPdu::state(TimelineEventType::RoomMember, target.as_str(), content);
        self.append_event(room_id, sender, new, None).await?;
        Ok(())
    }

    /// The room a join or knock names, with the servers to go through if this one is not in
    /// it: those the client gave, then the alias's.
    pub(crate) async fn room_and_servers(
        &self,
        target: &RoomOrAliasId,
        via: Vec<OwnedServerName>,
    ) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
        let mut servers = via;
        let room_id = match <&RoomId>::try_from(target) {
            Ok(id) => id.to_owned(),
            Err(alias) => {
                let (id, alias_servers) = self.resolve_alias_with_servers(alias).await?;
                servers.extend(alias_servers);
                id
            }
        };
        Ok((room_id, servers))
    }

    /// A user's current membership in a room (`join`, `invite`, `leave`, `ban`, `knock`).
    pub async fn membership(&self, room_id: &RoomId, user: &UserId) -> Result<Option<String>> {
        let (room, u) = (room_id.to_string(), user.to_string());
        self.db.read(move |r| membership_of(r, &room, &u)).await
    }

    /// Member event content carrying the user's current profile.
    pub(crate) async fn member_content(&self, user: &UserId, membership: &str) -> Result<Value> {
        let mut content = json!({"membership": membership});
        if let Some(u) = self.user(user).await? {
            if let Some(n) = u.displayname {
                content["displayname"] = json!(n);
            }
            if let Some(a) = u.avatar_url {
                content["avatar_url"] = json!(a);
            }
        }
        Ok(content)
    }
}

/// For a room with a `restricted` or `knock_restricted` join rule: whether `user` may join
/// through one of the allowed rooms, and if so which local member with invite power vouches for
/// it (the `join_authorised_via_users_server` the auth rules require). `None` when the join rule
/// is not restricted (the auth rules alone decide); an error when no allow condition holds.
pub(crate) fn restricted_join_authoriser(
    r: &Reader<'_>,
    room: &str,
    user: &str,
    server: &ServerName,
) -> Result<Option<String>> {
    let Some(rules) = r.current_state_event(room, "m.room.join_rules", "")? else {
        return Ok(None);
    };
    let content: Value = serde_json::from_str::<Value>(&rules.pdu)?["content"].clone();
    let rule = content["join_rule"].as_str().unwrap_or_default();
    if rule != "restricted" && rule != "knock_restricted" {
        return Ok(None);
    }
    let allowed = content["allow"].as_array().into_iter().flatten().any(|a| {
        a["type"] == "m.room_membership"
            && a["room_id"]
                .as_str()
                .is_some_and(|other| r.membership(other, user).ok().flatten().is_some_and(|m| m.membership == "join"))
    });
    if !allowed {
        return Err(Error::forbidden(if rule == "knock_restricted" {
            "you are not a member of any room this room admits; knock to ask for an invite"
        } else {
            "you are not invited and not a member of any room this room admits"
        }));
    }
    let info = super::room_info(r, room)?.ok_or_else(|| Error::not_found("unknown room"))?;
    let levels = super::power_levels(r, room, &info.rules)?;
    for m in r.room_members(room)? {
        if m.membership != "join" {
            continue;
        }
        let Ok(candidate) = UserId::parse(&m.user_id) else { continue };
        if candidate.server_name() == server && levels.user_can_invite(&candidate) {
            return Ok(Some(m.user_id));
        }
    }
    Err(Error::new(
        ruma::api::error::ErrorKind::UnableToAuthorizeJoin,
        400,
        "no member of this server can authorise the join",
    ))
}
