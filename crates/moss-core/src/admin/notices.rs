//! Server notices: messages from the operators to a user, in a room per user that a system
//! account (`server_notices.system_mxid_localpart`) owns. The user is invited (or, with
//! `auto_join`, joined) and may read and leave but not write (`users_default` -10); the room is
//! tagged `m.server_notice` for them, so clients show it apart. If the user left, the next
//! notice goes to a new room.

use ruma::{events::TimelineEventType, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde_json::{json, Map, Value};

use crate::{
    accounts::random_string,
    error::Error,
    rooms::create::{CreateRoom, Preset},
    Moss, Result,
};

/// What a notice is: a timeline event (`m.room.message` by default) or a state event.
#[derive(Debug, Clone)]
pub struct Notice {
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Value,
    /// For idempotent retries (`PUT .../send_server_notice/{txnId}`).
    pub txn_id: Option<String>,
}

impl Moss {
    /// The system account, when server notices are configured.
    pub fn notices_user(&self) -> Option<OwnedUserId> {
        let local = self.config.server_notices.system_mxid_localpart.as_deref()?;
        UserId::parse(format!("@{local}:{}", self.server_name)).ok()
    }

    pub async fn send_server_notice(&self, user: &UserId, notice: Notice) -> Result<OwnedEventId> {
        let system = self.notices_user().ok_or_else(|| {
            Error::new(ruma::api::error::ErrorKind::Unknown, 400, "Server notices are not enabled on this server")
        })?;
        if user.server_name() != self.server_name {
            return Err(Error::new(
                ruma::api::error::ErrorKind::Unknown,
                400,
                "Server notices can only be sent to local users",
            ));
        }
        if !self.is_local_user_active(user).await? {
            return Err(Error::not_found("Unknown user"));
        }
        self.ensure_notices_user(&system).await?;
        let room = self.notices_room(&system, user).await?;
        let txn = notice.txn_id.unwrap_or_else(|| format!("notice-{}", random_string(12)));
        match notice.state_key {
            Some(key) => self.send_state(&system, &room, notice.kind, &key, notice.content, None).await,
            None => {
                self.send_message(&system, "", &room, notice.kind, &format!("{user}-{txn}"), notice.content, None).await
            }
        }
    }

    async fn ensure_notices_user(&self, system: &UserId) -> Result<()> {
        if self.user(system).await?.is_some() {
            return Ok(());
        }
        self.create_user(system, None, false, None).await?;
        let cfg = &self.config.server_notices;
        if let Some(name) = &cfg.system_mxid_display_name {
            self.set_profile_field(system, "displayname", Some(name.clone())).await?;
        }
        if let Some(url) = &cfg.system_mxid_avatar_url {
            self.set_profile_field(system, "avatar_url", Some(url.clone())).await?;
        }
        Ok(())
    }

    /// Whether `room` is the user's server notices room.
    pub(crate) async fn is_server_notice_room(&self, user: &UserId, room: &RoomId) -> Result<bool> {
        let u = user.to_string();
        let theirs = self.db.read(move |r| Ok::<_, Error>(r.server_notice_room(&u)?)).await?;
        Ok(theirs.as_deref() == Some(room.as_str()))
    }

    /// The user's notices room, made (and the user invited or joined) if there is none they are
    /// still in or invited to.
    async fn notices_room(&self, system: &UserId, user: &UserId) -> Result<OwnedRoomId> {
        let u = user.to_string();
        let existing = self.db.read(move |r| Ok::<_, Error>(r.server_notice_room(&u)?)).await?;
        if let Some(room) = existing.and_then(|r| OwnedRoomId::try_from(r).ok()) {
            let theirs = self.membership(&room, user).await?;
            let ours = self.membership(&room, system).await?;
            if matches!(theirs.as_deref(), Some("join") | Some("invite")) && ours.as_deref() == Some("join") {
                return Ok(room);
            }
        }
        let cfg = &self.config.server_notices;
        let mut pl = Map::new();
        pl.insert("users_default".into(), json!(-10));
        let mut initial_state = Vec::new();
        if let Some(url) = &cfg.room_avatar_url {
            initial_state.push(("m.room.avatar".to_owned(), String::new(), json!({"url": url})));
        }
        let room = self
            .create_room(
                system,
                CreateRoom {
                    preset: Some(Preset::PrivateChat),
                    name: Some(cfg.room_name.clone()),
                    topic: cfg.room_topic.clone(),
                    invite: vec![user.to_owned()],
                    power_level_override: Some(pl),
                    initial_state,
                    ..Default::default()
                },
            )
            .await?;
        self.set_tag(user, &room, "m.server_notice", Some(json!({}))).await?;
        if cfg.auto_join {
            let target: ruma::OwnedRoomOrAliasId = room.clone().into();
            self.join_room(user, &target, None, vec![]).await?;
        }
        let (u, r) = (user.to_string(), room.to_string());
        self.db.write(move |w| Ok::<_, Error>(w.set_server_notice_room(&u, &r)?)).await?;
        Ok(room)
    }
}
