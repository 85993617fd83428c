-- Schema version 8: presence, content reports, short-lived login tokens (login/get_token).

-- A user's presence as last set. `stream` moves only when state or status message change, so
-- syncs report changes; last_active_ts is refreshed more often without waking anyone.
CREATE TABLE presence (
    user_id        TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    status_msg     TEXT,
    last_active_ts INTEGER NOT NULL,
    stream         INTEGER NOT NULL
);
CREATE INDEX presence_stream ON presence (stream);

-- Reports of rooms and events for the server's administrators (`moss reports`).
CREATE TABLE reports (
    id          INTEGER PRIMARY KEY,
    reporter    TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    event_id    TEXT,
    reason      TEXT,
    score       INTEGER,
    received_ts INTEGER NOT NULL
);

-- One-time tokens from login/get_token, exchanged for a session on a new device.
CREATE TABLE login_tokens (
    token      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts INTEGER NOT NULL
);
