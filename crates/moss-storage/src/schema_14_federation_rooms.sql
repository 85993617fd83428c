-- Schema version 14: rooms across servers.

-- Events we hold without placing them in a room's timeline: the auth chain a join brings,
-- events fetched to check another event's auth, soft-failed events. Auth checks and the
-- federation endpoints read them; clients never see them.
CREATE TABLE outliers (
    event_id TEXT PRIMARY KEY,
    room_id  TEXT NOT NULL,
    pdu      TEXT NOT NULL,
    -- 'outlier' | 'soft_failed' | 'rejected'
    status   TEXT NOT NULL DEFAULT 'outlier'
);

-- Positions for events that are older than the point where this server joined a room
-- (backfilled history and the room state a join brings). They count down from -1 (history) and
-- up from -2^50 (join state), so both sort before everything sync has handed out.
CREATE TABLE history_counter (
    id      INTEGER PRIMARY KEY CHECK (id = 0),
    history INTEGER NOT NULL,
    state   INTEGER NOT NULL
);
INSERT INTO history_counter (id, history, state) VALUES (0, 0, -1125899906842624);

-- The outbound queue: one row per PDU or EDU per destination server, written in the same
-- transaction as the event it carries and deleted once the destination acknowledged it.
CREATE TABLE federation_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    -- 'pdu' (payload is an event id) or 'edu' (payload is the EDU's JSON)
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, id);

-- Inbound transactions already processed, so a retried one is answered without acting twice.
CREATE TABLE federation_inbound_txns (
    origin   TEXT NOT NULL,
    txn_id   TEXT NOT NULL,
    response TEXT NOT NULL,
    ts       INTEGER NOT NULL,
    PRIMARY KEY (origin, txn_id)
);

-- Invites to rooms on other servers: what the inviting server told us about the room.
CREATE TABLE remote_invites (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    room_version TEXT NOT NULL,
    invite_state TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Events a stored event names as a prev_event. Such an event is never a forward extremity, even
-- when it arrives after the event that follows it (out-of-order delivery, gap filling).
CREATE TABLE event_prev_refs (
    event_id TEXT PRIMARY KEY
);
