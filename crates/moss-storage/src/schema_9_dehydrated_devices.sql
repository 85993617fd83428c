-- Schema version 9: dehydrated devices (MSC3814): an encrypted device a user parks on the server
-- so that room keys sent while all their clients are offline can be picked up later.
CREATE TABLE dehydrated_devices (
    user_id     TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    device_data TEXT NOT NULL
);
