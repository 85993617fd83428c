//! Typing notifications: ephemeral, kept in memory, expiring on their own.
//!
//! Typing has its own serial (the second half of a sync token) because it changes without a
//! database write and must not take a place in the persistent stream.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};

#[derive(Default)]
struct State {
    serial: u64,
    rooms: HashMap<OwnedRoomId, RoomTyping>,
}

#[derive(Default)]
struct RoomTyping {
    /// The serial of the last change in this room.
    changed: u64,
    users: HashMap<OwnedUserId, Instant>,
}

/// Serials are microseconds of the wall clock (or one more than the last): processes sharing a
/// database apply the same changes at nearly the same time, so a sync token from one process
/// means the same point in time to another (crate::cluster).
fn next_serial(last: u64) -> u64 {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    now.max(last + 1)
}

#[derive(Default)]
pub struct Typing {
    state: Mutex<State>,
}

impl Typing {
    pub fn serial(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).serial
    }

    /// Sets or clears a user's typing flag; returns whether anything changed.
    pub fn set(&self, room: &RoomId, user: &UserId, timeout: Option<Duration>) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let serial = next_serial(s.serial);
        let r = s.rooms.entry(room.to_owned()).or_default();
        let changed = match timeout {
            Some(t) => r.users.insert(user.to_owned(), Instant::now() + t).is_none(),
            None => r.users.remove(user).is_some(),
        };
        if changed {
            r.changed = serial;
            s.serial = serial;
        }
        changed
    }

    /// Drops expired entries; returns the rooms that changed.
    pub fn expire(&self) -> Vec<OwnedRoomId> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let serial = next_serial(s.serial);
        let mut changed = Vec::new();
        for (room, r) in s.rooms.iter_mut() {
            let before = r.users.len();
            r.users.retain(|_, until| *until > now);
            if r.users.len() != before {
                r.changed = serial;
                changed.push(room.clone());
            }
        }
        s.rooms.retain(|_, r| !r.users.is_empty() || r.changed == serial);
        if !changed.is_empty() {
            s.serial = serial;
        }
        changed
    }

    /// Every room whose typing changed after `since`, with who types there now.
    pub fn rooms_changed_since(&self, since: u64) -> Vec<(OwnedRoomId, Vec<OwnedUserId>)> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = s
            .rooms
            .iter()
            .filter(|(_, r)| r.changed > since)
            .map(|(room, r)| {
                let mut users: Vec<_> = r.users.keys().cloned().collect();
                users.sort();
                (room.clone(), users)
            })
            .collect();
        out.sort();
        out
    }

    /// The users typing in `room` if it changed after `since`.
    pub fn changed_since(&self, room: &RoomId, since: u64) -> Option<Vec<OwnedUserId>> {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = s.rooms.get(room)?;
        if r.changed > since {
            let mut users: Vec<_> = r.users.keys().cloned().collect();
            users.sort();
            Some(users)
        } else {
            None
        }
    }
}
