//! Unread counts: a user's notifying events in a room after their read receipts, per thread.
//!
//! Rows recorded by the evaluator are counted in SQL; events the evaluator has not reached yet
//! (above its watermark, usually none or the one just sent) are evaluated here, in the same
//! database snapshot, so a count always arrives in the same `/sync` response as its event.
//!
//! Receipts (`m.read` and `m.read.private` alike): an unthreaded one reads everything up to its
//! event; a threaded one (`main` or a thread root) reads that thread up to its event.

use std::collections::{BTreeMap, HashMap};

use moss_storage::{Direction, Reader};
use ruma::{RoomId, UserId};

use super::rules::{display_name, evaluate, room_ctx, thread_of, PreparedEvent, RulesCache, MAIN_THREAD};
use crate::{error::Result, rooms::read::client_event};

/// Counts of one thread, or of a whole room.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub notify: u64,
    pub highlight: u64,
}

impl Count {
    fn add(&mut self, other: Count) {
        self.notify += other.notify;
        self.highlight += other.highlight;
    }
}

/// A room's unread counts for one user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoomCounts {
    /// Threads by root, `main` for the main timeline.
    pub threads: BTreeMap<String, Count>,
}

impl RoomCounts {
    pub fn total(&self) -> Count {
        let mut c = Count::default();
        for t in self.threads.values() {
            c.add(*t);
        }
        c
    }

    pub fn main(&self) -> Count {
        self.threads.get(MAIN_THREAD).copied().unwrap_or_default()
    }

    /// Threads other than the main timeline with something unread.
    pub fn threads(&self) -> impl Iterator<Item = (&String, &Count)> {
        self.threads.iter().filter(|(t, c)| t.as_str() != MAIN_THREAD && c.notify > 0)
    }
}

/// How far a user has read a room: everything up to `all`, and each thread up to its own mark.
pub(crate) struct ReadMarks {
    pub all: i64,
    pub threads: HashMap<String, i64>,
}

impl ReadMarks {
    pub fn read(&self, stream: i64, thread: &str) -> bool {
        stream <= self.all || self.threads.get(thread).is_some_and(|t| stream <= *t)
    }
}

pub(crate) fn read_marks(r: &Reader<'_>, user: &str, room: &str) -> Result<ReadMarks> {
    // Events before the user's current join are not theirs to count (an invite, though, is
    // itself the event to notify of).
    let positions = r.read_positions(user, room)?;
    let mut marks = ReadMarks { all: positions.joined.unwrap_or(-1), threads: HashMap::new() };
    for (thread, stream) in positions.threads {
        if thread.is_empty() {
            marks.all = marks.all.max(stream);
        } else {
            marks.threads.insert(thread, stream);
        }
    }
    Ok(marks)
}

/// Most unevaluated events one count evaluates itself (the evaluator is normally a few events
/// behind at most; clients show "99+" anyway).
const INLINE_MAX: i64 = 100;

/// Where counts are taken, read once per response rather than per room: the snapshot's
/// stream position and how far the push evaluator had got in it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CountsAt {
    pub current: i64,
    pub evaluated: i64,
}

impl CountsAt {
    pub(crate) fn read(r: &Reader<'_>, current: i64) -> Result<CountsAt> {
        Ok(CountsAt { current, evaluated: r.push_evaluated_upto()? })
    }
}

/// A user's unread counts in a room as of `at` (the snapshot's stream position).
pub(crate) fn room_counts(
    r: &Reader<'_>,
    rules: &RulesCache,
    user: &UserId,
    room_id: &RoomId,
    at: CountsAt,
) -> Result<RoomCounts> {
    let CountsAt { current, evaluated } = at;
    let (u, room) = (user.as_str(), room_id.as_str());
    let marks = read_marks(r, u, room)?;
    let mut counts = RoomCounts::default();
    for t in r.push_counts(u, room, marks.all)? {
        let c = match marks.threads.get(&t.thread_id) {
            Some(mark) if *mark > marks.all => {
                let (notify, highlight) = r.push_count_thread(u, room, &t.thread_id, *mark)?;
                Count { notify, highlight }
            }
            _ => Count { notify: t.notify, highlight: t.highlight },
        };
        counts.threads.insert(t.thread_id, c);
    }
    // Events the evaluator has not reached yet.
    let from = evaluated.max(marks.all);
    if from < current {
        let rows = r.room_events(room, from, Some(current), Direction::Forward, INLINE_MAX)?;
        let rows: Vec<_> = rows.into_iter().filter(|e| e.sender != u && e.redacted_by.is_none()).collect();
        if !rows.is_empty() {
            let push = rules.get(r, user)?;
            let joined = r.joined_member_count(room)? as u64;
            let mut ctx = room_ctx(r, room_id, joined, user.to_owned())?;
            if push.needs_display_name {
                ctx.user_display_name = display_name(r, room, user)?;
            }
            for row in rows {
                // Membership events notify only their target (as the evaluator decides).
                if row.kind == "m.room.member" && row.state_key.as_deref() != Some(u) {
                    continue;
                }
                let event = client_event(&row, u, None)?;
                let thread = thread_of(&event);
                if marks.read(row.stream, &thread) {
                    continue;
                }
                let Some(prepared) = PreparedEvent::new(&event) else { continue };
                if let Some(n) = evaluate(&push, &prepared, &ctx) {
                    counts.threads.entry(thread).or_default().add(Count { notify: 1, highlight: n.highlight as u64 });
                }
            }
        }
    }
    Ok(counts)
}

/// The number on the app icon: rooms with unread notifications (or, with
/// `push.group_unread_count_by_room = false`, the notifications themselves), plus invites.
pub(crate) fn badge(r: &Reader<'_>, rules: &RulesCache, user: &UserId, by_room: bool, current: i64) -> Result<u64> {
    let at = CountsAt::read(r, current)?;
    let mut badge = r.count_memberships(user.as_str(), "invite")?;
    for (room, newest) in r.push_rooms(user.as_str())? {
        let Ok(room_id) = RoomId::parse(&room) else { continue };
        if r.membership(&room, user.as_str())?.is_none_or(|m| m.membership != "join") {
            continue;
        }
        let marks = read_marks(r, user.as_str(), &room)?;
        if newest <= marks.all {
            continue;
        }
        let n = room_counts(r, rules, user, &room_id, at)?.total().notify;
        badge += if by_room { u64::from(n > 0) } else { n };
    }
    Ok(badge)
}
