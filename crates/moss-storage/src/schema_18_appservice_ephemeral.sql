-- Schema version 18: application services are also sent receipts, presence and to-device messages
-- (MSC2409) from the same cursor as their events, all of which share the global stream: these
-- indexes let a service's delivery read "everything in (a, b]" without scanning per room or device.
CREATE INDEX receipts_stream ON receipts (stream);
CREATE INDEX to_device_stream ON to_device (stream);

-- Rooms a bridge published in its own networks' room lists
-- (`PUT /directory/list/appservice/{networkId}/{roomId}`), as Synapse's appservice_room_list.
CREATE TABLE appservice_room_list (
    appservice_id TEXT NOT NULL,
    network_id    TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    PRIMARY KEY (appservice_id, network_id, room_id)
);
