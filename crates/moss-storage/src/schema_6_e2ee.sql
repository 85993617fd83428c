-- Schema version 6: end-to-end encryption support (device keys, one-time and fallback keys,
-- cross-signing, to-device messages, device-list changes, server-side key backup).

-- The signed device_keys object a device uploaded, as the client sent it (minus signatures other
-- users added later, which live in key_signatures).
CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    keys      TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- key_id is "<algorithm>:<id>". A claim deletes the row: one key, one claimant.
CREATE TABLE one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);
CREATE INDEX one_time_keys_claim ON one_time_keys (user_id, device_id, algorithm);

-- At most one fallback key per algorithm; `used` once it was handed out by a claim.
CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    used      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
);

-- key_type is master, self_signing or user_signing.
CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    public   TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded through keys/signatures/upload, on a device (target_key = device id) or a
-- cross-signing key (target_key = its public key), merged into keys/query answers.
CREATE TABLE key_signatures (
    target_user TEXT NOT NULL,
    target_key  TEXT NOT NULL,
    signer_user TEXT NOT NULL,
    signer_key  TEXT NOT NULL,
    signature   TEXT NOT NULL,
    PRIMARY KEY (target_user, target_key, signer_user, signer_key)
);

-- The stream position of each user's latest device or cross-signing key change.
CREATE TABLE device_list_changes (
    user_id TEXT PRIMARY KEY,
    stream  INTEGER NOT NULL
);
CREATE INDEX device_list_changes_stream ON device_list_changes (stream);

-- Queued to-device messages; deleted once the device acknowledges a sync token past `stream`.
CREATE TABLE to_device (
    stream    INTEGER NOT NULL,
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    sender    TEXT NOT NULL,
    type      TEXT NOT NULL,
    content   TEXT NOT NULL
);
CREATE INDEX to_device_target ON to_device (user_id, device_id, stream);

-- Makes sendToDevice idempotent per (sender device, txn id).
CREATE TABLE to_device_txns (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id    TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE backup_versions (
    user_id   TEXT NOT NULL,
    version   INTEGER NOT NULL,
    algorithm TEXT NOT NULL,
    auth_data TEXT NOT NULL,
    etag      INTEGER NOT NULL DEFAULT 0,
    deleted   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
);

CREATE TABLE backup_keys (
    user_id             TEXT NOT NULL,
    version             INTEGER NOT NULL,
    room_id             TEXT NOT NULL,
    session_id          TEXT NOT NULL,
    first_message_index INTEGER NOT NULL,
    forwarded_count     INTEGER NOT NULL,
    is_verified         INTEGER NOT NULL,
    session_data        TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
);
CREATE INDEX memberships_stream ON memberships (stream);
