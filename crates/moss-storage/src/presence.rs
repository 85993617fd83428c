//! Queries for presence, content reports and login tokens.

use crate::{backend::Row, params};

use crate::{Reader, Result, Writer};

#[derive(Debug, Clone)]
pub struct PresenceRow {
    pub user_id: String,
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
    pub stream: i64,
}

#[derive(Debug, Clone)]
pub struct ReportRow {
    pub id: i64,
    pub reporter: String,
    pub room_id: String,
    pub event_id: Option<String>,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub received_ts: i64,
}

pub(crate) fn presence_row(r: &Row<'_>) -> Result<PresenceRow> {
    Ok(PresenceRow {
        user_id: r.get(0)?,
        state: r.get(1)?,
        status_msg: r.get(2)?,
        last_active_ts: r.get(3)?,
        stream: r.get(4)?,
    })
}

impl Reader<'_> {
    pub fn presence(&self, user_id: &str) -> Result<Option<PresenceRow>> {
        self.one(
            "SELECT user_id, state, status_msg, last_active_ts, stream FROM presence WHERE user_id = ?1",
            [user_id],
            presence_row,
        )
    }

    /// Everyone whose presence is not `offline`, for the timeouts that take it there.
    pub fn presence_not_offline(&self) -> Result<Vec<PresenceRow>> {
        self.collect(
            "SELECT user_id, state, status_msg, last_active_ts, stream FROM presence WHERE state != 'offline'",
            [],
            presence_row,
        )
    }

    /// Presence of the users sharing a room with `user_id` (and their own) changed after `since`.
    pub fn presence_since(&self, user_id: &str, since: i64) -> Result<Vec<PresenceRow>> {
        self.collect(
            "SELECT p.user_id, p.state, p.status_msg, p.last_active_ts, p.stream FROM presence p \
             WHERE p.stream > ?2 AND (p.user_id = ?1 OR EXISTS ( \
                 SELECT 1 FROM memberships a JOIN memberships b ON a.room_id = b.room_id \
                 WHERE a.user_id = ?1 AND b.user_id = p.user_id AND a.membership = 'join' AND b.membership = 'join')) \
             ORDER BY p.stream LIMIT 500",
            params![user_id, since],
            presence_row,
        )
    }

    pub fn reports(&self, limit: i64) -> Result<Vec<ReportRow>> {
        self.collect(
            "SELECT id, reporter, room_id, event_id, reason, score, received_ts FROM reports ORDER BY id DESC LIMIT ?1",
            [limit],
            |r| {
                Ok(ReportRow {
                    id: r.get(0)?,
                    reporter: r.get(1)?,
                    room_id: r.get(2)?,
                    event_id: r.get(3)?,
                    reason: r.get(4)?,
                    score: r.get(5)?,
                    received_ts: r.get(6)?,
                })
            },
        )
    }
}

impl Writer<'_> {
    /// Sets state and status; `stream` is the new position when either changed.
    pub fn set_presence(&self, p: &PresenceRow) -> Result<()> {
        self.exec(
            "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg, \
               last_active_ts = excluded.last_active_ts, stream = excluded.stream",
            params![p.user_id, p.state, p.status_msg, p.last_active_ts, p.stream],
        )?;
        Ok(())
    }

    pub fn touch_presence(&self, user_id: &str, now: i64) -> Result<()> {
        self.exec("UPDATE presence SET last_active_ts = ?2 WHERE user_id = ?1", params![user_id, now])?;
        Ok(())
    }

    pub fn add_report(
        &self,
        reporter: &str,
        room_id: &str,
        event_id: Option<&str>,
        reason: Option<&str>,
        score: Option<i64>,
        now: i64,
    ) -> Result<i64> {
        self.returning(
            "INSERT INTO reports (reporter, room_id, event_id, reason, score, received_ts) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            params![reporter, room_id, event_id, reason, score, now],
        )
    }

    pub fn add_login_token(&self, token: &str, user_id: &str, expires_ts: i64) -> Result<()> {
        self.exec(
            "INSERT INTO login_tokens (token, user_id, expires_ts) VALUES (?1, ?2, ?3)",
            params![token, user_id, expires_ts],
        )?;
        Ok(())
    }

    /// Consumes a login token: the user it belongs to if it exists and has not expired.
    pub fn take_login_token(&self, token: &str, now: i64) -> Result<Option<String>> {
        self.exec("DELETE FROM login_tokens WHERE expires_ts <= ?1", [now])?;
        self.one("DELETE FROM login_tokens WHERE token = ?1 RETURNING user_id", [token], |r| r.get(0))
    }
}
