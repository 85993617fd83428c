-- Schema version 12: other servers' signing keys, fetched and verified, cached until they expire.
CREATE TABLE server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    fetched_ts     INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The whole key document each server published (as it signed it), so we can vouch for it to
-- others as a notary (`/_matrix/key/v2/query`).
CREATE TABLE server_key_docs (
    server_name    TEXT PRIMARY KEY,
    doc            TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL
);
