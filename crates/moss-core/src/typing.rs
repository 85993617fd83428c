//! Typing notifications: ephemeral, kept in memory, expiring on their own.
//!
//! Typing has its own serial (the second half of a sync token) because it changes without a
//! database write and must not take a place in the persistent stream.

use std::{collections::HashMap, sync::Mutex, time::Duration};

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
    /// Who types, until when (wall-clock microseconds).
    users: HashMap<OwnedUserId, u64>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Serials are microseconds of the wall clock (or one more than the last), and a change keeps
/// its serial wherever it is applied: processes sharing a database (crate::cluster) apply the
/// same changes with the same serials, so a sync token from one means the same to another.
/// Expiry is at a wall-clock time the change carries, with that time as its serial.
fn next_serial(last: u64) -> u64 {
    now_us().max(last + 1)
}

/// A typing change as made here, to be applied by the other processes as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypingChange {
    pub serial: u64,
    /// When the typing ends (wall-clock microseconds); `None`: it ended.
    pub until_us: Option<u64>,
}

#[derive(Default)]
pub struct Typing {
    state: Mutex<State>,
}

impl Typing {
    pub fn serial(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).serial
    }

    /// Sets or clears a user's typing flag; the change if anything changed.
    pub fn set(&self, room: &RoomId, user: &UserId, timeout: Option<Duration>) -> Option<TypingChange> {
        let serial = next_serial(self.serial());
        let until_us = timeout.map(|t| now_us() + t.as_micros() as u64);
        self.apply(room, user, TypingChange { serial, until_us }).then_some(TypingChange { serial, until_us })
    }

    /// Applies a change (made here or by another process); returns whether anything changed.
    pub fn apply(&self, room: &RoomId, user: &UserId, change: TypingChange) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = s.rooms.entry(room.to_owned()).or_default();
        let changed = match change.until_us {
            Some(until) => r.users.insert(user.to_owned(), until).is_none(),
            None => r.users.remove(user).is_some(),
        };
        if changed {
            r.changed = r.changed.max(change.serial);
            s.serial = s.serial.max(change.serial);
        }
        changed
    }

    /// Drops expired entries; returns the rooms that changed.
    pub fn expire(&self) -> Vec<OwnedRoomId> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_us();
        let mut changed = Vec::new();
        let mut newest = s.serial;
        for (room, r) in s.rooms.iter_mut() {
            let ended = r.users.values().filter(|until| **until <= now).copied().max();
            if let Some(at) = ended {
                // At the expiry time (the same in every process), unless something newer was
                // already handed out here.
                let serial = at.max(newest + 1);
                r.users.retain(|_, until| *until > now);
                r.changed = r.changed.max(serial);
                newest = newest.max(serial);
                changed.push(room.clone());
            }
        }
        s.rooms.retain(|room, r| !r.users.is_empty() || changed.contains(room));
        s.serial = newest;
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
