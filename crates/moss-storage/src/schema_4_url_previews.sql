-- Schema version 4: cached URL previews.
CREATE TABLE url_previews (
    url        TEXT PRIMARY KEY,
    fetched_ts INTEGER NOT NULL,
    preview    TEXT NOT NULL
);
