-- Schema version 1. Never edit a released migration: add a new one to MIGRATIONS in lib.rs.

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    password_hash TEXT,
    admin         INTEGER NOT NULL DEFAULT 0,
    deactivated   INTEGER NOT NULL DEFAULT 0,
    created_ts    INTEGER NOT NULL,
    displayname   TEXT,
    avatar_url    TEXT
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts INTEGER,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

-- One row per live session. Refreshing replaces the row, so an old refresh token dies with it.
CREATE TABLE access_tokens (
    token         TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    expires_ts    INTEGER,
    refresh_token TEXT UNIQUE
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE registration_tokens (
    token         TEXT PRIMARY KEY,
    uses_allowed  INTEGER,
    completed     INTEGER NOT NULL DEFAULT 0,
    expiry_ts     INTEGER
);

CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator      TEXT NOT NULL,
    published    INTEGER NOT NULL DEFAULT 0,
    created_ts   INTEGER NOT NULL
);

-- Every event is stored as its full signed PDU. `stream` is the global stream ordering that
-- sync and pagination tokens count in.
CREATE TABLE events (
    stream           INTEGER PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT,
    sender           TEXT NOT NULL,
    origin_server_ts INTEGER NOT NULL,
    depth            INTEGER NOT NULL,
    pdu              TEXT NOT NULL,
    -- the state group of the room state *after* this event
    state_group      INTEGER NOT NULL,
    redacted_by      TEXT,
    txn_user         TEXT,
    txn_device       TEXT,
    txn_id           TEXT
);
CREATE INDEX events_room_stream ON events (room_id, stream);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
CREATE UNIQUE INDEX events_txn ON events (txn_user, txn_device, txn_id) WHERE txn_id IS NOT NULL;

CREATE TABLE forward_extremities (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- State groups store room state as deltas on a parent group, with a full snapshot every so often
-- so that the state at any event is a short walk away.
CREATE TABLE state_groups (
    id        INTEGER PRIMARY KEY,
    room_id   TEXT NOT NULL,
    parent    INTEGER,
    chain_len INTEGER NOT NULL
);
CREATE TABLE state_group_entries (
    group_id  INTEGER NOT NULL,
    type      TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (group_id, type, state_key)
);

CREATE TABLE current_state (
    room_id   TEXT NOT NULL,
    type      TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    stream    INTEGER NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

-- The current membership of every user ever in a room: what sync and the membership endpoints read.
CREATE TABLE memberships (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    stream     INTEGER NOT NULL,
    forgotten  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, membership);

CREATE TABLE room_aliases (
    alias   TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- room_id is '' for global account data.
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    content TEXT NOT NULL,
    stream  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream);

CREATE TABLE filters (
    user_id   TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    filter    TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

-- thread_id is '' for unthreaded receipts.
CREATE TABLE receipts (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           INTEGER NOT NULL,
    stream       INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream);

CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id  TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    pusher  TEXT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);

-- The global stream counter shared by events, account data and receipts: one number orders
-- everything a sync token can point at.
CREATE TABLE stream_counter (
    id  INTEGER PRIMARY KEY CHECK (id = 0),
    pos INTEGER NOT NULL
);
INSERT INTO stream_counter (id, pos) VALUES (0, 0);
