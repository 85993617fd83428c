//! Queries over event relations (threads, edits, reactions, references) and the full-text search
//! index. Both indexes are kept by triggers on `events` (schema 7).

use std::collections::HashSet;

use crate::params;

use crate::{
    backend::Dialect,
    queries::{event_row, EVENT_COLS},
    Direction, EventRow, Reader, Result,
};

/// A thread's summary for bundling into its root event.
#[derive(Debug, Clone)]
pub struct ThreadSummary {
    pub count: i64,
    pub latest_stream: i64,
    pub user_participated: bool,
}

/// The event columns qualified with a table alias, for joins.
fn event_cols_of(alias: &str) -> String {
    EVENT_COLS.split(", ").map(|c| format!("{alias}.{}", c.trim())).collect::<Vec<_>>().join(", ")
}

impl Reader<'_> {
    pub fn has_relations(&self, event_id: &str) -> Result<bool> {
        Ok(self
            .one("SELECT 1 FROM event_relations WHERE relates_to = ?1 LIMIT 1", [event_id], |r| r.get::<_, i64>(0))?
            .is_some())
    }

    /// Which of `event_ids` have an event relating to them (one statement for a whole timeline;
    /// only those get their relations bundled).
    pub fn events_with_relations(&self, event_ids: &[&str]) -> Result<HashSet<String>> {
        if event_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let ids = serde_json::to_string(event_ids)?;
        let each = self.sql("SELECT value FROM json_each(?1)", "SELECT jsonb_array_elements_text(?1::jsonb)");
        let found = self.collect(
            &format!("SELECT DISTINCT relates_to FROM event_relations WHERE relates_to IN ({each})"),
            [ids],
            |r| r.get::<_, String>(0),
        )?;
        Ok(found.into_iter().collect())
    }

    /// Events relating to `event_id` (to any of `targets`), optionally of one relation type and
    /// event type, paginated by stream position: after `from` in `dir`, not past `to`, at most
    /// `limit`, and never after `cap` (what the reader may see).
    #[allow(clippy::too_many_arguments)]
    pub fn relating_events(
        &self,
        targets: &[String],
        rel_type: Option<&str>,
        kind: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
        dir: Direction,
        limit: i64,
        cap: i64,
    ) -> Result<Vec<EventRow>> {
        let targets = serde_json::to_string(targets)?;
        let (lo, hi, order) = match dir {
            Direction::Backward => (to.unwrap_or(-1), from.map(|f| f - 1).unwrap_or(i64::MAX).min(cap), "DESC"),
            Direction::Forward => (from.unwrap_or(-1), to.unwrap_or(i64::MAX).min(cap), "ASC"),
        };
        let cols = event_cols_of("e");
        let each = self.sql("SELECT value FROM json_each(?1)", "SELECT jsonb_array_elements_text(?1::jsonb)");
        self.collect(
            &format!(
                "SELECT {cols} FROM event_relations r JOIN events e ON e.stream = r.stream \
                 WHERE r.relates_to IN ({each}) \
                   AND (CAST(?2 AS TEXT) IS NULL OR r.rel_type = ?2) AND (CAST(?3 AS TEXT) IS NULL OR r.type = ?3) \
                   AND r.stream > ?4 AND r.stream <= ?5 \
                 ORDER BY r.stream {order} LIMIT ?6"
            ),
            params![targets, rel_type, kind, lo, hi, limit],
            event_row,
        )
    }

    pub fn thread_summary(&self, root: &str, user: &str) -> Result<Option<ThreadSummary>> {
        self.one(
            "SELECT COUNT(*), MAX(stream), MAX(CASE WHEN sender = ?2 THEN 1 ELSE 0 END) FROM event_relations \
             WHERE relates_to = ?1 AND rel_type = 'm.thread' HAVING COUNT(*) > 0",
            [root, user],
            |r| Ok(ThreadSummary { count: r.get(0)?, latest_stream: r.get(1)?, user_participated: r.get(2)? }),
        )
    }

    pub fn event_at(&self, stream: i64) -> Result<Option<EventRow>> {
        self.one(&format!("SELECT {EVENT_COLS} FROM events WHERE stream = ?1"), [stream], event_row)
    }

    /// The latest replacement of `event_id` sent by `sender` (only the original sender may edit).
    pub fn latest_edit(&self, event_id: &str, sender: &str) -> Result<Option<EventRow>> {
        let cols = event_cols_of("e");
        self.one(
            &format!(
                "SELECT {cols} FROM event_relations r JOIN events e ON e.stream = r.stream \
                 WHERE r.relates_to = ?1 AND r.rel_type = 'm.replace' AND r.sender = ?2 \
                 ORDER BY e.origin_server_ts DESC, e.event_id DESC LIMIT 1"
            ),
            [event_id, sender],
            event_row,
        )
    }

    /// `(event type, key, count)` of the annotations (reactions) on an event.
    pub fn annotations(&self, event_id: &str) -> Result<Vec<(String, String, i64)>> {
        self.collect(
            "SELECT type, key, COUNT(*) FROM event_relations \
             WHERE relates_to = ?1 AND rel_type = 'm.annotation' AND key IS NOT NULL \
             GROUP BY type, key ORDER BY COUNT(*) DESC, MIN(stream) LIMIT 100",
            [event_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }

    pub fn references(&self, event_id: &str) -> Result<Vec<String>> {
        self.collect(
            "SELECT event_id FROM event_relations WHERE relates_to = ?1 AND rel_type = 'm.reference' \
             ORDER BY stream LIMIT 100",
            [event_id],
            |r| r.get(0),
        )
    }

    /// Thread roots of a room by latest activity, newest first: `(root event id, latest stream)`
    /// with latest activity before `before`; only threads `participant` took part in if given.
    pub fn thread_roots(
        &self,
        room_id: &str,
        participant: Option<&str>,
        before: i64,
        cap: i64,
        limit: i64,
    ) -> Result<Vec<(String, i64)>> {
        self.collect(
            "SELECT t.relates_to, t.latest FROM ( \
                 SELECT relates_to, MAX(stream) AS latest FROM event_relations \
                 WHERE room_id = ?1 AND rel_type = 'm.thread' AND stream <= ?4 GROUP BY relates_to \
             ) t \
             WHERE t.latest < ?3 AND (CAST(?2 AS TEXT) IS NULL \
                 OR EXISTS (SELECT 1 FROM event_relations x WHERE x.relates_to = t.relates_to \
                            AND x.rel_type = 'm.thread' AND x.sender = ?2) \
                 OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = t.relates_to AND e.sender = ?2)) \
             ORDER BY t.latest DESC LIMIT ?5",
            params![room_id, participant, before, cap, limit],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Full-text search in `rooms` over the index `keys` (`content.body`, `content.name`,
    /// `content.topic`). `query` is an FTS5 expression. Ordered by rank or by recency; returns
    /// `(event, rank)` and the total number of matches.
    pub fn search_events(
        &self,
        query: &str,
        rooms: &[String],
        keys: &[&str],
        by_rank: bool,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<(EventRow, f64)>, i64)> {
        let rooms = serde_json::to_string(rooms)?;
        let keys = serde_json::to_string(keys)?;
        let cols = event_cols_of("e");
        // FTS5's bm25 rank is lower for better matches; PostgreSQL's ts_rank higher, so negated.
        let (filter, rank) = match self.dialect() {
            Dialect::Sqlite => (
                "event_search MATCH ?1 AND s.key IN (SELECT value FROM json_each(?3)) \
                 AND e.room_id IN (SELECT value FROM json_each(?2))",
                "s.rank",
            ),
            Dialect::Postgres => (
                "s.tsv @@ websearch_to_tsquery('simple', ?1) \
                 AND s.key IN (SELECT jsonb_array_elements_text(?3::jsonb)) \
                 AND e.room_id IN (SELECT jsonb_array_elements_text(?2::jsonb))",
                "-ts_rank(s.tsv, websearch_to_tsquery('simple', ?1))::float8",
            ),
        };
        let order = if by_rank { "rank, e.stream DESC" } else { "e.stream DESC" };
        let rows = self.collect(
            &format!(
                "SELECT {cols}, {rank} AS rank FROM event_search s JOIN events e ON e.stream = s.rowid \
                 WHERE {filter} ORDER BY {order} LIMIT ?4 OFFSET ?5"
            ),
            params![query, rooms, keys, limit, offset],
            |r| Ok((event_row(r)?, r.get::<_, f64>(13)?)),
        )?;
        let count = self
            .one(
                &format!("SELECT COUNT(*) FROM event_search s JOIN events e ON e.stream = s.rowid WHERE {filter}"),
                params![query, rooms, keys],
                |r| r.get(0),
            )?
            .unwrap_or(0);
        Ok((rows, count))
    }
}
