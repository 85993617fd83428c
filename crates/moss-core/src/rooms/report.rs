//! Reports of rooms and events to the server's administrators (`moss reports` lists them).

use ruma::{EventId, RoomId, UserId};

use super::{read::read_access, visibility::Visibility};
use crate::{
    error::{Error, Result},
    now_ms, Moss,
};

const MAX_REASON: usize = 4096;

impl Moss {
    /// `POST /rooms/{roomId}/report/{eventId}` and `POST /rooms/{roomId}/report` (no event).
    pub async fn report(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: Option<&EventId>,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<()> {
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(Error::invalid_param(format!("reason is longer than {MAX_REASON} bytes")));
        }
        if score.is_some_and(|s| !(-100..=0).contains(&s)) {
            return Err(Error::invalid_param("score must be between -100 and 0"));
        }
        let (u, room, ev) = (reporter.to_string(), room_id.to_string(), event_id.map(|e| e.to_string()));
        let id = self
            .db
            .write(move |w| {
                match &ev {
                    Some(ev) => {
                        // Reporting an event one cannot see would leak that it exists.
                        let hidden = || Error::not_found("event not found");
                        read_access(w, &room, &u).map_err(|_| hidden())?;
                        let row = w.event(ev)?.filter(|e| e.room_id == room).ok_or_else(hidden)?;
                        if !Visibility::new(w, &room, &u)?.can_see(&row)? {
                            return Err(hidden());
                        }
                    }
                    None => {
                        if w.room(&room)?.is_none() {
                            return Err(Error::not_found("room not found"));
                        }
                    }
                }
                Ok(w.add_report(&u, &room, ev.as_deref(), reason.as_deref(), score, now_ms() as i64)?)
            })
            .await?;
        tracing::warn!(report = id, reporter = %reporter, room = %room_id, event = ?event_id, "content reported");
        Ok(())
    }
}

impl Moss {
    /// The latest reports, newest first (`moss reports`).
    pub async fn reports(&self, limit: u32) -> Result<Vec<moss_storage::ReportRow>> {
        self.db.read(move |r| Ok::<_, Error>(r.reports(limit.clamp(1, 10_000) as i64)?)).await
    }
}
