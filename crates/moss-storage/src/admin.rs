//! Queries for the admin API: accounts, rooms, reports and media as an operator sees them, with
//! the filters, orders and offsets of Synapse's `/_synapse/admin` lists, and purging a room.
//!
//! Orders are enums mapped to fixed column names here, so no caller text reaches the SQL.

use crate::{
    backend::{OwnedValue, Row},
    params,
};

use crate::{
    queries::{media_row, MEDIA_COLS},
    MediaRow, Reader, Result, Writer,
};

/// `LIKE` pattern matching `term` anywhere, its wildcards taken literally (with `ESCAPE '\'`).
pub fn like_anywhere(term: &str) -> String {
    format!("%{}%", term.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

/// An account with everything the admin API shows of it.
#[derive(Debug, Clone)]
pub struct AdminUserRow {
    pub user_id: String,
    pub admin: bool,
    pub deactivated: bool,
    pub created_ts: i64,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub locked: bool,
    pub suspended: bool,
    pub erased: bool,
    pub shadow_banned: bool,
    pub user_type: Option<String>,
    pub has_password: bool,
    /// Newest `last_seen_ts` over the account's devices.
    pub last_seen_ts: Option<i64>,
}

const ADMIN_USER_COLS: &str = "u.user_id, u.admin, u.deactivated, u.created_ts, u.displayname, u.avatar_url, \
     u.locked, u.erased, u.shadow_banned, u.user_type, u.password_hash IS NOT NULL, \
     (SELECT MAX(d.last_seen_ts) FROM devices d WHERE d.user_id = u.user_id), u.suspended";

fn admin_user_row(r: &Row<'_>) -> Result<AdminUserRow> {
    Ok(AdminUserRow {
        user_id: r.get(0)?,
        admin: r.get(1)?,
        deactivated: r.get(2)?,
        created_ts: r.get(3)?,
        displayname: r.get(4)?,
        avatar_url: r.get(5)?,
        locked: r.get(6)?,
        erased: r.get(7)?,
        shadow_banned: r.get(8)?,
        user_type: r.get(9)?,
        has_password: r.get(10)?,
        last_seen_ts: r.get(11)?,
        suspended: r.get(12)?,
    })
}

/// What the users list may be sorted by (Synapse's `order_by` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserOrder {
    Name,
    DisplayName,
    IsGuest,
    Admin,
    Deactivated,
    UserType,
    AvatarUrl,
    ShadowBanned,
    CreationTs,
    LastSeenTs,
    Locked,
}

impl UserOrder {
    fn column(self) -> &'static str {
        match self {
            UserOrder::Name => "u.user_id",
            UserOrder::DisplayName => "u.displayname",
            UserOrder::IsGuest => "0",
            UserOrder::Admin => "u.admin",
            UserOrder::Deactivated => "u.deactivated",
            UserOrder::UserType => "u.user_type",
            UserOrder::AvatarUrl => "u.avatar_url",
            UserOrder::ShadowBanned => "u.shadow_banned",
            UserOrder::CreationTs => "u.created_ts",
            UserOrder::LastSeenTs => "12",
            UserOrder::Locked => "u.locked",
        }
    }
}

/// A page of a list: skip `from`, take `limit`, `forward` is ascending.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub from: i64,
    pub limit: i64,
    pub forward: bool,
}

impl Page {
    fn dir(&self) -> &'static str {
        if self.forward {
            "ASC"
        } else {
            "DESC"
        }
    }
}

/// The users list's filters.
#[derive(Debug, Clone, Default)]
pub struct UserFilter {
    /// Substring of the localpart or of the display name.
    pub name: Option<String>,
    /// Substring of the whole user id (ignored when `name` is given).
    pub user_id: Option<String>,
    pub include_deactivated: bool,
    pub include_locked: bool,
    /// Only admins (`Some(true)`), only non-admins (`Some(false)`), or both.
    pub admins: Option<bool>,
}

/// A room with what the admin API's room list and details show.
#[derive(Debug, Clone)]
pub struct AdminRoomRow {
    pub room_id: String,
    pub version: String,
    pub creator: String,
    pub public: bool,
    pub name: Option<String>,
    pub canonical_alias: Option<String>,
    pub topic: Option<String>,
    pub avatar: Option<String>,
    pub joined_members: i64,
    pub joined_local_members: i64,
    pub state_events: i64,
    pub encryption: Option<String>,
    pub join_rules: Option<String>,
    pub guest_access: Option<String>,
    pub history_visibility: Option<String>,
    /// `m.federate` of the create event (absent means true).
    pub federatable: bool,
    pub room_type: Option<String>,
}

/// What the room list may be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomOrder {
    Name,
    CanonicalAlias,
    JoinedMembers,
    JoinedLocalMembers,
    Version,
    Creator,
    Encryption,
    Federatable,
    Public,
    JoinRules,
    GuestAccess,
    HistoryVisibility,
    StateEvents,
}

impl RoomOrder {
    fn column(self) -> &'static str {
        match self {
            RoomOrder::Name => "name",
            RoomOrder::CanonicalAlias => "canonical_alias",
            RoomOrder::JoinedMembers => "joined_members",
            RoomOrder::JoinedLocalMembers => "joined_local_members",
            RoomOrder::Version => "version",
            RoomOrder::Creator => "creator",
            RoomOrder::Encryption => "encryption",
            RoomOrder::Federatable => "federatable",
            RoomOrder::Public => "public",
            RoomOrder::JoinRules => "join_rules",
            RoomOrder::GuestAccess => "guest_access",
            RoomOrder::HistoryVisibility => "history_visibility",
            RoomOrder::StateEvents => "state_events",
        }
    }
}

/// One room's facts as a subquery over its current state: `?1` is the local server's
/// `LIKE` suffix (`%:server`).
fn room_select() -> String {
    let state = |kind: &str, path: &str| {
        format!(
            "(SELECT json_extract(e.pdu, '$.content.{path}') FROM current_state c JOIN events e ON e.event_id = c.event_id \
             WHERE c.room_id = r.room_id AND c.type = '{kind}' AND c.state_key = '')"
        )
    };
    format!(
        "SELECT * FROM (SELECT r.room_id AS room_id, r.room_version AS version, r.creator AS creator, \
             r.published AS public, {name} AS name, {alias} AS canonical_alias, {topic} AS topic, {avatar} AS avatar, \
             (SELECT COUNT(*) FROM memberships m WHERE m.room_id = r.room_id AND m.membership = 'join') AS joined_members, \
             (SELECT COUNT(*) FROM memberships m WHERE m.room_id = r.room_id AND m.membership = 'join' \
                 AND m.user_id LIKE ?1) AS joined_local_members, \
             (SELECT COUNT(*) FROM current_state c WHERE c.room_id = r.room_id) AS state_events, \
             {encryption} AS encryption, {join_rules} AS join_rules, {guest} AS guest_access, \
             {history} AS history_visibility, {federate} AS federatable, {room_type} AS room_type \
         FROM rooms r WHERE EXISTS (SELECT 1 FROM current_state c WHERE c.room_id = r.room_id)) AS rooms_view",
        name = state("m.room.name", "name"),
        alias = state("m.room.canonical_alias", "alias"),
        topic = state("m.room.topic", "topic"),
        avatar = state("m.room.avatar", "url"),
        encryption = state("m.room.encryption", "algorithm"),
        join_rules = state("m.room.join_rules", "join_rule"),
        guest = state("m.room.guest_access", "guest_access"),
        history = state("m.room.history_visibility", "history_visibility"),
        // Only an explicit `false` stops federation (json_type names JSON's booleans on both).
        federate = "(SELECT CASE WHEN json_type(e.pdu, '$.content.\"m.federate\"') = 'false' THEN 0 ELSE 1 END \
             FROM current_state c JOIN events e ON e.event_id = c.event_id \
             WHERE c.room_id = r.room_id AND c.type = 'm.room.create' AND c.state_key = '')",
        room_type = state("m.room.create", "type"),
    )
}

fn admin_room_row(r: &Row<'_>) -> Result<AdminRoomRow> {
    let text = |i: usize| -> Result<Option<String>> {
        // State content may hold a non-string where a string belongs: show nothing then.
        Ok(match r.get_value(i)? {
            OwnedValue::Text(t) => Some(t),
            _ => None,
        })
    };
    Ok(AdminRoomRow {
        room_id: r.get(0)?,
        version: r.get(1)?,
        creator: r.get(2)?,
        public: r.get(3)?,
        name: text(4)?,
        canonical_alias: text(5)?,
        topic: text(6)?,
        avatar: text(7)?,
        joined_members: r.get(8)?,
        joined_local_members: r.get(9)?,
        state_events: r.get(10)?,
        encryption: text(11)?,
        join_rules: text(12)?,
        guest_access: text(13)?,
        history_visibility: text(14)?,
        federatable: !matches!(r.get_value(15)?, OwnedValue::Int(0)),
        room_type: text(16)?,
    })
}

/// A forward extremity of a room (an event with no children yet).
#[derive(Debug, Clone)]
pub struct ExtremityRow {
    pub event_id: String,
    pub depth: i64,
    /// The event's `origin_server_ts` (moss does not keep arrival times).
    pub received_ts: i64,
    pub state_group: Option<i64>,
}

/// An event report with what the admin API shows next to it.
#[derive(Debug, Clone)]
pub struct AdminReportRow {
    pub id: i64,
    pub received_ts: i64,
    pub room_id: String,
    pub event_id: Option<String>,
    pub reporter: String,
    pub reason: Option<String>,
    pub score: Option<i64>,
    /// The reported event's sender and PDU, when the event is known.
    pub sender: Option<String>,
    pub pdu: Option<String>,
}

const REPORT_COLS: &str = "p.id, p.received_ts, p.room_id, p.event_id, p.reporter, p.reason, p.score, e.sender, e.pdu";

fn admin_report_row(r: &Row<'_>) -> Result<AdminReportRow> {
    Ok(AdminReportRow {
        id: r.get(0)?,
        received_ts: r.get(1)?,
        room_id: r.get(2)?,
        event_id: r.get(3)?,
        reporter: r.get(4)?,
        reason: r.get(5)?,
        score: r.get(6)?,
        sender: r.get(7)?,
        pdu: r.get(8)?,
    })
}

/// The report list's filters.
#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    pub room_id: Option<String>,
    /// Substring of the reporter's id.
    pub user_id: Option<String>,
    /// Substring of the reported event's sender.
    pub event_sender: Option<String>,
}

/// One local upload as the admin API lists it: its record and what only the admin API shows.
#[derive(Debug, Clone)]
pub struct AdminMediaRow {
    pub media: MediaRow,
    pub last_access_ts: Option<i64>,
    pub sha256: Option<String>,
    pub protected: bool,
}

/// [`MEDIA_COLS`] (columns 0–9) and the admin's (10–12).
fn admin_media_cols() -> String {
    format!("{MEDIA_COLS}, last_access_ts, sha256, protected")
}

fn admin_media_row(r: &Row<'_>) -> Result<AdminMediaRow> {
    Ok(AdminMediaRow { media: media_row(r)?, last_access_ts: r.get(10)?, sha256: r.get(11)?, protected: r.get(12)? })
}

/// What a user's media list may be sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaOrder {
    MediaId,
    UploadName,
    CreatedTs,
    LastAccessTs,
    MediaLength,
    MediaType,
    QuarantinedBy,
    SafeFromQuarantine,
}

impl MediaOrder {
    fn column(self) -> &'static str {
        match self {
            MediaOrder::MediaId => "media_id",
            MediaOrder::UploadName => "filename",
            MediaOrder::CreatedTs => "created_ts",
            MediaOrder::LastAccessTs => "last_access_ts",
            MediaOrder::MediaLength => "size",
            MediaOrder::MediaType => "content_type",
            MediaOrder::QuarantinedBy => "quarantined",
            MediaOrder::SafeFromQuarantine => "protected",
        }
    }
}

/// Uploads per user, for the media statistics.
#[derive(Debug, Clone)]
pub struct UserMediaStats {
    pub user_id: String,
    pub displayname: Option<String>,
    pub media_count: i64,
    pub media_length: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaStatsOrder {
    UserId,
    DisplayName,
    MediaLength,
    MediaCount,
}

impl MediaStatsOrder {
    fn column(self) -> &'static str {
        match self {
            MediaStatsOrder::UserId => "user_id",
            MediaStatsOrder::DisplayName => "displayname",
            MediaStatsOrder::MediaLength => "media_length",
            MediaStatsOrder::MediaCount => "media_count",
        }
    }
}

impl Reader<'_> {
    // ---- users ----

    pub fn admin_users(&self, f: &UserFilter, order: UserOrder, page: Page) -> Result<(Vec<AdminUserRow>, i64)> {
        let name = f.name.as_deref().map(|n| (format!("@{}", like_anywhere(n)) + ":%", like_anywhere(n)));
        let id = if name.is_none() { f.user_id.as_deref().map(like_anywhere) } else { None };
        let filter =
            "(CAST(?1 AS TEXT) IS NULL OR u.user_id LIKE ?1 ESCAPE '\\' OR u.displayname LIKE ?2 ESCAPE '\\') \
             AND (CAST(?3 AS TEXT) IS NULL OR u.user_id LIKE ?3 ESCAPE '\\') AND (?4 OR u.deactivated = 0) \
             AND (?5 OR u.locked = 0) AND (CAST(?6 AS BIGINT) IS NULL OR u.admin = ?6)";
        let (n1, n2) = match &name {
            Some((a, b)) => (Some(a.as_str()), Some(b.as_str())),
            None => (None, None),
        };
        let rows = self.collect(
            &format!(
                "SELECT {ADMIN_USER_COLS} FROM users u WHERE {filter} ORDER BY {} {}, u.user_id ASC LIMIT ?7 OFFSET ?8",
                order.column(),
                page.dir()
            ),
            params![n1, n2, id, f.include_deactivated, f.include_locked, f.admins, page.limit, page.from],
            admin_user_row,
        )?;
        let total = self
            .one(
                &format!("SELECT COUNT(*) FROM users u WHERE {filter}"),
                params![n1, n2, id, f.include_deactivated, f.include_locked, f.admins],
                |r| r.get(0),
            )?
            .unwrap_or(0);
        Ok((rows, total))
    }

    pub fn admin_user(&self, user_id: &str) -> Result<Option<AdminUserRow>> {
        self.one(&format!("SELECT {ADMIN_USER_COLS} FROM users u WHERE u.user_id = ?1"), [user_id], admin_user_row)
    }

    /// Whether an admin suspended or shadow-banned the account, in one lookup for the send
    /// path (false, false for unknown users).
    pub fn restrictions(&self, user_id: &str) -> Result<(bool, bool)> {
        Ok(self
            .one("SELECT suspended, shadow_banned FROM users WHERE user_id = ?1", [user_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .unwrap_or((false, false)))
    }

    /// Servers other than this one (`local` is `%:server`) with users joined to rooms here.
    pub fn remote_servers_in_rooms(&self, local: &str) -> Result<Vec<String>> {
        self.collect(
            "SELECT DISTINCT substr(user_id, instr(user_id, ':') + 1) FROM memberships \
             WHERE membership = 'join' AND user_id NOT LIKE ?1",
            [local],
            |r| r.get(0),
        )
    }

    /// Rooms a server has users joined to, with the newest event's stream position.
    pub fn rooms_with_server(&self, server: &str) -> Result<Vec<(String, i64)>> {
        self.collect(
            "SELECT m.room_id, COALESCE((SELECT MAX(e.stream) FROM events e WHERE e.room_id = m.room_id), 0) \
             FROM memberships m WHERE m.membership = 'join' AND m.user_id LIKE ?1 GROUP BY m.room_id ORDER BY m.room_id",
            [format!("%:{server}")],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Every per-user message rate limit an admin set: `(user, per second, burst)`.
    pub fn ratelimit_overrides(&self) -> Result<Vec<(String, i64, i64)>> {
        self.collect("SELECT user_id, messages_per_second, burst_count FROM ratelimit_overrides", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    }

    /// The `limit` rooms taking the most space (the bytes of their stored events).
    pub fn largest_rooms(&self, limit: i64) -> Result<Vec<(String, i64)>> {
        self.collect(
            "SELECT room_id, SUM(LENGTH(pdu)) AS size FROM events GROUP BY room_id ORDER BY size DESC LIMIT ?1",
            [limit],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Ids of this server's media (`prefix` is `mxc://server/`) that the room's events point
    /// at (`content.url`, `content.info.thumbnail_url`).
    pub fn media_in_room(&self, room_id: &str, prefix: &str) -> Result<Vec<String>> {
        self.collect(
            "SELECT DISTINCT substr(u, length(?2) + 1) FROM ( \
                 SELECT json_extract(pdu, '$.content.url') AS u FROM events WHERE room_id = ?1 \
                 UNION SELECT json_extract(pdu, '$.content.info.thumbnail_url') FROM events WHERE room_id = ?1) AS urls \
             WHERE typeof(u) = 'text' AND substr(u, 1, length(?2)) = ?2",
            params![room_id, prefix],
            |r| r.get(0),
        )
    }

    /// Every account data entry of a user, global ones with an empty room id.
    pub fn all_account_data(&self, user_id: &str) -> Result<Vec<(String, String, String)>> {
        self.collect("SELECT room_id, type, content FROM account_data WHERE user_id = ?1", [user_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
    }

    pub fn server_notice_room(&self, user_id: &str) -> Result<Option<String>> {
        self.one("SELECT room_id FROM server_notice_rooms WHERE user_id = ?1", [user_id], |r| r.get(0))
    }

    pub fn ratelimit_override(&self, user_id: &str) -> Result<Option<(i64, i64)>> {
        self.one(
            "SELECT messages_per_second, burst_count FROM ratelimit_overrides WHERE user_id = ?1",
            [user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    // ---- rooms ----

    /// Rooms whose name, canonical alias or id contains `search`, a page in `order`, and how many
    /// match.
    pub fn admin_rooms(
        &self,
        server: &str,
        search: Option<&str>,
        order: RoomOrder,
        page: Page,
    ) -> Result<(Vec<AdminRoomRow>, i64)> {
        let local = format!("%:{server}");
        let pattern = search.map(like_anywhere);
        let filter = "(CAST(?2 AS TEXT) IS NULL OR name LIKE ?2 ESCAPE '\\' OR canonical_alias LIKE ?2 ESCAPE '\\' \
             OR room_id LIKE ?2 ESCAPE '\\')";
        let base = room_select();
        // Rooms without a value for the order's column come last whichever the direction.
        let rows = self.collect(
            &format!(
                "{base} WHERE {filter} ORDER BY {col} IS NULL, {col} {dir}, room_id ASC LIMIT ?3 OFFSET ?4",
                col = order.column(),
                dir = page.dir()
            ),
            params![local, pattern, page.limit, page.from],
            admin_room_row,
        )?;
        let total = self.one(
            &format!("SELECT COUNT(*) FROM ({base} WHERE {filter}) AS matching"),
            params![local, pattern],
            |r| r.get(0),
        )?;
        Ok((rows, total.unwrap_or(0)))
    }

    pub fn admin_room(&self, server: &str, room_id: &str) -> Result<Option<AdminRoomRow>> {
        self.one(
            &format!("{} WHERE room_id = ?2", room_select()),
            params![format!("%:{server}"), room_id],
            admin_room_row,
        )
    }

    /// The room's forward extremities with their depth and when they arrived.
    pub fn forward_extremities_detail(&self, room_id: &str) -> Result<Vec<ExtremityRow>> {
        self.collect(
            "SELECT f.event_id, COALESCE(CAST(json_extract(e.pdu, '$.depth') AS BIGINT), 0), COALESCE(e.origin_server_ts, 0), e.state_group \
             FROM forward_extremities f LEFT JOIN events e ON e.event_id = f.event_id WHERE f.room_id = ?1",
            [room_id],
            |r| Ok(ExtremityRow { event_id: r.get(0)?, depth: r.get(1)?, received_ts: r.get(2)?, state_group: r.get(3)? }),
        )
    }

    pub fn room_blocked(&self, room_id: &str) -> Result<Option<String>> {
        self.one("SELECT blocked_by FROM blocked_rooms WHERE room_id = ?1", [room_id], |r| r.get(0))
    }

    /// Every user with any membership in the room, with it.
    pub fn room_memberships(&self, room_id: &str) -> Result<Vec<(String, String)>> {
        self.collect(
            "SELECT user_id, membership FROM memberships WHERE room_id = ?1 ORDER BY user_id",
            [room_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    // ---- reports ----

    pub fn admin_reports(&self, f: &ReportFilter, page: Page) -> Result<(Vec<AdminReportRow>, i64)> {
        let filter = "(CAST(?1 AS TEXT) IS NULL OR p.room_id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR p.reporter LIKE ?2 ESCAPE '\\') \
             AND (CAST(?3 AS TEXT) IS NULL OR e.sender LIKE ?3 ESCAPE '\\')";
        let (user, sender) = (f.user_id.as_deref().map(like_anywhere), f.event_sender.as_deref().map(like_anywhere));
        let rows = self.collect(
            &format!(
                "SELECT {REPORT_COLS} FROM reports p LEFT JOIN events e ON e.event_id = p.event_id WHERE {filter} \
                 ORDER BY p.received_ts {dir}, p.id {dir} LIMIT ?4 OFFSET ?5",
                dir = page.dir()
            ),
            params![f.room_id, user, sender, page.limit, page.from],
            admin_report_row,
        )?;
        let total = self.one(
            &format!("SELECT COUNT(*) FROM reports p LEFT JOIN events e ON e.event_id = p.event_id WHERE {filter}"),
            params![f.room_id, user, sender],
            |r| r.get(0),
        )?;
        Ok((rows, total.unwrap_or(0)))
    }

    pub fn admin_report(&self, id: i64) -> Result<Option<AdminReportRow>> {
        self.one(
            &format!(
                "SELECT {REPORT_COLS} FROM reports p LEFT JOIN events e ON e.event_id = p.event_id WHERE p.id = ?1"
            ),
            [id],
            admin_report_row,
        )
    }

    // ---- media ----

    pub fn admin_user_media(&self, user_id: &str, order: MediaOrder, page: Page) -> Result<(Vec<AdminMediaRow>, i64)> {
        let rows = self.collect(
            &format!(
                "SELECT {} FROM media WHERE user_id = ?1 AND content_key IS NOT NULL \
                 ORDER BY {} {}, media_id ASC LIMIT ?2 OFFSET ?3",
                admin_media_cols(),
                order.column(),
                page.dir()
            ),
            params![user_id, page.limit, page.from],
            admin_media_row,
        )?;
        let total =
            self.one("SELECT COUNT(*) FROM media WHERE user_id = ?1 AND content_key IS NOT NULL", [user_id], |r| {
                r.get(0)
            })?;
        Ok((rows, total.unwrap_or(0)))
    }

    pub fn admin_media(&self, media_id: &str) -> Result<Option<AdminMediaRow>> {
        self.one(&format!("SELECT {} FROM media WHERE media_id = ?1", admin_media_cols()), [media_id], admin_media_row)
    }

    /// Another server's item kept here, in the same shape (no uploader, never protected).
    pub fn admin_remote_media(&self, origin: &str, media_id: &str) -> Result<Option<AdminMediaRow>> {
        self.one(
            "SELECT media_id, '', created_ts, NULL, content_key, content_type, filename, size, 0, quarantined, \
                    last_access_ts, sha256, 0 \
             FROM remote_media WHERE origin = ?1 AND media_id = ?2",
            [origin, media_id],
            admin_media_row,
        )
    }

    /// Local uploads before `before_ts` larger than `size_gt`, optionally sparing any used as an
    /// avatar, and never protected ones.
    pub fn media_to_delete(
        &self,
        server: &str,
        before_ts: i64,
        size_gt: i64,
        keep_profiles: bool,
    ) -> Result<Vec<String>> {
        self.collect(
            "SELECT m.media_id FROM media m WHERE m.created_ts < ?1 AND COALESCE(m.size, 0) > ?2 \
             AND m.protected = 0 AND m.content_key IS NOT NULL \
             AND NOT (?3 AND EXISTS (SELECT 1 FROM users u WHERE u.avatar_url = 'mxc://' || ?4 || '/' || m.media_id))",
            params![before_ts, size_gt, keep_profiles, server],
            |r| r.get(0),
        )
    }

    pub fn media_stats_by_user(
        &self,
        search: Option<&str>,
        order: MediaStatsOrder,
        page: Page,
    ) -> Result<(Vec<UserMediaStats>, i64)> {
        let pattern = search.map(like_anywhere);
        let base = "SELECT m.user_id AS user_id, u.displayname AS displayname, COUNT(*) AS media_count, \
             COALESCE(SUM(m.size), 0) AS media_length FROM media m LEFT JOIN users u ON u.user_id = m.user_id \
             WHERE m.content_key IS NOT NULL AND (CAST(?1 AS TEXT) IS NULL OR m.user_id LIKE ?1 ESCAPE '\\' \
                 OR u.displayname LIKE ?1 ESCAPE '\\') \
             GROUP BY m.user_id, u.displayname";
        let rows = self.collect(
            &format!("{base} ORDER BY {} {}, user_id ASC LIMIT ?2 OFFSET ?3", order.column(), page.dir()),
            params![pattern, page.limit, page.from],
            |r| {
                Ok(UserMediaStats {
                    user_id: r.get(0)?,
                    displayname: r.get(1)?,
                    media_count: r.get(2)?,
                    media_length: r.get(3)?,
                })
            },
        )?;
        let total = self.one(&format!("SELECT COUNT(*) FROM ({base}) AS matching"), params![pattern], |r| r.get(0))?;
        Ok((rows, total.unwrap_or(0)))
    }
}

/// Changes to an account an admin may make in one request; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub admin: Option<bool>,
    pub locked: Option<bool>,
    pub suspended: Option<bool>,
    pub shadow_banned: Option<bool>,
    /// `Some(None)` clears the type.
    pub user_type: Option<Option<String>>,
}

impl Writer<'_> {
    pub fn update_admin_user(&self, user_id: &str, c: &UserChanges) -> Result<()> {
        if let Some(a) = c.admin {
            self.exec("UPDATE users SET admin = ?2 WHERE user_id = ?1", params![user_id, a])?;
        }
        if let Some(l) = c.locked {
            self.exec("UPDATE users SET locked = ?2 WHERE user_id = ?1", params![user_id, l])?;
        }
        if let Some(s) = c.suspended {
            self.exec("UPDATE users SET suspended = ?2 WHERE user_id = ?1", params![user_id, s])?;
        }
        if let Some(s) = c.shadow_banned {
            self.exec("UPDATE users SET shadow_banned = ?2 WHERE user_id = ?1", params![user_id, s])?;
        }
        if let Some(t) = &c.user_type {
            self.exec("UPDATE users SET user_type = ?2 WHERE user_id = ?1", params![user_id, t])?;
        }
        Ok(())
    }

    pub fn set_server_notice_room(&self, user_id: &str, room_id: &str) -> Result<()> {
        self.exec(
            "INSERT INTO server_notice_rooms (user_id, room_id) VALUES (?1, ?2) \
             ON CONFLICT (user_id) DO UPDATE SET room_id = ?2",
            [user_id, room_id],
        )?;
        Ok(())
    }

    pub fn reactivate(&self, user_id: &str) -> Result<bool> {
        Ok(self.exec("UPDATE users SET deactivated = 0, erased = 0 WHERE user_id = ?1", [user_id])? == 1)
    }

    /// After a deactivation with `erase`: the profile goes and the account shows as erased.
    pub fn erase_user(&self, user_id: &str) -> Result<()> {
        self.exec(
            "UPDATE users SET erased = 1, displayname = NULL, avatar_url = NULL, password_hash = NULL WHERE user_id = ?1",
            [user_id],
        )?;
        Ok(())
    }

    pub fn set_ratelimit_override(&self, user_id: &str, per_second: i64, burst: i64) -> Result<()> {
        self.exec(
            "INSERT INTO ratelimit_overrides (user_id, messages_per_second, burst_count) VALUES (?1, ?2, ?3) \
             ON CONFLICT (user_id) DO UPDATE SET messages_per_second = ?2, burst_count = ?3",
            params![user_id, per_second, burst],
        )?;
        Ok(())
    }

    pub fn delete_ratelimit_override(&self, user_id: &str) -> Result<()> {
        self.exec("DELETE FROM ratelimit_overrides WHERE user_id = ?1", [user_id])?;
        Ok(())
    }

    pub fn block_room(&self, room_id: &str, by: &str, now: i64) -> Result<()> {
        self.exec(
            "INSERT INTO blocked_rooms (room_id, blocked_by, ts) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            params![room_id, by, now],
        )?;
        Ok(())
    }

    pub fn unblock_room(&self, room_id: &str) -> Result<()> {
        self.exec("DELETE FROM blocked_rooms WHERE room_id = ?1", [room_id])?;
        Ok(())
    }

    /// Sets a registration token's limits (`None` removes a limit); false if it does not exist.
    pub fn update_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<bool> {
        Ok(self.exec(
            "UPDATE registration_tokens SET uses_allowed = ?2, expiry_ts = ?3 WHERE token = ?1",
            params![token, uses_allowed, expiry_ts],
        )? == 1)
    }

    pub fn delete_report(&self, id: i64) -> Result<bool> {
        Ok(self.exec("DELETE FROM reports WHERE id = ?1", [id])? == 1)
    }

    pub fn set_media_protected(&self, media_id: &str, protected: bool) -> Result<bool> {
        Ok(self.exec("UPDATE media SET protected = ?2 WHERE media_id = ?1", params![media_id, protected])? == 1)
    }

    /// Removes everything this server keeps of a room: its events (and their search, relation
    /// and push rows), state, memberships, aliases, receipts, room account data, reports and
    /// invites. What stays: the room's row (its version), and the memberships and membership
    /// events of this server's users (`local` is `%:server`), so that their clients still learn
    /// of their leave on the next sync; key backups (the users'); a block.
    pub fn purge_room(&self, room_id: &str, local: &str) -> Result<()> {
        let keep = "SELECT event_id FROM memberships WHERE room_id = ?1 AND user_id LIKE ?2";
        let statements = [
            format!("DELETE FROM event_search WHERE rowid IN (SELECT stream FROM events WHERE room_id = ?1 AND event_id NOT IN ({keep}))"),
            format!("DELETE FROM event_prev_refs WHERE event_id IN (SELECT event_id FROM events WHERE room_id = ?1) AND event_id NOT IN ({keep})"),
            format!("DELETE FROM event_relations WHERE room_id = ?1 AND event_id NOT IN ({keep})"),
            format!("DELETE FROM events WHERE room_id = ?1 AND event_id NOT IN ({keep})"),
            "DELETE FROM memberships WHERE room_id = ?1 AND user_id NOT LIKE ?2".to_owned(),
        ];
        for sql in &statements {
            self.exec(sql, params![room_id, local])?;
        }
        for sql in [
            "DELETE FROM push_actions WHERE room_id = ?1",
            "DELETE FROM state_group_entries WHERE group_id IN (SELECT id FROM state_groups WHERE room_id = ?1)",
            "DELETE FROM state_groups WHERE room_id = ?1",
            "DELETE FROM current_state WHERE room_id = ?1",
            "DELETE FROM forward_extremities WHERE room_id = ?1",
            "DELETE FROM room_aliases WHERE room_id = ?1",
            "DELETE FROM account_data WHERE room_id = ?1",
            "DELETE FROM receipts WHERE room_id = ?1",
            "DELETE FROM reports WHERE room_id = ?1",
            "DELETE FROM outliers WHERE room_id = ?1",
            "DELETE FROM remote_invites WHERE room_id = ?1",
            "DELETE FROM appservice_room_list WHERE room_id = ?1",
            "DELETE FROM room_list_info WHERE room_id = ?1",
        ] {
            self.exec(sql, [room_id])?;
        }
        Ok(())
    }
}
