-- Sliding sync positions of moss processes that share a database (PostgreSQL): what each
-- connection's client has after each of its last responses, so that any process can continue
-- a connection. A single process keeps them in memory (this table stays empty).
CREATE TABLE sliding_positions (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    conn_id    TEXT NOT NULL,
    pos        BIGINT NOT NULL,
    state      TEXT NOT NULL,
    used_ts    BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, conn_id, pos)
);
CREATE INDEX sliding_positions_used ON sliding_positions (used_ts);
