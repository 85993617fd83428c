//! User-interactive authentication sessions.

use crate::{params, Reader, Result, Writer};

/// A session: the endpoint (and user) it is for, the stages completed (JSON array of stage
/// names), when it began.
#[derive(Debug, Clone)]
pub struct UiaaSessionRow {
    pub purpose: String,
    pub completed: String,
    pub created_ts: i64,
}

impl Reader<'_> {
    pub fn uiaa_session(&self, session: &str) -> Result<Option<UiaaSessionRow>> {
        self.one("SELECT purpose, completed, created_ts FROM uiaa_sessions WHERE session = ?1", [session], |r| {
            Ok(UiaaSessionRow { purpose: r.get(0)?, completed: r.get(1)?, created_ts: r.get(2)? })
        })
    }
}

impl Writer<'_> {
    /// Starts a session, and forgets the ones begun before `expired_before`.
    pub fn create_uiaa_session(&self, session: &str, purpose: &str, now: i64, expired_before: i64) -> Result<()> {
        self.exec("DELETE FROM uiaa_sessions WHERE created_ts < ?1", [expired_before])?;
        self.exec(
            "INSERT INTO uiaa_sessions (session, purpose, completed, created_ts) VALUES (?1, ?2, '[]', ?3)",
            params![session, purpose, now],
        )?;
        Ok(())
    }

    pub fn set_uiaa_completed(&self, session: &str, completed: &str) -> Result<()> {
        self.exec("UPDATE uiaa_sessions SET completed = ?2 WHERE session = ?1", [session, completed])?;
        Ok(())
    }

    pub fn delete_uiaa_session(&self, session: &str) -> Result<()> {
        self.exec("DELETE FROM uiaa_sessions WHERE session = ?1", [session])?;
        Ok(())
    }
}
