-- Small uploads are recorded while their content is still being written to the store (the
-- commit and the store request overlap). Until the store has answered, the record is listed
-- here; a record a crash left listed is checked against the store later (kept if the object
-- arrived, deleted if not).
CREATE TABLE media_unconfirmed (
    media_id    TEXT PRIMARY KEY,
    content_key TEXT NOT NULL,
    started_ts  INTEGER NOT NULL
);
CREATE INDEX media_unconfirmed_started ON media_unconfirmed (started_ts);
