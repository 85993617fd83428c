-- Schema version 17: delivery to application services. Like pushers' cursors, the queue is the
-- events after `last_stream`: nothing is written per event. A transaction being sent covers the
-- events up to `pending_upto` under the id `txn_id`, so a retry (after a failure or a restart)
-- sends the same events under the same id, as the spec asks.
CREATE TABLE appservice_state (
    service_id   TEXT PRIMARY KEY,
    last_stream  INTEGER NOT NULL,
    txn_id       INTEGER NOT NULL,
    pending_upto INTEGER
);
