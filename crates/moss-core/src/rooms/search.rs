//! `POST /search`: full-text search over the messages, names and topics of the rooms a user is
//! in (SQLite FTS5), ordered by rank or recency, with optional context around each result.
//! Encrypted rooms hold only ciphertext, so clients search those themselves.

use std::collections::HashMap;

use moss_storage::Direction;
use ruma::UserId;
use serde_json::{json, Value};

use super::{relations::served_event, visibility::Visibility};
use crate::{
    error::{Error, Result},
    Moss,
};

const ALL_KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];

/// The parsed `room_events` category of a search request.
pub struct SearchRequest {
    pub term: String,
    pub keys: Vec<String>,
    pub rooms: Option<Vec<String>>,
    pub not_rooms: Vec<String>,
    pub limit: usize,
    pub by_rank: bool,
    pub context: Option<(usize, usize)>,
    pub next_batch: Option<String>,
}

/// Longest search term, in bytes, and most words of it searched for (each one a term every
/// match must contain).
pub const MAX_SEARCH_TERM: usize = 4096;
pub const MAX_SEARCH_WORDS: usize = 32;

/// The search term as an FTS5 query: each word quoted (so no user text is FTS syntax), all
/// required.
fn fts_query(term: &str) -> (String, Vec<String>) {
    // Quotes would end the quoting, and control characters (NUL above all) are nothing a
    // message body is searched for; both are dropped.
    let words: Vec<String> = term
        .split_whitespace()
        .map(|w| w.chars().filter(|c| *c != '"' && !c.is_control()).collect::<String>())
        .filter(|w| !w.is_empty())
        .take(MAX_SEARCH_WORDS)
        .collect();
    let query = words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" ");
    (query, words.into_iter().map(|w| w.to_lowercase()).collect())
}

impl Moss {
    pub async fn search(&self, user: &UserId, req: SearchRequest) -> Result<Value> {
        for k in &req.keys {
            if !ALL_KEYS.contains(&k.as_str()) {
                return Err(Error::invalid_param(format!("cannot search {k:?}; keys are {ALL_KEYS:?}")));
            }
        }
        let offset = match &req.next_batch {
            Some(t) => t
                .strip_prefix('o')
                .and_then(|n| n.parse::<i64>().ok())
                .filter(|n| *n >= 0)
                .ok_or_else(|| Error::invalid_param(format!("invalid next_batch {t:?}")))?,
            None => 0,
        };
        if req.term.len() > MAX_SEARCH_TERM {
            return Err(Error::invalid_param(format!("a search term may be at most {MAX_SEARCH_TERM} bytes")));
        }
        let (query, highlights) = fts_query(&req.term);
        let u = user.to_string();
        self.db
            .read(move |r| {
                let mut rooms = r.rooms_with_membership(&u, "join")?;
                if let Some(only) = &req.rooms {
                    rooms.retain(|room| only.contains(room));
                }
                rooms.retain(|room| !req.not_rooms.contains(room));
                let limit = req.limit.clamp(1, 100) as i64;
                let keys: Vec<&str> =
                    if req.keys.is_empty() { ALL_KEYS.to_vec() } else { req.keys.iter().map(String::as_str).collect() };
                let (rows, count) = if query.is_empty() || rooms.is_empty() {
                    (vec![], 0)
                } else {
                    r.search_events(&query, &rooms, &keys, req.by_rank, offset, limit)?
                };
                let fetched = rows.len() as i64;
                let mut visibility: HashMap<String, Visibility<'_, '_>> = HashMap::new();
                let mut results = Vec::new();
                for (row, rank) in rows {
                    let vis = match visibility.entry(row.room_id.clone()) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(Visibility::new(r, &row.room_id, &u)?),
                    };
                    if !vis.can_see(&row)? {
                        continue;
                    }
                    let mut result = json!({"rank": -rank, "result": served_event(r, &row, &u, None)?});
                    if let Some((before_n, after_n)) = req.context {
                        let mut before = Vec::new();
                        for e in
                            r.room_events(&row.room_id, row.stream - 1, None, Direction::Backward, before_n as i64)?
                        {
                            if vis.can_see(&e)? {
                                before.push(served_event(r, &e, &u, None)?);
                            }
                        }
                        let mut after = Vec::new();
                        for e in r.room_events(&row.room_id, row.stream, None, Direction::Forward, after_n as i64)? {
                            if vis.can_see(&e)? {
                                after.push(served_event(r, &e, &u, None)?);
                            }
                        }
                        result["context"] = json!({
                            "events_before": before,
                            "events_after": after,
                            "start": super::read::token(row.stream - 1),
                            "end": super::read::token(row.stream),
                        });
                    }
                    results.push(result);
                }
                let mut out = json!({"count": count, "highlights": highlights, "results": results});
                if offset + fetched < count && fetched == limit {
                    out["next_batch"] = json!(format!("o{}", offset + fetched));
                }
                Ok(json!({"search_categories": {"room_events": out}}))
            })
            .await
    }
}
