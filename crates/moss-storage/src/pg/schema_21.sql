-- moss's PostgreSQL schema at version 21: the same tables, indexes and derived data as SQLite
-- migrations 1 to 21, written for PostgreSQL in one piece (there were no PostgreSQL databases
-- before version 21). Integers are BIGINT (SQLite's INTEGER is 64-bit) and booleans stay 0/1
-- integers, so every query reads and writes the same values on both. Tables whose rows SQLite
-- orders or deletes by rowid get a `rowid` column. Full-text search is a tsvector with a GIN
-- index; the triggers that keep relations, search and the room list are PL/pgSQL.
-- Never edit this file once released: add migration 22 beside SQLite's.

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    password_hash TEXT,
    admin         BIGINT NOT NULL DEFAULT 0,
    deactivated   BIGINT NOT NULL DEFAULT 0,
    created_ts    BIGINT NOT NULL,
    displayname   TEXT,
    avatar_url    TEXT,
    locked BIGINT NOT NULL DEFAULT 0, suspended BIGINT NOT NULL DEFAULT 0, erased BIGINT NOT NULL DEFAULT 0, shadow_banned BIGINT NOT NULL DEFAULT 0, user_type TEXT);
CREATE TABLE devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts BIGINT,
    last_seen_ip TEXT, last_seen_user_agent TEXT,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE access_tokens (
    token         TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    device_id     TEXT NOT NULL,
    expires_ts    BIGINT,
    refresh_token TEXT UNIQUE
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);
CREATE TABLE registration_tokens (
    token         TEXT PRIMARY KEY,
    uses_allowed  BIGINT,
    completed     BIGINT NOT NULL DEFAULT 0,
    expiry_ts     BIGINT
);
CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator      TEXT NOT NULL,
    published    BIGINT NOT NULL DEFAULT 0,
    created_ts   BIGINT NOT NULL
);
CREATE TABLE events (
    stream           BIGINT PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    room_id          TEXT NOT NULL,
    type             TEXT NOT NULL,
    state_key        TEXT,
    sender           TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    depth            BIGINT NOT NULL,
    pdu              TEXT NOT NULL,
    -- the state group of the room state *after* this event
    state_group      BIGINT NOT NULL,
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
CREATE TABLE state_groups (
    id        BIGSERIAL PRIMARY KEY,
    room_id   TEXT NOT NULL,
    parent    BIGINT,
    chain_len BIGINT NOT NULL
);
CREATE TABLE state_group_entries (
    group_id  BIGINT NOT NULL,
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
    stream    BIGINT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE TABLE memberships (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    stream     BIGINT NOT NULL,
    forgotten  BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, membership);
CREATE TABLE room_aliases (
    alias   TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);
CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    content TEXT NOT NULL,
    stream  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream);
CREATE TABLE filters (
    user_id   TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter    TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);
CREATE TABLE receipts (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    stream       BIGINT NOT NULL, event_stream BIGINT,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream);
CREATE TABLE pushers (
    user_id TEXT NOT NULL,
    app_id  TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    pusher  TEXT NOT NULL, device_id TEXT, created_ts BIGINT NOT NULL DEFAULT 0, last_stream BIGINT NOT NULL DEFAULT 0, failing_since BIGINT,
    PRIMARY KEY (user_id, app_id, pushkey)
);
CREATE TABLE stream_counter (
    id  BIGINT PRIMARY KEY CHECK (id = 0),
    pos BIGINT NOT NULL
);
CREATE TABLE media (
    media_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    created_ts   BIGINT NOT NULL,
    expires_ts   BIGINT,
    content_key  TEXT,
    content_type TEXT,
    filename     TEXT,
    size         BIGINT,
    sha256       TEXT,
    -- served on the unauthenticated legacy endpoints while they are frozen
    legacy       BIGINT NOT NULL DEFAULT 0,
    quarantined BIGINT NOT NULL DEFAULT 0, last_access_ts BIGINT, protected BIGINT NOT NULL DEFAULT 0);
CREATE INDEX media_pending ON media (user_id) WHERE content_key IS NULL;
CREATE INDEX media_content ON media (content_key);
CREATE TABLE media_thumbnails (
    content_key  TEXT NOT NULL,
    width        BIGINT NOT NULL,
    height       BIGINT NOT NULL,
    method       TEXT NOT NULL,
    animated     BIGINT NOT NULL,
    thumb_key    TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    PRIMARY KEY (content_key, width, height, method, animated)
);
CREATE TABLE url_previews (
    url        TEXT PRIMARY KEY,
    fetched_ts BIGINT NOT NULL,
    preview    TEXT NOT NULL
);
CREATE TABLE media_inflight (
    rowid BIGSERIAL,
    content_key TEXT NOT NULL,
    started_ts  BIGINT NOT NULL
);
CREATE INDEX media_inflight_key ON media_inflight (content_key);
CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys      TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE one_time_keys (
    rowid BIGSERIAL,
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);
CREATE INDEX one_time_keys_claim ON one_time_keys (user_id, device_id, algorithm);
CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    used      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public   TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);
CREATE TABLE key_signatures (
    target_user TEXT NOT NULL,
    target_key  TEXT NOT NULL,
    signer_user TEXT NOT NULL,
    signer_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key)
);
CREATE TABLE device_list_changes (
    user_id TEXT PRIMARY KEY,
    stream  BIGINT NOT NULL
);
CREATE INDEX device_list_changes_stream ON device_list_changes (stream);
CREATE TABLE to_device (
    rowid BIGSERIAL,
    stream    BIGINT NOT NULL,
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender    TEXT NOT NULL,
    type      TEXT NOT NULL,
    content   TEXT NOT NULL
);
CREATE INDEX to_device_target ON to_device (user_id, device_id, stream);
CREATE TABLE to_device_txns (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id    TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);
CREATE TABLE backup_versions (
    user_id   TEXT NOT NULL,
    version   BIGINT NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag      BIGINT NOT NULL DEFAULT 0,
    deleted   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);
CREATE TABLE backup_keys (
    user_id             TEXT NOT NULL,
    version             BIGINT NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index BIGINT NOT NULL,
    forwarded_count     BIGINT NOT NULL,
    is_verified         BIGINT NOT NULL,
    session_data        TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
CREATE INDEX memberships_stream ON memberships (stream);
CREATE TABLE event_relations (
    stream     BIGINT PRIMARY KEY,
    event_id   TEXT NOT NULL,
    room_id    TEXT NOT NULL,
    relates_to TEXT NOT NULL,
    rel_type   TEXT NOT NULL,
    type       TEXT NOT NULL,
    sender     TEXT NOT NULL,
    key        TEXT
);
CREATE INDEX event_relations_target ON event_relations (relates_to, rel_type, stream);
CREATE INDEX event_relations_threads ON event_relations (room_id, rel_type, stream);
CREATE TABLE presence (
    user_id        TEXT PRIMARY KEY,
    state          TEXT NOT NULL,
    status_msg     TEXT,
    last_active_ts BIGINT NOT NULL,
    stream         BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream);
CREATE TABLE reports (
    id          BIGSERIAL PRIMARY KEY,
    reporter    TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    event_id    TEXT,
    reason      TEXT,
    score       BIGINT,
    received_ts BIGINT NOT NULL
);
CREATE TABLE login_tokens (
    token      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE TABLE dehydrated_devices (
    user_id     TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    device_data TEXT NOT NULL
);
CREATE TABLE remote_media (
    origin         TEXT NOT NULL,
    media_id       TEXT NOT NULL,
    content_key    TEXT NOT NULL,
    content_type   TEXT,
    filename       TEXT,
    size           BIGINT NOT NULL,
    sha256         TEXT NOT NULL,
    created_ts     BIGINT NOT NULL,
    last_access_ts BIGINT,
    quarantined    BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (origin, media_id)
);
CREATE INDEX remote_media_content ON remote_media (content_key);
CREATE TABLE server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts     BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
CREATE TABLE server_key_docs (
    server_name    TEXT PRIMARY KEY,
    doc            TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL
);
CREATE INDEX events_state_key ON events (room_id, type, state_key) WHERE state_key IS NOT NULL;
CREATE TABLE outliers (
    event_id TEXT PRIMARY KEY,
    room_id  TEXT NOT NULL,
    pdu      TEXT NOT NULL,
    -- 'outlier' | 'soft_failed' | 'rejected'
    status   TEXT NOT NULL DEFAULT 'outlier'
);
CREATE TABLE history_counter (
    id      BIGINT PRIMARY KEY CHECK (id = 0),
    history BIGINT NOT NULL,
    state   BIGINT NOT NULL
);
CREATE TABLE federation_outbox (
    id          BIGSERIAL PRIMARY KEY,
    destination TEXT NOT NULL,
    -- 'pdu' (payload is an event id) or 'edu' (payload is the EDU's JSON)
    kind        TEXT NOT NULL,
    payload     TEXT NOT NULL,
    queued_ts BIGINT NOT NULL DEFAULT 0);
CREATE INDEX federation_outbox_destination ON federation_outbox (destination, id);
CREATE TABLE federation_inbound_txns (
    origin   TEXT NOT NULL,
    txn_id   TEXT NOT NULL,
    response TEXT NOT NULL,
    ts       BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE TABLE remote_invites (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    room_version TEXT NOT NULL,
    invite_state TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE TABLE event_prev_refs (
    event_id TEXT PRIMARY KEY
);
CREATE TABLE push_actions (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    stream    BIGINT NOT NULL,
    event_id  TEXT NOT NULL,
    -- 'main', or the root of the thread the event is in
    thread_id TEXT NOT NULL,
    highlight BIGINT NOT NULL,
    actions   TEXT,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, stream)
);
CREATE INDEX push_actions_user_stream ON push_actions (user_id, stream);
CREATE TABLE push_progress (
    id             BIGINT PRIMARY KEY CHECK (id = 0),
    evaluated_upto BIGINT NOT NULL
);
CREATE TABLE appservice_state (
    service_id   TEXT PRIMARY KEY,
    last_stream  BIGINT NOT NULL,
    txn_id       BIGINT NOT NULL,
    pending_upto BIGINT
);
CREATE INDEX receipts_stream ON receipts (stream);
CREATE INDEX to_device_stream ON to_device (stream);
CREATE TABLE appservice_room_list (
    appservice_id TEXT NOT NULL,
    network_id    TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
);
CREATE TABLE room_list_info (
    room_id     TEXT PRIMARY KEY,
    bump_stream BIGINT,
    encrypted   BIGINT NOT NULL DEFAULT 0,
    has_create  BIGINT NOT NULL DEFAULT 0,
    room_type   TEXT
);
CREATE TABLE blocked_rooms (
    room_id    TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    ts         BIGINT NOT NULL
);
CREATE TABLE ratelimit_overrides (
    user_id             TEXT PRIMARY KEY,
    messages_per_second BIGINT NOT NULL,
    burst_count         BIGINT NOT NULL
);
CREATE INDEX media_user ON media (user_id, created_ts);
CREATE INDEX reports_received ON reports (received_ts);
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);
CREATE TABLE openid_tokens (
    token      TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);


INSERT INTO stream_counter (id, pos) VALUES (0, 0);
INSERT INTO history_counter (id, history, state) VALUES (0, 0, -1125899906842624);
INSERT INTO push_progress (id, evaluated_upto) VALUES (0, 0);

-- Full-text search over message bodies, room names and topics (SQLite: an FTS5 table whose
-- rowid is the event's stream position).
CREATE TABLE event_search (
    rowid BIGINT PRIMARY KEY,
    text  TEXT NOT NULL,
    key   TEXT NOT NULL,
    tsv   tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX event_search_tsv ON event_search USING GIN (tsv);

-- SQLite's functions that a few shared queries use, with SQLite's meaning:
-- json_extract(doc, '$.a."b.c".d') gives a string's text, a number's or boolean's text, NULL
-- for null or a missing path, and an object's or array's JSON; instr is strpos; typeof tells
-- text from NULL (all these queries ask).
CREATE FUNCTION json_extract(doc TEXT, path TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(v) WHEN 'string' THEN v #>> '{}' WHEN 'null' THEN NULL ELSE v::text END
    FROM (SELECT doc::jsonb #> ARRAY(
              SELECT COALESCE(m[1], m[2])
              FROM regexp_matches(substr(path, 3), '"([^"]*)"|([^.]+)', 'g') AS m) AS v) AS x
$$;
CREATE FUNCTION json_type(doc TEXT, path TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(v) WHEN 'string' THEN 'text' WHEN 'boolean' THEN v::text
               WHEN 'number' THEN CASE WHEN v::text ~ '^-?[0-9]+$' THEN 'integer' ELSE 'real' END
               ELSE jsonb_typeof(v) END
    FROM (SELECT doc::jsonb #> ARRAY(
              SELECT COALESCE(m[1], m[2])
              FROM regexp_matches(substr(path, 3), '"([^"]*)"|([^.]+)', 'g') AS m) AS v) AS x
$$;
CREATE FUNCTION json_array_length(doc TEXT, path TEXT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'array' THEN jsonb_array_length(v) END
    FROM (SELECT doc::jsonb #> ARRAY(
              SELECT COALESCE(m[1], m[2])
              FROM regexp_matches(substr(path, 3), '"([^"]*)"|([^.]+)', 'g') AS m) AS v) AS x
$$;
CREATE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $$
    SELECT strpos(haystack, needle)
$$;
CREATE FUNCTION typeof(value TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN value IS NULL THEN 'null' ELSE 'text' END
$$;

-- The text of a JSON path in a PDU, or NULL when it is missing or not a string (SQLite's
-- `CASE WHEN json_type(..) = 'text' THEN json_extract(..) END`).
CREATE FUNCTION moss_json_text(pdu TEXT, VARIADIC path TEXT[]) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(pdu::jsonb #> path) = 'string' THEN pdu::jsonb #>> path END
$$;

CREATE FUNCTION moss_events_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rel_event TEXT := moss_json_text(NEW.pdu, 'content', 'm.relates_to', 'event_id');
    rel_type  TEXT := moss_json_text(NEW.pdu, 'content', 'm.relates_to', 'rel_type');
    search    TEXT;
    search_key TEXT;
BEGIN
    IF rel_event IS NOT NULL AND rel_type IS NOT NULL THEN
        INSERT INTO event_relations (stream, event_id, room_id, relates_to, rel_type, type, sender, key)
        VALUES (NEW.stream, NEW.event_id, NEW.room_id, rel_event, rel_type, NEW.type, NEW.sender,
                NEW.pdu::jsonb #>> '{content,m.relates_to,key}')
        ON CONFLICT (stream) DO UPDATE SET event_id = excluded.event_id, room_id = excluded.room_id,
            relates_to = excluded.relates_to, rel_type = excluded.rel_type, type = excluded.type,
            sender = excluded.sender, key = excluded.key;
    END IF;
    IF NEW.type = 'm.room.message' THEN
        search := moss_json_text(NEW.pdu, 'content', 'body'); search_key := 'content.body';
    ELSIF NEW.type = 'm.room.name' THEN
        search := moss_json_text(NEW.pdu, 'content', 'name'); search_key := 'content.name';
    ELSIF NEW.type = 'm.room.topic' THEN
        search := moss_json_text(NEW.pdu, 'content', 'topic'); search_key := 'content.topic';
    END IF;
    IF search IS NOT NULL THEN
        INSERT INTO event_search (rowid, text, key) VALUES (NEW.stream, search, search_key);
    END IF;
    IF NEW.stream > 0 AND NEW.type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                                       'm.call.invite', 'm.poll.start', 'm.beacon_info') THEN
        INSERT INTO room_list_info (room_id, bump_stream) VALUES (NEW.room_id, NEW.stream)
        ON CONFLICT (room_id) DO UPDATE
            SET bump_stream = GREATEST(COALESCE(room_list_info.bump_stream, 0), excluded.bump_stream);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_after_insert AFTER INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION moss_events_after_insert();

CREATE FUNCTION moss_events_unindex_redacted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_relations WHERE stream = NEW.stream;
    DELETE FROM event_search WHERE rowid = NEW.stream;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_unindex_redacted AFTER UPDATE OF redacted_by ON events
    FOR EACH ROW WHEN (NEW.redacted_by IS NOT NULL) EXECUTE FUNCTION moss_events_unindex_redacted();

CREATE FUNCTION moss_current_state_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.type = 'm.room.encryption' AND NEW.state_key = '' THEN
        INSERT INTO room_list_info (room_id, encrypted) VALUES (NEW.room_id, 1)
        ON CONFLICT (room_id) DO UPDATE SET encrypted = 1;
    ELSIF NEW.type = 'm.room.create' AND NEW.state_key = '' THEN
        INSERT INTO room_list_info (room_id, has_create, room_type) VALUES (NEW.room_id, 1,
            (SELECT moss_json_text(pdu, 'content', 'type') FROM events WHERE event_id = NEW.event_id))
        ON CONFLICT (room_id) DO UPDATE SET has_create = 1, room_type = excluded.room_type;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER current_state_after_insert AFTER INSERT ON current_state
    FOR EACH ROW EXECUTE FUNCTION moss_current_state_after_insert();

CREATE FUNCTION moss_current_state_after_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.type = 'm.room.encryption' AND OLD.state_key = '' THEN
        UPDATE room_list_info SET encrypted = 0 WHERE room_id = OLD.room_id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER current_state_after_delete AFTER DELETE ON current_state
    FOR EACH ROW EXECUTE FUNCTION moss_current_state_after_delete();
