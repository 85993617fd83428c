// Two moss processes on one PostgreSQL database behind nginx (MOSS_TEST_CLUSTER=postgres; skipped
// otherwise): one of them is killed with SIGKILL while matrix-js-sdk clients send and sync
// through the proxy. Every send the server acknowledged must be there afterwards, in the order it
// was acknowledged, for the syncing peer and in the room's history served by both processes.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import { clusterMode } from "../../harness/cluster.mjs";
import {
    createClient,
    registerUser,
    sdk,
    startServer,
    startSyncingClient,
    stopAllClients,
    waitForClientState,
    withTimeout,
} from "./helpers.mjs";

const { Direction, EventType, MsgType } = sdk;

const SENDS = 40;
const KILL_AFTER = 12;

describe("matrix-js-sdk against two moss processes, one killed mid-run", {
    skip: !clusterMode() && "runs with MOSS_TEST_CLUSTER=postgres (two processes on PostgreSQL behind nginx)",
    timeout: 3 * 60_000,
}, () => {
    let server;
    let aliceUser, bobUser;
    let alice, bob;
    let roomId;

    before(async () => {
        server = await startServer();
        aliceUser = await registerUser(server, "alice");
        bobUser = await registerUser(server, "bob");
        alice = await startSyncingClient(server, aliceUser);
        bob = await startSyncingClient(server, bobUser);
        roomId = (await withTimeout(alice.createRoom({ preset: sdk.Preset.PublicChat }), "createRoom")).room_id;
        await withTimeout(bob.joinRoom(roomId), "bob joins");
    });

    after(async () => {
        stopAllClients();
        if (server) await server.stop();
    });

    it("no acknowledged message is lost when a process dies, and both serve them afterwards", async () => {
        const acknowledged = [];
        let refused = 0;
        for (let i = 0; i < SENDS; i++) {
            if (i === KILL_AFTER) {
                const info = await server.kill(0, "SIGKILL");
                assert.equal(info.signal, "SIGKILL", "process a was killed");
            }
            try {
                const { event_id: eventId } = await withTimeout(
                    alice.sendMessage(roomId, { msgtype: MsgType.Text, body: `m${i}` }),
                    `alice sending m${i}`,
                );
                acknowledged.push(eventId);
            } catch {
                // Not acknowledged: the client was told so and may try again; it need not be stored.
                refused++;
            }
        }
        assert.ok(acknowledged.length >= SENDS - 2, `most sends acknowledged (refused ${refused})`);

        // Bob's client, syncing through the proxy, sees every acknowledged message in order.
        const timelineIds = () =>
            bob.getRoom(roomId)?.getLiveTimeline().getEvents()
                .filter((e) => e.getType() === EventType.RoomMessage).map((e) => e.getId()) ?? [];
        await waitForClientState(bob, {
            check: () => acknowledged.every((id) => timelineIds().includes(id)),
            what: () => `bob to see all ${acknowledged.length} acknowledged messages ` +
                `(has ${acknowledged.filter((id) => timelineIds().includes(id)).length})`,
            events: [sdk.RoomEvent.Timeline],
            timeoutMs: 30_000,
        });
        const seen = timelineIds().filter((id) => acknowledged.includes(id));
        assert.deepEqual(seen, acknowledged, "in the order they were acknowledged");

        // The killed process comes back on the same database; the history, read page by page with
        // requests alternating between the two processes, holds every acknowledged message.
        await server.revive(0);
        const reader = createClient(server, bobUser);
        const history = [];
        let from = null;
        for (let page = 0; page < 20; page++) {
            const res = await withTimeout(
                reader.createMessagesRequest(roomId, from, 10, Direction.Backward),
                `history page ${page}`,
            );
            for (const e of res.chunk) {
                if (e.type === EventType.RoomMessage) history.unshift(e.event_id);
            }
            if (!res.end || res.chunk.length === 0) break;
            from = res.end;
        }
        assert.deepEqual(history.filter((id) => acknowledged.includes(id)), acknowledged,
            "the room's history has every acknowledged message, in order");
        for (const [i, m] of server.members.entries()) {
            const res = await fetch(`http://127.0.0.1:${m.port}/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}` +
                `/event/${encodeURIComponent(acknowledged.at(-1))}`, {
                headers: { Authorization: `Bearer ${bobUser.accessToken}` },
            });
            assert.equal(res.status, 200, `process ${"ab"[i]} serves the last message`);
        }
    });
});
