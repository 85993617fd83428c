//! Queries for sliding sync (MSC4186): a user's rooms with what its lists sort and filter on, in
//! one pass.

use std::collections::HashSet;

use crate::params;

use crate::{Reader, Result, Writer};

/// One room a user has a membership in, with what sliding sync's lists need to know about it.
#[derive(Debug, Clone)]
pub struct SlidingRoomRow {
    pub room_id: String,
    pub membership: String,
    pub membership_event: String,
    /// Stream position of the membership event.
    pub membership_stream: i64,
    /// Who sent a `leave` or `invite` membership event (a kick is a `leave` sent by someone
    /// else); `None` for other memberships and when the event is not in the timeline (an invite
    /// over federation).
    pub membership_sender: Option<String>,
    /// Stream position of the room's latest event of a bump type (`room_list_info`).
    pub bump_stream: Option<i64>,
    /// The room has an `m.room.encryption` state event.
    pub encrypted: bool,
    /// `content.type` of the room's create event, when it is a string (e.g. `m.space`).
    pub room_type: Option<String>,
    /// The room's create event is known here (false for invites and knocks over federation).
    pub known: bool,
}

impl Reader<'_> {
    /// Every room the user has a membership in and has not forgotten.
    pub fn sliding_rooms(&self, user_id: &str) -> Result<Vec<SlidingRoomRow>> {
        self.collect(
            "SELECT m.room_id, m.membership, m.event_id, m.stream, \
                    CASE WHEN m.membership IN ('leave', 'invite') \
                         THEN (SELECT sender FROM events e WHERE e.event_id = m.event_id) END, \
                    i.bump_stream, COALESCE(i.encrypted, 0), i.room_type, COALESCE(i.has_create, 0) \
             FROM memberships m LEFT JOIN room_list_info i ON i.room_id = m.room_id \
             WHERE m.user_id = ?1 AND m.forgotten = 0",
            params![user_id],
            |r| {
                Ok(SlidingRoomRow {
                    room_id: r.get(0)?,
                    membership: r.get(1)?,
                    membership_event: r.get(2)?,
                    membership_stream: r.get(3)?,
                    membership_sender: r.get(4)?,
                    bump_stream: r.get(5)?,
                    encrypted: r.get(6)?,
                    room_type: r.get(7)?,
                    known: r.get(8)?,
                })
            },
        )
    }

    /// The rooms a space lists as its children now (`m.space.child` with a non-empty `via`).
    pub fn space_children(&self, space_id: &str) -> Result<Vec<String>> {
        self.collect(
            "SELECT c.state_key FROM current_state c JOIN events e ON e.event_id = c.event_id \
             WHERE c.room_id = ?1 AND c.type = 'm.space.child' \
             AND json_type(e.pdu, '$.content.via') = 'array' AND json_array_length(e.pdu, '$.content.via') > 0",
            params![space_id],
            |r| r.get(0),
        )
    }

    /// The stream position of the room's latest bump event at or before `at`, for rooms whose
    /// member can no longer see its present (a user who left).
    pub fn bump_stream_at(&self, room_id: &str, at: i64) -> Result<Option<i64>> {
        self.one(
            "SELECT stream FROM events WHERE room_id = ?1 AND stream > 0 AND stream <= ?2 \
             AND type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker', \
                          'm.call.invite', 'm.poll.start', 'm.beacon_info') \
             ORDER BY stream DESC LIMIT 1",
            params![room_id, at],
            |r| r.get(0),
        )
    }

    /// `(joined, invited)` member counts.
    pub fn member_counts(&self, room_id: &str) -> Result<(i64, i64)> {
        Ok(self
            .one(
                "SELECT COALESCE(SUM(CASE WHEN membership = 'join' THEN 1 ELSE 0 END), 0), \
                        COALESCE(SUM(CASE WHEN membership = 'invite' THEN 1 ELSE 0 END), 0) \
                 FROM memberships WHERE room_id = ?1",
                params![room_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?
            .unwrap_or((0, 0)))
    }

    /// Up to `limit` joined or invited members other than `user`, earliest first, with their
    /// membership event: the heroes that name a room without a name.
    pub fn hero_members(&self, room_id: &str, user: &str, limit: i64) -> Result<Vec<(String, String)>> {
        self.collect(
            "SELECT user_id, event_id FROM memberships WHERE room_id = ?1 AND user_id != ?2 \
             AND membership IN ('join', 'invite') ORDER BY stream LIMIT ?3",
            params![room_id, user, limit],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Rooms with an event after stream position `from` (timeline or state).
    pub fn rooms_with_events_after(&self, from: i64) -> Result<HashSet<String>> {
        Ok(self
            .collect("SELECT DISTINCT room_id FROM events WHERE stream > ?1", params![from], |r| r.get(0))?
            .into_iter()
            .collect())
    }

    /// Rooms where `user` moved a receipt after stream position `from` (their unread counts
    /// may have changed).
    pub fn rooms_with_own_receipts_after(&self, user: &str, from: i64) -> Result<HashSet<String>> {
        Ok(self
            .collect(
                "SELECT DISTINCT room_id FROM receipts WHERE stream > ?1 AND user_id = ?2",
                params![from, user],
                |r| r.get(0),
            )?
            .into_iter()
            .collect())
    }

    /// Rooms with a receipt (anyone's) moved after stream position `from`.
    pub fn rooms_with_receipts_after(&self, from: i64) -> Result<HashSet<String>> {
        Ok(self
            .collect("SELECT DISTINCT room_id FROM receipts WHERE stream > ?1", params![from], |r| r.get(0))?
            .into_iter()
            .collect())
    }
}

/// One stored sliding sync position (see schema 23).
#[derive(Debug, Clone)]
pub struct SlidingPositionRow {
    pub pos: i64,
    pub state: String,
    pub used_ts: i64,
}

impl Reader<'_> {
    pub fn sliding_position(
        &self,
        user: &str,
        device: &str,
        conn: &str,
        pos: i64,
    ) -> Result<Option<SlidingPositionRow>> {
        self.one(
            "SELECT pos, state, used_ts FROM sliding_positions \
             WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3 AND pos = ?4",
            params![user, device, conn, pos],
            |r| Ok(SlidingPositionRow { pos: r.get(0)?, state: r.get(1)?, used_ts: r.get(2)? }),
        )
    }
}

impl Writer<'_> {
    /// Stores the state after a response as the connection's next position and returns it:
    /// keeps the newest `keep` positions, at most `per_device` connections per device (the least
    /// recently used go), and forgets connections unused since `idle_before`.
    #[allow(clippy::too_many_arguments)]
    pub fn store_sliding_position(
        &self,
        user: &str,
        device: &str,
        conn: &str,
        continued: bool,
        state: &str,
        now: i64,
        keep: i64,
        per_device: i64,
        idle_before: i64,
    ) -> Result<i64> {
        self.exec("DELETE FROM sliding_positions WHERE used_ts < ?1", [idle_before])?;
        if !continued {
            self.exec(
                "DELETE FROM sliding_positions WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3",
                [user, device, conn],
            )?;
        }
        let pos = self
            .one(
                "SELECT COALESCE(MAX(pos), 0) + 1 FROM sliding_positions WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3",
                [user, device, conn],
                |r| r.get::<_, i64>(0),
            )?
            .unwrap_or(1);
        self.exec(
            "INSERT INTO sliding_positions (user_id, device_id, conn_id, pos, state, used_ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![user, device, conn, pos, state, now],
        )?;
        self.exec(
            "DELETE FROM sliding_positions WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3 AND pos <= ?4",
            params![user, device, conn, pos - keep],
        )?;
        self.exec(
            "UPDATE sliding_positions SET used_ts = ?4 WHERE user_id = ?1 AND device_id = ?2 AND conn_id = ?3",
            params![user, device, conn, now],
        )?;
        // The device's other connections beyond its share, least recently used first.
        self.exec(
            "DELETE FROM sliding_positions WHERE user_id = ?1 AND device_id = ?2 AND conn_id IN ( \
                 SELECT conn_id FROM sliding_positions WHERE user_id = ?1 AND device_id = ?2 AND conn_id != ?3 \
                 GROUP BY conn_id ORDER BY MAX(used_ts) DESC LIMIT 1000000 OFFSET ?4)",
            params![user, device, conn, per_device - 1],
        )?;
        Ok(pos)
    }
}
