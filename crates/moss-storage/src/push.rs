//! Queries for push notifications: the evaluator's progress, the actions it records per event
//! and user (which unread counts and `/notifications` read), and pushers with their delivery
//! cursors.

use crate::{backend::Row, params};

use crate::{
    queries::{event_row, EVENT_COLS},
    EventRow, Reader, Result, Writer,
};

/// One notifying event for one user.
#[derive(Debug, Clone)]
pub struct PushActionRow {
    pub user_id: String,
    pub room_id: String,
    pub stream: i64,
    pub event_id: String,
    pub thread_id: String,
    pub highlight: bool,
    /// JSON array of actions; `None` for the common `["notify"]`.
    pub actions: Option<String>,
    pub ts: i64,
}

fn action_row(r: &Row<'_>) -> Result<PushActionRow> {
    Ok(PushActionRow {
        user_id: r.get(0)?,
        room_id: r.get(1)?,
        stream: r.get(2)?,
        event_id: r.get(3)?,
        thread_id: r.get(4)?,
        highlight: r.get(5)?,
        actions: r.get(6)?,
        ts: r.get(7)?,
    })
}
const ACTION_COLS: &str = "user_id, room_id, stream, event_id, thread_id, highlight, actions, ts";

/// Unread notifying events of one thread (`main` for the room's main timeline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCount {
    pub thread_id: String,
    pub notify: u64,
    pub highlight: u64,
}

#[derive(Debug, Clone)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    /// The pusher as the client gave it (spec JSON).
    pub pusher: String,
    pub device_id: Option<String>,
    pub created_ts: i64,
    /// Every notifying row of the user up to here has been handled.
    pub last_stream: i64,
    pub failing_since: Option<i64>,
}

fn pusher_row(r: &Row<'_>) -> Result<PusherRow> {
    Ok(PusherRow {
        user_id: r.get(0)?,
        app_id: r.get(1)?,
        pushkey: r.get(2)?,
        pusher: r.get(3)?,
        device_id: r.get(4)?,
        created_ts: r.get(5)?,
        last_stream: r.get(6)?,
        failing_since: r.get(7)?,
    })
}
const PUSHER_COLS: &str = "user_id, app_id, pushkey, pusher, device_id, created_ts, last_stream, failing_since";

/// How far a user has read a room: the read receipts' event positions per thread (`""` is the
/// main timeline and unthreaded receipts), and where their current join is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadPositions {
    pub joined: Option<i64>,
    pub threads: Vec<(String, i64)>,
}

impl Reader<'_> {
    pub fn push_evaluated_upto(&self) -> Result<i64> {
        Ok(self.one("SELECT evaluated_upto FROM push_progress WHERE id = 0", [], |r| r.get(0))?.unwrap_or(0))
    }

    /// Events of every room after `stream`, in stream order.
    pub fn events_after(&self, stream: i64, limit: i64) -> Result<Vec<EventRow>> {
        self.collect(
            &format!("SELECT {EVENT_COLS} FROM events WHERE stream > ?1 ORDER BY stream LIMIT ?2"),
            params![stream, limit],
            event_row,
        )
    }

    /// Joined members of a room with the stream of their join.
    pub fn joined_members_since(&self, room_id: &str) -> Result<Vec<(String, i64)>> {
        self.collect(
            "SELECT user_id, stream FROM memberships WHERE room_id = ?1 AND membership = 'join'",
            [room_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Unread notifying events of a user in a room after `after`, per thread.
    pub fn push_counts(&self, user_id: &str, room_id: &str, after: i64) -> Result<Vec<ThreadCount>> {
        self.collect(
            "SELECT thread_id, COUNT(*), SUM(highlight) FROM push_actions \
             WHERE user_id = ?1 AND room_id = ?2 AND stream > ?3 GROUP BY thread_id",
            params![user_id, room_id, after],
            |r| Ok(ThreadCount { thread_id: r.get(0)?, notify: r.get(1)?, highlight: r.get(2)? }),
        )
    }

    /// Like [`Reader::push_counts`], for one thread.
    pub fn push_count_thread(&self, user_id: &str, room_id: &str, thread_id: &str, after: i64) -> Result<(u64, u64)> {
        Ok(self
            .one(
                "SELECT COUNT(*), COALESCE(SUM(highlight), 0) FROM push_actions \
                 WHERE user_id = ?1 AND room_id = ?2 AND stream > ?3 AND thread_id = ?4",
                params![user_id, room_id, after, thread_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .unwrap_or((0, 0)))
    }

    /// How far a user's read receipts (`m.read` and `m.read.private`) go in a room, per thread
    /// (`""` for unthreaded receipts), as event streams.
    pub fn read_positions(&self, user_id: &str, room_id: &str) -> Result<ReadPositions> {
        // The user's join in the same statement, as the row without a thread.
        let rows: Vec<(Option<String>, i64)> = self.collect(
            "SELECT thread_id, MAX(COALESCE(event_stream, -1)) FROM receipts WHERE room_id = ?2 AND user_id = ?1 \
             AND receipt_type IN ('m.read', 'm.read.private') GROUP BY thread_id \
             UNION ALL SELECT NULL, stream FROM memberships WHERE room_id = ?2 AND user_id = ?1 AND membership = 'join'",
            [user_id, room_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let mut out = ReadPositions::default();
        for (thread, stream) in rows {
            match thread {
                Some(t) => out.threads.push((t, stream)),
                None => out.joined = Some(stream),
            }
        }
        Ok(out)
    }

    /// Rooms where a user has notifying rows, with the newest row's stream.
    pub fn push_rooms(&self, user_id: &str) -> Result<Vec<(String, i64)>> {
        self.collect(
            "SELECT room_id, MAX(stream) FROM push_actions WHERE user_id = ?1 GROUP BY room_id",
            [user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// A user's notifying rows before `before`, newest first (`GET /notifications`).
    pub fn push_actions_before(
        &self,
        user_id: &str,
        before: i64,
        only_highlight: bool,
        limit: i64,
    ) -> Result<Vec<PushActionRow>> {
        self.collect(
            &format!(
                "SELECT {ACTION_COLS} FROM push_actions WHERE user_id = ?1 AND stream < ?2 AND highlight >= ?3 \
                 ORDER BY stream DESC LIMIT ?4"
            ),
            params![user_id, before, only_highlight, limit],
            action_row,
        )
    }

    /// A user's notifying rows after `after`, oldest first (what a pusher still has to send).
    pub fn push_actions_after(&self, user_id: &str, after: i64, limit: i64) -> Result<Vec<PushActionRow>> {
        self.collect(
            &format!(
                "SELECT {ACTION_COLS} FROM push_actions WHERE user_id = ?1 AND stream > ?2 ORDER BY stream LIMIT ?3"
            ),
            params![user_id, after, limit],
            action_row,
        )
    }

    pub fn count_memberships(&self, user_id: &str, membership: &str) -> Result<u64> {
        Ok(self
            .one(
                "SELECT COUNT(*) FROM memberships WHERE user_id = ?1 AND membership = ?2",
                [user_id, membership],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }

    pub fn pushers(&self, user_id: &str) -> Result<Vec<PusherRow>> {
        self.collect(
            &format!("SELECT {PUSHER_COLS} FROM pushers WHERE user_id = ?1 ORDER BY app_id, pushkey"),
            [user_id],
            pusher_row,
        )
    }

    /// Pushers with notifying rows after their cursor.
    pub fn pushers_with_pending(&self) -> Result<Vec<PusherRow>> {
        self.collect(
            &format!(
                "SELECT {PUSHER_COLS} FROM pushers p WHERE EXISTS (SELECT 1 FROM push_actions a \
                 WHERE a.user_id = p.user_id AND a.stream > p.last_stream) ORDER BY user_id, app_id, pushkey"
            ),
            [],
            pusher_row,
        )
    }

    pub fn pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> Result<Option<PusherRow>> {
        self.one(
            &format!("SELECT {PUSHER_COLS} FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3"),
            [user_id, app_id, pushkey],
            pusher_row,
        )
    }

    /// Notifying rows no pusher has handled yet (for the operators' queue-length gauge).
    pub fn pending_pushes(&self) -> Result<u64> {
        Ok(self
            .one(
                "SELECT COUNT(*) FROM pushers p JOIN push_actions a ON a.user_id = p.user_id AND a.stream > p.last_stream",
                [],
                |r| r.get(0),
            )?
            .unwrap_or(0))
    }
}

impl Writer<'_> {
    pub fn set_push_evaluated_upto(&self, stream: i64) -> Result<()> {
        self.exec("UPDATE push_progress SET evaluated_upto = ?1 WHERE id = 0", [stream])?;
        Ok(())
    }

    pub fn insert_push_action(&self, a: &PushActionRow) -> Result<()> {
        self.exec(
            "INSERT INTO push_actions (user_id, room_id, stream, event_id, thread_id, highlight, actions, ts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (user_id, room_id, stream) DO UPDATE SET event_id = excluded.event_id, \
               thread_id = excluded.thread_id, highlight = excluded.highlight, actions = excluded.actions, ts = excluded.ts",
            params![a.user_id, a.room_id, a.stream, a.event_id, a.thread_id, a.highlight, a.actions, a.ts],
        )?;
        Ok(())
    }

    /// Forgets non-highlight rows older than `before_ts` that are read, or of a room the user
    /// is no longer in (highlights stay for `/notifications?only=highlight`; unread rows of the
    /// user's rooms stay because they are counted).
    pub fn prune_push_actions(&self, before_ts: i64) -> Result<usize> {
        self.exec(
            "DELETE FROM push_actions AS pa WHERE pa.highlight = 0 AND pa.ts < ?1 AND (EXISTS ( \
                 SELECT 1 FROM receipts r WHERE r.room_id = pa.room_id AND r.user_id = pa.user_id \
                 AND r.receipt_type IN ('m.read', 'm.read.private') \
                 AND (r.thread_id = '' OR r.thread_id = pa.thread_id) AND r.event_stream >= pa.stream) \
             OR NOT EXISTS (SELECT 1 FROM memberships m WHERE m.room_id = pa.room_id AND m.user_id = pa.user_id \
                 AND m.membership IN ('join', 'invite')))",
            [before_ts],
        )
    }

    /// Stores a pusher (replacing one with the same user, app and key; its cursor starts at
    /// `last_stream`, so nothing from before is pushed).
    pub fn put_pusher(&self, p: &PusherRow) -> Result<()> {
        self.exec(
            "INSERT INTO pushers (user_id, app_id, pushkey, pusher, device_id, created_ts, last_stream, failing_since) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL) ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET \
             pusher = excluded.pusher, device_id = excluded.device_id, created_ts = excluded.created_ts, \
             last_stream = excluded.last_stream, failing_since = NULL",
            params![p.user_id, p.app_id, p.pushkey, p.pusher, p.device_id, p.created_ts, p.last_stream],
        )?;
        Ok(())
    }

    /// Moves a pusher's cursor forward (never back) and records whether it is failing.
    pub fn advance_pusher(
        &self,
        user_id: &str,
        app_id: &str,
        pushkey: &str,
        last_stream: i64,
        failing_since: Option<i64>,
    ) -> Result<()> {
        self.exec(
            "UPDATE pushers SET last_stream = CASE WHEN last_stream > ?4 THEN last_stream ELSE ?4 END, failing_since = ?5 \
             WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
            params![user_id, app_id, pushkey, last_stream, failing_since],
        )?;
        Ok(())
    }

    /// Removes the pushers a device set (the device is being deleted); returns how many.
    pub fn delete_device_pushers(&self, user_id: &str, device_id: &str) -> Result<usize> {
        self.exec("DELETE FROM pushers WHERE user_id = ?1 AND device_id = ?2", [user_id, device_id])
    }

    pub fn delete_user_pushers(&self, user_id: &str) -> Result<usize> {
        self.exec("DELETE FROM pushers WHERE user_id = ?1", [user_id])
    }
}

#[cfg(test)]
mod tests {
    use crate::{PushActionRow, StorageError};

    fn row(user: &str, room: &str, stream: i64, thread: &str, highlight: bool, ts: i64) -> PushActionRow {
        PushActionRow {
            user_id: user.into(),
            room_id: room.into(),
            stream,
            event_id: format!("$e{stream}"),
            thread_id: thread.into(),
            highlight,
            actions: None,
            ts,
        }
    }

    /// Pruning drops old rows that are read and not highlights: unread rows are counted,
    /// highlights listed by `/notifications?only=highlight`.
    #[test]
    fn pruning_keeps_unread_rows_and_highlights() {
        for (_backend, db) in crate::conformance::test_dbs() {
            db.write_blocking(|w| {
                for r in [
                    row("@a:x", "!r:x", 10, "main", false, 0),
                    row("@a:x", "!r:x", 11, "main", true, 0),
                    row("@a:x", "!r:x", 12, "$root", false, 0),
                    row("@a:x", "!r:x", 13, "main", false, 0),
                    row("@a:x", "!r:x", 5, "main", false, 10_000),
                    row("@b:x", "!r:x", 10, "main", false, 0),
                ] {
                    w.insert_push_action(&r)?;
                }
                // @a read the main timeline up to 12 (threaded receipt), and nothing unthreaded.
                w.exec(
                "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream, event_stream) \
                 VALUES ('!r:x', '@a:x', 'm.read', 'main', '$e12', 0, 1, 12)",
                [],
            )?;
                for user in ["@a:x", "@b:x"] {
                    w.set_membership("!r:x", user, "join", "$j", 1)?;
                }
                assert_eq!(w.prune_push_actions(1_000)?, 1, "only the read, old, plain main-timeline row");
                // Once @b has left, their old rows go too.
                w.set_membership("!r:x", "@b:x", "leave", "$l", 2)?;
                assert_eq!(w.prune_push_actions(1_000)?, 1);
                let left: Vec<i64> = w.push_actions_after("@a:x", 0, 10)?.iter().map(|r| r.stream).collect();
                assert_eq!(left, [5, 11, 12, 13]);
                assert!(w.push_actions_after("@b:x", 0, 10)?.is_empty());
                let positions = w.read_positions("@a:x", "!r:x")?;
                assert_eq!(positions.threads, vec![("main".to_owned(), 12)]);
                assert_eq!(positions.joined, Some(1), "where the join is comes along");
                assert_eq!(w.read_positions("@b:x", "!r:x")?.joined, None, "left");
                Ok::<_, StorageError>(())
            })
            .unwrap();
        }
    }

    /// The queue is the rows after each pusher's cursor: the gauge counts them, the sweep finds
    /// the pushers that have any, and moving a cursor (never back) empties it.
    #[test]
    fn pending_pushes_are_the_rows_after_each_cursor() {
        for (_backend, db) in crate::conformance::test_dbs() {
            db.write_blocking(|w| {
                for user in ["@a:x", "@b:x"] {
                    w.put_pusher(&crate::PusherRow {
                        user_id: user.into(),
                        app_id: "app".into(),
                        pushkey: format!("{user}-key"),
                        pusher: "{}".into(),
                        device_id: Some("D".into()),
                        created_ts: 0,
                        last_stream: 10,
                        failing_since: None,
                    })?;
                }
                for s in [9, 11, 12] {
                    w.insert_push_action(&row("@a:x", "!r:x", s, "main", false, 0))?;
                }
                assert_eq!(w.pending_pushes()?, 2);
                let with: Vec<String> = w.pushers_with_pending()?.into_iter().map(|p| p.user_id).collect();
                assert_eq!(with, ["@a:x"]);
                w.advance_pusher("@a:x", "app", "@a:x-key", 12, None)?;
                w.advance_pusher("@a:x", "app", "@a:x-key", 5, Some(7))?;
                let p = w.pusher("@a:x", "app", "@a:x-key")?.unwrap();
                assert_eq!((p.last_stream, p.failing_since), (12, Some(7)), "never back");
                assert_eq!(w.pending_pushes()?, 0);
                assert!(w.pushers_with_pending()?.is_empty());
                assert_eq!(w.delete_device_pushers("@b:x", "D")?, 1);
                Ok::<_, StorageError>(())
            })
            .unwrap();
        }
    }
}
