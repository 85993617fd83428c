-- Schema version 20: what the admin API (Synapse-compatible, `/_synapse/admin`) manages.

-- Locked accounts cannot use their sessions (401 M_USER_LOCKED) until unlocked; suspended ones
-- may read and leave but not send, join, invite or change their profile (403 M_USER_SUSPENDED);
-- erased ones were
-- deactivated with `erase` (profile cleared, shown as erased); shadow-banned ones get success
-- answers while what they send goes nowhere; `user_type` is Synapse's (`bot`, `support`, NULL).
ALTER TABLE users ADD COLUMN locked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN shadow_banned INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN user_type TEXT;

-- Shown by whois and the devices list.
ALTER TABLE devices ADD COLUMN last_seen_user_agent TEXT;

-- Media an admin protected from quarantine.
ALTER TABLE media ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;

-- Rooms nobody on this server may join or create again (admin room block / delete with block).
CREATE TABLE blocked_rooms (
    room_id    TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    ts         INTEGER NOT NULL
);

-- Per-user message rate limits set by an admin (0/0: not limited).
CREATE TABLE ratelimit_overrides (
    user_id             TEXT PRIMARY KEY,
    messages_per_second INTEGER NOT NULL,
    burst_count         INTEGER NOT NULL
);

CREATE INDEX media_user ON media (user_id, created_ts);
CREATE INDEX reports_received ON reports (received_ts);

-- Each user's server notices room (one at a time; a new one if they left it).
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);
