//! `GET /notifications`: the events that notified the user, newest first, across their rooms,
//! each with the actions it asked for and whether it has been read — the rows the push
//! evaluator recorded (read, non-highlight rows are pruned after a day; highlights stay).

use std::collections::HashMap;

use ruma::UserId;
use serde_json::{json, Value};

use super::{
    counts::{read_marks, ReadMarks},
    rules::parse_actions,
};
use crate::{
    error::{Error, Result},
    rooms::read::client_event,
    Moss,
};

impl Moss {
    pub async fn notifications(
        &self,
        user: &UserId,
        from: Option<String>,
        limit: Option<u64>,
        only_highlight: bool,
    ) -> Result<Value> {
        let before = match &from {
            Some(t) => t
                .strip_prefix('n')
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_param(format!("invalid from token {t:?}")))?,
            None => i64::MAX,
        };
        let limit = limit.unwrap_or(20).clamp(1, 100) as i64;
        // The newest events may not be evaluated yet: wait a moment for the evaluator.
        let current = self.db.read(|r| Ok::<_, Error>(r.current_stream()?)).await?;
        self.push_evaluated(current, std::time::Duration::from_secs(2)).await;
        let u = user.to_string();
        self.db
            .read(move |r| {
                let rows = r.push_actions_before(&u, before, only_highlight, limit + 1)?;
                let more = rows.len() as i64 > limit;
                let mut marks: HashMap<String, ReadMarks> = HashMap::new();
                let mut out = Vec::new();
                let mut last = None;
                for row in rows.into_iter().take(limit as usize) {
                    last = Some(row.stream);
                    let Some(ev) = r.event(&row.event_id)? else { continue };
                    if !marks.contains_key(&row.room_id) {
                        marks.insert(row.room_id.clone(), read_marks(r, &u, &row.room_id)?);
                    }
                    let read = marks.get(&row.room_id).is_some_and(|m| m.read(row.stream, &row.thread_id));
                    let event = client_event(&ev, &u, None)?;
                    out.push(json!({
                        "actions": parse_actions(row.actions.as_deref()),
                        "event": event,
                        "read": read,
                        "room_id": row.room_id,
                        "ts": ev.origin_server_ts,
                    }));
                }
                let mut body = json!({ "notifications": out });
                if let (true, Some(s)) = (more, last) {
                    body["next_token"] = json!(format!("n{s}"));
                }
                Ok::<_, Error>(body)
            })
            .await
    }
}
