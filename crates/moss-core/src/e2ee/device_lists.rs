//! Which users' device lists a user must refetch: those whose keys changed and who share a room
//! with them, plus everyone they newly share a room with (`changed`), and everyone they no longer
//! share any room with (`left`).

use std::collections::BTreeSet;

use moss_storage::Reader;
use ruma::{OwnedUserId, UserId};

use crate::{error::Result, sync::SyncToken, Moss};

#[derive(Debug, Default, Clone)]
pub struct DeviceListDelta {
    pub changed: BTreeSet<String>,
    pub left: BTreeSet<String>,
}

impl DeviceListDelta {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// The delta for `user` between two stream positions.
pub(crate) fn delta(r: &Reader<'_>, user: &str, from: i64, to: i64) -> Result<DeviceListDelta> {
    let mut out = DeviceListDelta::default();
    if to <= from {
        return Ok(out);
    }
    for other in r.device_list_changed_between(from, to)? {
        if other == user || r.share_a_room(user, &other)? {
            out.changed.insert(other);
        }
    }
    let mut maybe_left = BTreeSet::new();
    for (room, other, membership) in r.membership_changes_between(from, to)? {
        if other == user {
            let members = r.room_members(&room)?;
            for m in members.into_iter().filter(|m| m.user_id != user && m.membership == "join") {
                if membership == "join" {
                    out.changed.insert(m.user_id);
                } else {
                    maybe_left.insert(m.user_id);
                }
            }
        } else if r.membership(&room, user)?.is_some_and(|m| m.membership == "join") {
            if membership == "join" {
                out.changed.insert(other);
            } else {
                maybe_left.insert(other);
            }
        }
    }
    for other in maybe_left {
        if !r.share_a_room(user, &other)? {
            out.changed.remove(&other);
            out.left.insert(other);
        }
    }
    Ok(out)
}

impl Moss {
    /// `GET /keys/changes`: the users whose device lists changed between two sync tokens.
    pub async fn key_changes(
        &self,
        user: &UserId,
        from: &str,
        to: &str,
    ) -> Result<(Vec<OwnedUserId>, Vec<OwnedUserId>)> {
        let from = SyncToken::parse(from)?.stream;
        let to = SyncToken::parse(to)?.stream;
        let u = user.to_string();
        let d = self.db.read(move |r| delta(r, &u, from, to)).await?;
        let ids = |s: BTreeSet<String>| s.into_iter().filter_map(|u| UserId::parse(u).ok()).collect::<Vec<_>>();
        Ok((ids(d.changed), ids(d.left)))
    }
}
