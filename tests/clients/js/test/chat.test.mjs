// A two-person chat driven entirely through matrix-js-sdk's own sync loop, against a fresh moss
// server: what Element-style clients depend on for invites, messages, room names, history,
// typing, receipts and leaving, plus the invite-only join rule.
//
// The steps share one server and one room and must run in order; once a step fails the rest
// are skipped (their failures would only be echoes of the first one).

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";

import {
    createClient,
    registerUser,
    sdk,
    startServer,
    startSyncingClient,
    stopAllClients,
    stopClient,
    waitForClientState,
    waitForTimelineEvent,
    withTimeout,
} from "./helpers.mjs";

const { Direction, EventType, MsgType, ReceiptType, RoomEvent, RoomMemberEvent } = sdk;

const HISTORY_SIZE = 25;
const HISTORY_PAGE = 10; // smaller than HISTORY_SIZE so pagination needs several round trips

describe("matrix-js-sdk chat between two users", { timeout: 5 * 60_000 }, () => {
    let server;
    let aliceUser, bobUser;
    let alice, bob; // syncing MatrixClients
    let roomId;
    let history = []; // [{ eventId, body }] of the HISTORY_SIZE messages, oldest first
    let firstFailure = null;

    function step(name, fn) {
        it(name, { timeout: 60_000 }, async (t) => {
            if (firstFailure) {
                t.skip(`earlier step failed: ${firstFailure}`);
                return;
            }
            try {
                await fn(t);
            } catch (err) {
                firstFailure = name;
                throw err;
            }
        });
    }

    const text = (body) => ({ msgtype: MsgType.Text, body });

    /** Sends a text message as `client` and returns its event id. */
    async function send(client, body) {
        const { event_id: eventId } = await withTimeout(
            client.sendMessage(roomId, text(body)),
            `${client.getUserId()} sending "${body}"`,
        );
        assert.match(eventId, /^\$/, "send must return the new event id");
        return eventId;
    }

    /** Waits until `client` sees event `eventId` in the room and checks who sent what. */
    async function expectMessage(client, eventId, { sender, body }) {
        const event = await waitForTimelineEvent(client, roomId, (e) => e.getId() === eventId, {
            what: `${client.getUserId()} to see ${eventId} ("${body}")`,
        });
        assert.equal(event.getType(), EventType.RoomMessage);
        assert.equal(event.getSender(), sender);
        assert.deepEqual(event.getContent(), text(body));
        return event;
    }

    const membershipOf = (client, userId) => client.getRoom(roomId)?.getMember(userId)?.membership;

    before(async () => {
        server = await startServer();
        aliceUser = await registerUser(server, "alice");
        bobUser = await registerUser(server, "bob");
        alice = await startSyncingClient(server, aliceUser, { initialSyncLimit: 20 });
        bob = await startSyncingClient(server, bobUser, { initialSyncLimit: 20 });
    });

    after(async () => {
        stopAllClients();
        if (!server) return;
        if (firstFailure) {
            console.error(`--- moss log tail (${server.logPath}) ---\n${server.logTail(80)}\n---`);
        }
        await server.stop({ keepDir: Boolean(firstFailure) });
    });

    step("alice creates a private room and invites bob", async () => {
        const created = await withTimeout(
            alice.createRoom({ preset: sdk.Preset.PrivateChat, visibility: sdk.Visibility.Private }),
            "createRoom",
        );
        roomId = created.room_id;
        assert.match(roomId, /^!/);

        await withTimeout(alice.invite(roomId, bobUser.userId), "invite bob");

        // The private_chat preset must make the room invite-only, as seen through alice's sync.
        const room = await waitForClientState(alice, {
            check: () => alice.getRoom(roomId)?.getMyMembership() === "join" && alice.getRoom(roomId),
            what: `alice's client to show her joined to ${roomId}`,
        });
        await waitForClientState(alice, {
            check: () => membershipOf(alice, bobUser.userId) === "invite",
            what: () => `alice's client to show bob invited (now: ${membershipOf(alice, bobUser.userId)})`,
            events: [RoomMemberEvent.Membership],
        });
        assert.equal(room.getJoinRule(), "invite");
        assert.equal(room.currentState.getStateEvents(EventType.RoomCreate, "").getSender(), aliceUser.userId);
    });

    step("bob receives the invite through sync and joins", async () => {
        const invited = await waitForClientState(bob, {
            check: () => bob.getRoom(roomId)?.getMyMembership() === "invite" && bob.getRoom(roomId),
            what: () => `bob's client to show an invite to ${roomId} (membership: ${bob.getRoom(roomId)?.getMyMembership()})`,
            events: [RoomMemberEvent.Membership, RoomEvent.MyMembership],
        });
        const inviteEvent = invited.currentState.getStateEvents(EventType.RoomMember, bobUser.userId);
        assert.ok(inviteEvent, "the invite must carry bob's m.room.member event in invite_state");
        assert.equal(inviteEvent.getSender(), aliceUser.userId, "alice must be the inviter");
        assert.equal(inviteEvent.getContent().membership, "invite");

        await withTimeout(bob.joinRoom(roomId), "bob joining");

        await waitForClientState(bob, {
            check: () => bob.getRoom(roomId)?.getMyMembership() === "join",
            what: () => `bob's client to show him joined (membership: ${bob.getRoom(roomId)?.getMyMembership()})`,
            events: [RoomEvent.MyMembership],
        });
        await waitForClientState(alice, {
            check: () => membershipOf(alice, bobUser.userId) === "join",
            what: () => `alice's client to show bob joined (now: ${membershipOf(alice, bobUser.userId)})`,
            events: [RoomMemberEvent.Membership],
        });
        assert.deepEqual(
            bob.getRoom(roomId).getJoinedMembers().map((m) => m.userId).sort(),
            [aliceUser.userId, bobUser.userId].sort(),
        );
    });

    step("alice and bob each see the other's message", async () => {
        const fromAlice = "Hi Bob, welcome to the room";
        const aliceEventId = await send(alice, fromAlice);
        await expectMessage(bob, aliceEventId, { sender: aliceUser.userId, body: fromAlice });

        const fromBob = "Hello Alice! Ünïcödé & <html> survive too ✓";
        const bobEventId = await send(bob, fromBob);
        await expectMessage(alice, bobEventId, { sender: bobUser.userId, body: fromBob });

        // Both timelines must agree on the order: alice's message before bob's reply.
        for (const client of [alice, bob]) {
            const ids = client
                .getRoom(roomId)
                .getLiveTimeline()
                .getEvents()
                .map((e) => e.getId());
            const [first, second] = [ids.indexOf(aliceEventId), ids.indexOf(bobEventId)];
            assert.ok(
                first >= 0 && second > first,
                `${client.getUserId()} must have alice's message before bob's reply (positions ${first}, ${second})`,
            );
        }
    });

    step("alice renames the room and bob's room.name follows", async () => {
        const name = "Moss JS SDK test room";
        await withTimeout(alice.setRoomName(roomId, name), "setRoomName");

        const bobRoom = bob.getRoom(roomId);
        await waitForClientState(bob, {
            check: () => bobRoom.name === name,
            what: () => `bob's room.name to become "${name}" (now "${bobRoom.name}")`,
            events: [RoomEvent.Name],
        });
        const nameEvent = bobRoom.currentState.getStateEvents(EventType.RoomName, "");
        assert.equal(nameEvent.getSender(), aliceUser.userId);
        assert.deepEqual(nameEvent.getContent(), { name });
    });

    step(`alice sends ${HISTORY_SIZE} messages and bob reads them back page by page`, async () => {
        history = [];
        for (let i = 1; i <= HISTORY_SIZE; i++) {
            const body = `history message ${i} of ${HISTORY_SIZE}`;
            history.push({ eventId: await send(alice, body), body });
        }
        const last = history.at(-1);
        await expectMessage(bob, last.eventId, { sender: aliceUser.userId, body: last.body });

        // Walk /messages backwards from bob's current sync token, as the spec allows, until the
        // oldest history message; every page must respect the limit and chain via `end`.
        let from = bob.store.getSyncToken();
        assert.ok(from, "bob's client must hold a sync token");
        const seen = [];
        for (let page = 0; page < 20 && seen.length < HISTORY_SIZE; page++) {
            const res = await withTimeout(
                bob.createMessagesRequest(roomId, from, HISTORY_PAGE, Direction.Backward),
                `GET /messages page ${page}`,
            );
            assert.ok(Array.isArray(res.chunk), "/messages must return a chunk array");
            assert.ok(res.chunk.length <= HISTORY_PAGE, `page ${page} exceeds limit: ${res.chunk.length} events`);
            for (const event of res.chunk) {
                if (event.type === EventType.RoomMessage && event.content?.body?.startsWith("history message ")) {
                    assert.equal(event.sender, aliceUser.userId);
                    assert.equal(event.room_id, roomId);
                    seen.push({ eventId: event.event_id, body: event.content.body });
                }
            }
            if (res.chunk.length === 0 || !res.end) break;
            assert.notEqual(res.end, from, "/messages must advance its token");
            from = res.end;
        }
        assert.deepEqual(seen.reverse(), history, "backwards pagination must yield the messages once each, in order");
    });

    step("a fresh client of bob back-fills beyond its initial sync with scrollback()", async () => {
        // A new client only gets the last `initialSyncLimit` events; the 5 oldest history
        // messages must be fetched with the SDK's own scrollback.
        const fresh = await startSyncingClient(server, bobUser, { initialSyncLimit: 20 });
        try {
            const room = fresh.getRoom(roomId);
            assert.ok(room, "the room must be in the fresh client's initial sync");
            const initial = room.getLiveTimeline().getEvents().length;
            assert.ok(initial > 0 && initial <= 20, `initial sync must honour timeline limit 20 (got ${initial})`);
            assert.equal(typeof room.oldState.paginationToken, "string", "a limited timeline needs prev_batch");

            const historyInTimeline = () =>
                room
                    .getLiveTimeline()
                    .getEvents()
                    .filter((e) => e.getContent().body?.startsWith("history message "))
                    .map((e) => ({ eventId: e.getId(), body: e.getContent().body }));

            for (let i = 0; i < 20 && historyInTimeline().length < HISTORY_SIZE; i++) {
                assert.notEqual(room.oldState.paginationToken, null, "reached the start of the room too early");
                await withTimeout(fresh.scrollback(room, HISTORY_PAGE), `scrollback #${i}`);
            }
            assert.deepEqual(historyInTimeline(), history);
        } finally {
            stopClient(fresh);
        }
    });

    step("bob sees alice typing, and stop typing", async () => {
        const aliceTyping = () => bob.getRoom(roomId)?.getMember(aliceUser.userId)?.typing;

        await withTimeout(alice.sendTyping(roomId, true, 30_000), "typing on");
        await waitForClientState(bob, {
            check: () => aliceTyping() === true,
            what: "bob to see alice typing",
            events: [RoomMemberEvent.Typing],
        });

        await withTimeout(alice.sendTyping(roomId, false), "typing off");
        await waitForClientState(bob, {
            check: () => aliceTyping() === false,
            what: "bob to see alice stop typing",
            events: [RoomMemberEvent.Typing],
        });
    });

    step("alice sees bob's read receipt", async () => {
        const last = history.at(-1);
        const bobEvent = bob.getRoom(roomId).findEventById(last.eventId);
        assert.ok(bobEvent, "bob's client must have the last history message");
        const sentAt = Date.now();
        await withTimeout(bob.sendReadReceipt(bobEvent, ReceiptType.Read), "sendReadReceipt");

        const aliceRoom = alice.getRoom(roomId);
        const aliceEvent = await waitForTimelineEvent(alice, roomId, (e) => e.getId() === last.eventId);
        const receipt = await waitForClientState(alice, {
            check: () =>
                aliceRoom
                    .getReceiptsForEvent(aliceEvent)
                    .find((r) => r.userId === bobUser.userId && r.type === ReceiptType.Read),
            what: () =>
                `alice to see bob's m.read receipt on ${last.eventId} ` +
                `(receipts: ${JSON.stringify(aliceRoom.getReceiptsForEvent(aliceEvent))})`,
            events: [RoomEvent.Receipt],
        });
        assert.equal(typeof receipt.data.ts, "number");
        assert.ok(
            Math.abs(receipt.data.ts - sentAt) < 60_000,
            `receipt ts ${receipt.data.ts} should be close to now (${sentAt})`,
        );
        assert.equal(aliceRoom.getEventReadUpTo(bobUser.userId), last.eventId);
    });

    step("bob leaves and both clients see membership leave", async () => {
        await withTimeout(bob.leave(roomId), "bob leaving");

        await waitForClientState(alice, {
            check: () => membershipOf(alice, bobUser.userId) === "leave",
            what: () => `alice to see bob leave (now: ${membershipOf(alice, bobUser.userId)})`,
            events: [RoomMemberEvent.Membership],
        });
        const leaveEvent = alice.getRoom(roomId).currentState.getStateEvents(EventType.RoomMember, bobUser.userId);
        assert.equal(leaveEvent.getSender(), bobUser.userId, "a leave, not a kick");
        assert.equal(leaveEvent.getContent().membership, "leave");

        await waitForClientState(bob, {
            check: () => bob.getRoom(roomId)?.getMyMembership() === "leave",
            what: () => `bob's own client to show him left (now: ${bob.getRoom(roomId)?.getMyMembership()})`,
            events: [RoomEvent.MyMembership],
        });
    });

    step("a user who was not invited cannot join the invite-only room", async () => {
        const carolUser = await registerUser(server, "carol");
        const carol = createClient(server, carolUser);
        try {
            await assert.rejects(withTimeout(carol.joinRoom(roomId), "carol joining"), (err) => {
                assert.equal(err.httpStatus, 403, `expected HTTP 403, got ${err.httpStatus}: ${err.message}`);
                assert.equal(err.errcode, "M_FORBIDDEN");
                return true;
            });
        } finally {
            stopClient(carol);
        }

        // And the server must not have let her in anyway.
        const { joined } = await withTimeout(alice.getJoinedRoomMembers(roomId), "joined_members");
        assert.deepEqual(Object.keys(joined), [aliceUser.userId]);
    });
});
