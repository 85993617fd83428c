// Push notifications end to end (Matrix spec v1.18: the "Push Notifications" module of the
// client-server API and the Push Gateway API), driven by matrix-js-sdk 36 the way Element
// drives it, against Synapse (the reference) and then moss, with the same scenario code.
//
// A test push gateway (push-gateway.mjs) records what each homeserver's HTTP pushers send to
// POST /_matrix/push/v1/notify and checks it against the spec. Each scenario registers fresh
// users and rooms on a server that is started once, waits for the pushes it expects, and
// then normalises everything that was pushed to its users' pushkeys (event, room and user ids
// become role names like "$mention" or "@alice"; timestamps are dropped). On moss the
// normalised pushes must equal Synapse's: which events were pushed, prio, counts, the
// devices' tweaks and data, which fields are present, sender, sender_display_name, room_name,
// and the event_id_only format. Counts seen through js-sdk (room and thread notification
// counts) are compared too. On a mismatch both lists are printed.
//
// Normalisation also hides three things Synapse sends that are not in the spec and that
// moss need not copy: the deprecated `id` (a copy of event_id), and in badge-only pushes
// (sent after a read receipt) the placeholders `id: ""`, `sender: ""` and `type: null` (the
// last one breaks the spec's schema: `type` is a string; the gateway tolerates it from Synapse
// only). A device's missing `tweaks` equals `tweaks: {}`, and `highlight: false` equals no
// highlight tweak.
//
// Synapse: $MOSS_TEST_SYNAPSE_PYTHON or <repo>/.venv-synapse (scripts/setup-synapse.sh);
// without it the Synapse half is skipped (an error if MOSS_REQUIRE_SYNAPSE=1), and moss is
// checked on its own assertions only.
//
// Run: cd tests/clients/js && node --test --test-concurrency=1 test/push.test.mjs
//   MOSS_BIN=…            the moss binary (default target/debug/moss)
//   MOSS_PUSH_ONLY=moss   run one server's half only (synapse|moss)
//   MOSS_PUSH_DUMP=f.json write every normalised push (and the full normalised bodies) there

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import { after, before, describe, it } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";
import { isDeepStrictEqual } from "node:util";

import {
    createClient,
    registerUser,
    restartServer,
    sdk,
    startServer,
    startSyncingClient,
    stopAllClients,
    waitForClientState,
    withTimeout,
} from "./helpers.mjs";
import { forPushkey, startPushGateway } from "./push-gateway.mjs";
import { findSynapse, startSynapse } from "./synapse.mjs";

const { NotificationCountType, PushRuleKind } = sdk;

/** moss.toml for the moss half: http:// gateways on loopback. */
const MOSS_PUSH_TOML = `[push]
allow_http = true
ip_range_allowlist = ["127.0.0.0/8"]
`;

/** How long to wait, after a scenario's last expected push, for pushes nobody expected. */
const SETTLE_MS = 500;

// ---------------------------------------------------------------------------------------------
// The two servers
// ---------------------------------------------------------------------------------------------

const only = process.env.MOSS_PUSH_ONLY;
const synapse = findSynapse();

// Synapse's badge-only pushes carry `type: null`; that is the one departure from the spec's
// schema we accept, and from Synapse only.
const synapseTolerates = (problem, record) =>
    problem.path === "notification.type" &&
    record.notification?.type === null &&
    record.notification?.event_id === undefined;

const TARGETS = [
    {
        name: "synapse",
        skip: only && only !== "synapse" ? `MOSS_PUSH_ONLY=${only}` : (synapse.reason ?? false),
        // Spec v1.17 removed the legacy mention rules (.m.rule.contains_display_name,
        // .m.rule.contains_user_name, .m.rule.roomnotif: MSC4210); Synapse 1.163 still serves
        // them unless this experimental flag is on. moss implements v1.18, so compare with a
        // Synapse that follows v1.18 too. Everything else about push is Synapse's default.
        start: () =>
            startSynapse({ python: synapse.python, overrides: { experimental_features: { msc4210_enabled: true } } }),
        tolerate: synapseTolerates,
    },
    {
        name: "moss",
        skip: only && only !== "moss" ? `MOSS_PUSH_ONLY=${only}` : false,
        start: () => startServer({ extraToml: MOSS_PUSH_TOML }),
        tolerate: () => false,
    },
];

/** results[server][scenario] = what the scenario returned (normalised). */
const results = { synapse: {}, moss: {} };

function dumpResults() {
    const file = process.env.MOSS_PUSH_DUMP;
    if (file) fs.writeFileSync(file, JSON.stringify(results, null, 2));
}

// ---------------------------------------------------------------------------------------------
// A scenario's context: fresh users, pushers, roles for ids, and the pushes it caused
// ---------------------------------------------------------------------------------------------

const text = (body, extra = {}) => ({ msgtype: "m.text", body, "m.mentions": {}, ...extra });

/** A fake Megolm payload: the server only sees the event type. */
const fakeMegolm = (label) => ({
    algorithm: "m.megolm.v1.aes-sha2",
    ciphertext: `AwgAEnACfake${label}ciphertextNotDecryptable0123456789`,
    session_id: `FakeSession${label}`,
    device_id: "ALICEDEVICE",
    sender_key: "FakeCurve25519SenderKey",
});

class Scenario {
    constructor(env, key) {
        this.env = env;
        this.key = key;
        this.gw = env.gateway;
        this.since = env.gateway.mark();
        this.tag = randomUUID().replace(/-/g, "").slice(0, 6);
        this.roles = new Map([[env.gateway.url, "<gateway url>"]]);
        this.unknown = new Map();
        this.pushkeys = new Set();
        this.sentAt = new Map();
        /** Milliseconds from a send's answer to its push's arrival, per awaited push. */
        this.latencies = [];
    }

    get server() {
        return this.env.server;
    }

    /** Names `id` `name` in normalised output; returns `id`. */
    role(id, name) {
        this.roles.set(id, name);
        return id;
    }

    /** Registers a fresh user, gives it a display name, returns { userId, ..., client }. */
    async user(name, displayName) {
        const user = await registerUser(this.server, `${name}-${this.key}-${this.tag}`.toLowerCase());
        const client = createClient(this.server, user);
        await withTimeout(client.setDisplayName(displayName), `${name}: set display name`);
        this.role(user.userId, `@${name}`);
        return { ...user, name, client };
    }

    /** The body Element sends to POST /pushers/set. */
    pusherBody(pushkey, { appId = "io.element.test.full", format, extraData = {}, append = false } = {}) {
        return {
            kind: "http",
            app_id: appId,
            pushkey,
            app_display_name: "Element",
            device_display_name: "Test phone",
            lang: "en",
            data: { url: this.gw.url, ...(format ? { format } : {}), ...extraData },
            append,
        };
    }

    /** A fresh pushkey called `name` in normalised output. */
    pushkey(name) {
        const pushkey = `${name}-${this.env.name}-${this.tag}`;
        this.role(pushkey, `pk:${name}`);
        this.pushkeys.add(pushkey);
        return pushkey;
    }

    /** `user` sets an Element-like pusher with a fresh pushkey; returns the pushkey. */
    async pusher(user, name, options = {}) {
        const pushkey = this.pushkey(name);
        await withTimeout(user.client.setPusher(this.pusherBody(pushkey, options)), `${user.name}: setPusher ${name}`);
        return pushkey;
    }

    async createRoom(user, roleName, options) {
        const { room_id: roomId } = await withTimeout(
            user.client.createRoom(options),
            `${user.name}: createRoom ${roleName}`,
        );
        return this.role(roomId, roleName);
    }

    /**
     * `users` join `roomId`, then each sends a read receipt for the room's latest event, as
     * Element does when it opens a room. (Without it, Synapse's badge keeps counting the room
     * for its invite notification, while its /sync counts start at the join.)
     */
    async join(users, roomId) {
        for (const u of users)
            await withTimeout(u.client.joinRoom(roomId), `${u.name}: join ${this.roles.get(roomId)}`);
        for (const u of users) {
            const { chunk } = await withTimeout(
                u.client.createMessagesRequest(roomId, null, 1, sdk.Direction.Backward),
                `${u.name}: latest event of ${this.roles.get(roomId)}`,
            );
            const latest = new sdk.MatrixEvent(chunk[0]);
            await withTimeout(u.client.sendReceipt(latest, "m.read", {}), `${u.name}: read ${this.roles.get(roomId)}`);
        }
    }

    /** Sends an event and names its id; returns the id. */
    async send(user, roomId, roleName, content, type = "m.room.message") {
        const { event_id: eventId } = await withTimeout(
            user.client.sendEvent(roomId, type, content),
            `${user.name}: send ${roleName}`,
        );
        assert.match(eventId, /^\$/);
        this.sentAt.set(eventId, Date.now());
        return this.role(eventId, roleName);
    }

    /** Waits for a push to `pushkey` whose notification matches `match` (an event id or a predicate). */
    async expectPush(pushkey, match, { timeoutMs = 15_000, since = this.since } = {}) {
        const predicate = typeof match === "function" ? match : (n) => n.event_id === match;
        const what =
            typeof match === "function"
                ? `a push to ${this.roles.get(pushkey)}`
                : `a push of ${this.roles.get(match) ?? match} to ${this.roles.get(pushkey)}`;
        const [record] = await this.gw.waitFor((r) => forPushkey(pushkey)(r) && predicate(r.notification), {
            since,
            timeoutMs,
            what,
        });
        const sent = this.sentAt.get(record.notification.event_id);
        if (sent !== undefined) this.latencies.push(record.at - sent);
        return record.notification;
    }

    /** Waits for a badge-only push (no event_id) to `pushkey` after `since`. */
    expectBadge(pushkey, since, options = {}) {
        return this.expectPush(pushkey, (n) => n.event_id === undefined, { since, ...options });
    }

    /** The delivered pushes of this scenario to `pushkey` (all of its pushkeys if omitted). */
    delivered(pushkey) {
        const keys = pushkey ? [pushkey] : [...this.pushkeys];
        return this.gw.delivered((r) => keys.some((k) => forPushkey(k)(r)), { since: this.since });
    }

    /** Fails if an event in `eventIds` was pushed to any of this scenario's pushkeys. */
    assertNotPushed(eventIds, why) {
        const pushed = this.delivered().filter((r) => eventIds.includes(r.notification.event_id));
        assert.equal(
            pushed.length,
            0,
            `${why}: expected no push, got ${JSON.stringify(
                pushed.map((r) => this.full(r)),
                null,
                1,
            )}`,
        );
    }

    /** Fails on requests of this scenario that departed from the Push Gateway API spec. */
    assertSpec() {
        const mine = this.gw.violations.filter((v) => v.seq > this.since);
        if (mine.length) {
            throw new Error(
                `${mine.length} push(es) departed from the Push Gateway API spec:\n` +
                    mine.map((v) => `  ${v.path}: ${v.problem}\n    body: ${JSON.stringify(v.body)}`).join("\n"),
            );
        }
    }

    // ---- normalisation ----

    norm(value) {
        if (typeof value === "string") {
            if (this.roles.has(value)) return this.roles.get(value);
            if (/^[$!][A-Za-z0-9_\-+/=.:]{10,}$/.test(value)) {
                if (!this.unknown.has(value)) this.unknown.set(value, `${value[0]}other${this.unknown.size + 1}`);
                return this.unknown.get(value);
            }
            let out = value;
            for (const [id, name] of [...this.roles].sort((a, b) => b[0].length - a[0].length)) {
                if (id.length >= 8 && out.includes(id)) out = out.split(id).join(name);
            }
            return out;
        }
        if (Array.isArray(value)) return value.map((v) => this.norm(v));
        if (value && typeof value === "object") {
            return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, this.norm(v)]));
        }
        return value;
    }

    /** The whole notification, normalised (pushkey_ts replaced), for reports. */
    full(record) {
        const n = this.norm(record.notification);
        for (const d of n.devices ?? []) if ("pushkey_ts" in d) d.pushkey_ts = "<ts>";
        return n;
    }

    /** What must be equal between the servers. */
    project(record) {
        const n = record.notification;
        const placeholder = (k) =>
            k === "id" || (k === "type" && n.type === null) || (k === "sender" && n.sender === "");
        const keys = Object.keys(n)
            .filter((k) => !placeholder(k))
            .sort();
        const out = {};
        for (const k of [
            "event_id",
            "room_id",
            "type",
            "sender",
            "sender_display_name",
            "room_name",
            "room_alias",
            "prio",
            "counts",
            "membership",
            "user_is_target",
        ]) {
            if (keys.includes(k)) out[k] = this.norm(n[k]);
        }
        out.devices = (n.devices ?? []).map((d) => ({
            app_id: d.app_id,
            pushkey: this.norm(d.pushkey),
            data: this.norm(d.data ?? {}),
            tweaks: semanticTweaks(d.tweaks),
        }));
        out.keys = keys; // last, so a missing field is reported by name before the key lists
        return out;
    }

    /** The scenario's result: its pushes in a stable order (by pushkey, then arrival), plus `compare`. */
    async result(compare = {}, notes = {}) {
        await sleep(SETTLE_MS); // let unexpected extra pushes arrive, so they show up in the comparison
        const byKey = (r) => this.norm(r.notification.devices?.[0]?.pushkey ?? "");
        const records = this.delivered().sort((a, b) => byKey(a).localeCompare(byKey(b)) || a.seq - b.seq);
        return {
            pushes: records.map((r) => this.project(r)),
            ...compare,
            notes: { ...notes, latenciesMs: this.latencies, bodies: records.map((r) => this.full(r)) },
        };
    }
}

/**
 * Tweaks as they matter: a missing tweaks object is {}, and `highlight: false` is the same as
 * no highlight tweak (spec: "If no highlight tweak is given at all then the value of highlight
 * is defined to be false"). Synapse's default rules still carry {set_tweak: highlight, value:
 * false} (dropped from the spec's .m.rule.message and friends), so it sends it on every push.
 */
function semanticTweaks(tweaks = {}) {
    const out = { ...tweaks };
    if (out.highlight === false) delete out.highlight;
    return out;
}

// ---------------------------------------------------------------------------------------------
// Assertions every server must pass (the comparison with Synapse comes on top)
// ---------------------------------------------------------------------------------------------

const tweaksOf = (n) => n.devices?.[0]?.tweaks ?? {};

function checkEventPush(n, { eventId, roomId, type = "m.room.message", sender, content, prio, highlight, sound }) {
    assert.equal(n.event_id, eventId, "event_id");
    assert.equal(n.room_id, roomId, "room_id");
    assert.equal(n.type, type, "type");
    if (sender) assert.equal(n.sender, sender, "sender");
    if (content) assert.deepEqual(n.content, content, "content must be the event's content");
    if (prio) assert.equal(n.prio ?? "high", prio, `prio (notification: ${JSON.stringify(n)})`);
    if (highlight !== undefined)
        assert.equal(tweaksOf(n).highlight === true, highlight, `highlight tweak in ${JSON.stringify(n)}`);
    if (sound !== undefined) assert.equal(tweaksOf(n).sound, sound, `sound tweak in ${JSON.stringify(n)}`);
    assert.equal(typeof n.counts?.unread, "number", "counts.unread");
}

/** The event_id_only format: ids, counts, prio and devices only. */
function checkEventIdOnly(n, { eventId, roomId }) {
    assert.equal(n.event_id, eventId);
    assert.equal(n.room_id, roomId);
    for (const k of ["content", "type", "sender", "sender_display_name", "room_name"]) {
        assert.ok(!(k in n), `event_id_only must not send ${k}: ${JSON.stringify(n)}`);
    }
}

function checkBadge(n, unread) {
    assert.equal(n.event_id, undefined);
    assert.ok(!("content" in n) && !("room_id" in n), `badge-only push carries event fields: ${JSON.stringify(n)}`);
    assert.equal(n.counts?.unread, unread, `counts.unread of the badge push ${JSON.stringify(n)}`);
}

/** GET /pushers, the spec's fields only, normalised. */
async function pushersOf(s, user) {
    const { pushers } = await withTimeout(user.client.getPushers(), `${user.name}: getPushers`);
    const fields = [
        "app_display_name",
        "app_id",
        "data",
        "device_display_name",
        "kind",
        "lang",
        "profile_tag",
        "pushkey",
    ];
    return s.norm(
        pushers
            .map((p) => {
                const out = Object.fromEntries(fields.filter((f) => f in p).map((f) => [f, p[f]]));
                if (out.profile_tag === "") delete out.profile_tag; // Synapse stores "" when none was given
                return out;
            })
            .sort((a, b) => `${a.app_id}/${a.pushkey}`.localeCompare(`${b.app_id}/${b.pushkey}`)),
    );
}

async function waitForPushers(s, user, wanted, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    let seen;
    for (;;) {
        seen = (await pushersOf(s, user)).map((p) => p.pushkey).sort();
        if (isDeepStrictEqual(seen, [...wanted].sort())) return seen;
        if (Date.now() > deadline) {
            throw new Error(`${user.name}'s pushers are ${JSON.stringify(seen)}, expected ${JSON.stringify(wanted)}`);
        }
        await sleep(200);
    }
}

/** js-sdk's view of a room's counts: { total, highlight } (main timeline + threads). */
function jsCounts(client, roomId, threadId) {
    const room = client.getRoom(roomId);
    if (!room) return null;
    if (threadId) {
        return {
            total: room.getThreadUnreadNotificationCount(threadId, NotificationCountType.Total),
            highlight: room.getThreadUnreadNotificationCount(threadId, NotificationCountType.Highlight),
        };
    }
    return {
        total: room.getUnreadNotificationCount(NotificationCountType.Total),
        highlight: room.getUnreadNotificationCount(NotificationCountType.Highlight),
    };
}

async function expectJsCounts(s, client, roomId, expected, { threadId, mainOnly = false } = {}) {
    const read = () => {
        if (mainOnly) {
            const room = client.getRoom(roomId);
            return (
                room && {
                    total: room.getRoomUnreadNotificationCount(NotificationCountType.Total),
                    highlight: room.getRoomUnreadNotificationCount(NotificationCountType.Highlight),
                }
            );
        }
        return jsCounts(client, roomId, threadId);
    };
    const part = threadId ? ` thread ${s.roles.get(threadId)}` : mainOnly ? " (main timeline)" : "";
    const where = `${s.roles.get(roomId)}${part}`;
    await waitForClientState(client, {
        check: () => isDeepStrictEqual(read(), expected),
        what: () => `js-sdk counts of ${where} to be ${JSON.stringify(expected)} (now ${JSON.stringify(read())})`,
        timeoutMs: 10_000,
    });
    return { where, ...expected };
}

async function waitForEventInClient(client, roomId, eventId) {
    return waitForClientState(client, {
        check: () => client.getRoom(roomId)?.findEventById(eventId),
        what: `${eventId} in ${client.getUserId()}'s client`,
    });
}

// ---------------------------------------------------------------------------------------------
// The scenarios (the same code for every server)
// ---------------------------------------------------------------------------------------------

const ELEMENT_IOS_PAYLOAD = {
    default_payload: { aps: { "mutable-content": 1, alert: { "loc-key": "Notification", "loc-args": [] } } },
};

const SCENARIOS = [
    {
        key: "a-dm",
        title: "a. DM: the invite and a message push with sound (full and event_id_only pushers)",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const full = await s.pusher(bob, "full", { extraData: { "org.example.custom": "kept" } });
            const ids = await s.pusher(bob, "ids", {
                appId: "im.vector.app.ios.prod",
                format: "event_id_only",
                extraData: ELEMENT_IOS_PAYLOAD,
            });
            const dm = await s.createRoom(alice, "!dm", {
                preset: "trusted_private_chat",
                is_direct: true,
                invite: [bob.userId],
            });

            const invite = await s.expectPush(full, (n) => n.room_id === dm);
            s.role(invite.event_id, "$invite");
            assert.equal(invite.type, "m.room.member");
            assert.equal(invite.user_is_target, true);
            assert.equal(invite.content?.membership, "invite");
            const inviteIds = await s.expectPush(ids, invite.event_id);
            checkEventIdOnly(inviteIds, { eventId: invite.event_id, roomId: dm });

            const mark = s.gw.mark();
            await s.join([bob], dm);
            // Joining and reading the room clears the invite from the badge: a counts-only push.
            checkBadge(await s.expectBadge(full, mark), 0);
            checkBadge(await s.expectBadge(ids, mark), 0);
            const content = text("Hi, are you free for lunch today?");
            const msg = await s.send(alice, dm, "$message", content);
            const push = await s.expectPush(full, msg);
            checkEventPush(push, {
                eventId: msg,
                roomId: dm,
                sender: alice.userId,
                content,
                prio: "high",
                highlight: false,
                sound: "default",
            });
            assert.equal(push.sender_display_name, "Alice");
            assert.deepEqual(push.devices[0].data, { "org.example.custom": "kept" }, "data minus url");
            const idsPush = await s.expectPush(ids, msg);
            checkEventIdOnly(idsPush, { eventId: msg, roomId: dm });
            assert.deepEqual(idsPush.devices[0].data, { format: "event_id_only", ...ELEMENT_IOS_PAYLOAD });
            return s.result();
        },
    },
    {
        key: "b-group",
        title: "b. group room: plain message (no sound, prio low), m.mentions mention, keyword rule",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const pk = await s.pusher(bob, "full");
            const room = await s.createRoom(alice, "!group", {
                preset: "private_chat",
                name: "Group Chat",
                invite: [bob.userId, carol.userId],
            });
            const invite = await s.expectPush(pk, (n) => n.room_id === room);
            s.role(invite.event_id, "$invite");
            assert.equal(invite.room_name, "Group Chat");
            const mark = s.gw.mark();
            await s.join([bob, carol], room);
            checkBadge(await s.expectBadge(pk, mark), 0);

            const plain1 = await s.send(alice, room, "$plain1", text("Lunch is ready in the kitchen"));
            checkEventPush(await s.expectPush(pk, plain1), {
                eventId: plain1,
                roomId: room,
                prio: "low",
                highlight: false,
                sound: undefined,
            });
            const plain2 = await s.send(alice, room, "$plain2", text("Second helping of soup is there too"));
            await s.expectPush(pk, plain2);
            const own = await s.send(bob, room, "$own", text("On my way"));

            const mentionContent = text("Bob: can you review the report?", {
                format: "org.matrix.custom.html",
                formatted_body: `<a href="https://matrix.to/#/${bob.userId}">Bob</a>: can you review the report?`,
                "m.mentions": { user_ids: [bob.userId] },
            });
            const mention = await s.send(alice, room, "$mention", mentionContent);
            const mentionPush = await s.expectPush(pk, mention);
            checkEventPush(mentionPush, {
                eventId: mention,
                roomId: room,
                content: mentionContent,
                prio: "high",
                highlight: true,
                sound: "default",
            });
            assert.equal(mentionPush.room_name, "Group Chat");

            // Element's "Keywords" (loud): a content rule named after the keyword.
            await withTimeout(
                bob.client.addPushRule("global", PushRuleKind.ContentSpecific, "kiwi", {
                    pattern: "kiwi",
                    actions: ["notify", { set_tweak: "sound", value: "default" }, { set_tweak: "highlight" }],
                }),
                "add keyword rule",
            );
            const keyword = await s.send(alice, room, "$keyword", text("Anyone for kiwi smoothies?"));
            checkEventPush(await s.expectPush(pk, keyword), {
                eventId: keyword,
                roomId: room,
                prio: "high",
                highlight: true,
                sound: "default",
            });
            s.assertNotPushed([own], "bob's own message");
            return s.result();
        },
    },
    {
        key: "c-encrypted",
        title: "c. m.room.encrypted in a DM (sound) and in a group (no sound, prio high)",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const encryption = [
                { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
            ];
            const dm = await s.createRoom(alice, "!dm", {
                preset: "trusted_private_chat",
                is_direct: true,
                invite: [bob.userId],
                initial_state: encryption,
            });
            const group = await s.createRoom(alice, "!group", {
                preset: "private_chat",
                name: "Secret Group",
                invite: [bob.userId, carol.userId],
                initial_state: encryption,
            });
            await s.join([bob], dm);
            await s.join([bob, carol], group);
            const full = await s.pusher(bob, "full");
            const ids = await s.pusher(bob, "ids", { appId: "im.vector.app.android", format: "event_id_only" });

            const dmContent = fakeMegolm("dm");
            const encDm = await s.send(alice, dm, "$encrypted-dm", dmContent, "m.room.encrypted");
            checkEventPush(await s.expectPush(full, encDm), {
                eventId: encDm,
                roomId: dm,
                type: "m.room.encrypted",
                content: dmContent,
                prio: "high",
                highlight: false,
                sound: "default",
            });
            checkEventIdOnly(await s.expectPush(ids, encDm), { eventId: encDm, roomId: dm });

            const groupContent = fakeMegolm("group");
            const encGroup = await s.send(alice, group, "$encrypted-group", groupContent, "m.room.encrypted");
            checkEventPush(await s.expectPush(full, encGroup), {
                eventId: encGroup,
                roomId: group,
                type: "m.room.encrypted",
                content: groupContent,
                highlight: false,
                sound: undefined,
            });
            checkEventIdOnly(await s.expectPush(ids, encGroup), { eventId: encGroup, roomId: group });
            return s.result();
        },
    },
    {
        key: "d-muted",
        title: "d. muted room (override rule, no actions) and mentions-only room (room rule, dont_notify)",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const rooms = {};
            for (const [roleName, name] of [
                ["!muted", "Muted Room"],
                ["!mentions-only", "Quiet Room"],
                ["!normal", "Normal Room"],
            ]) {
                rooms[roleName] = await s.createRoom(alice, roleName, {
                    preset: "private_chat",
                    name,
                    invite: [bob.userId, carol.userId],
                });
                await s.join([bob, carol], rooms[roleName]);
            }
            const pk = await s.pusher(bob, "full");
            // Element's "Mute": an override rule for the room with no actions.
            const muted = rooms["!muted"];
            await withTimeout(
                bob.client.addPushRule("global", PushRuleKind.Override, muted, {
                    conditions: [{ kind: "event_match", key: "room_id", pattern: muted }],
                    actions: [],
                }),
                "mute rule",
            );
            // "Mentions and keywords": a room rule that does not notify.
            const quiet = rooms["!mentions-only"];
            await withTimeout(
                bob.client.addPushRule("global", PushRuleKind.RoomSpecific, quiet, { actions: ["dont_notify"] }),
                "room rule",
            );

            const mention = (body) => text(`Bob: ${body}`, { "m.mentions": { user_ids: [bob.userId] } });
            const silent = [
                await s.send(alice, muted, "$muted-plain", text("Nobody hears this")),
                await s.send(alice, muted, "$muted-mention", mention("not even this mention")),
                await s.send(alice, quiet, "$quiet-plain", text("Quiet chatter")),
            ];
            const sentinel = await s.send(alice, rooms["!normal"], "$normal-plain", text("Normal room message"));
            await s.expectPush(pk, sentinel);
            const quietMention = await s.send(alice, quiet, "$quiet-mention", mention("this one does notify"));
            checkEventPush(await s.expectPush(pk, quietMention), {
                eventId: quietMention,
                roomId: quiet,
                highlight: true,
                sound: "default",
            });
            s.assertNotPushed(silent, "messages in a muted room and plain messages in a mentions-only room");
            return s.result();
        },
    },
    {
        key: "e-room-mention",
        title: "e. @room (m.mentions.room) from users with and without notifications.room power",
        async run(s) {
            const alice = await s.user("alice", "Alice"); // the room's creator
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol"); // power 0
            const dave = await s.user("dave", "Dave"); // power 50 = notifications.room (default)
            // No m.room.name: room_name is whatever the server makes of the members.
            const room = await s.createRoom(alice, "!room", {
                preset: "private_chat",
                invite: [bob.userId, carol.userId, dave.userId],
            });
            await s.join([bob, carol, dave], room);
            await withTimeout(alice.client.setPowerLevel(room, dave.userId, 50), "dave to power 50");
            const pk = await s.pusher(bob, "full");

            const atRoom = (body) => text(`@room ${body}`, { "m.mentions": { room: true } });
            const byCreator = await s.send(alice, room, "$atroom-creator", atRoom("the build is green"));
            checkEventPush(await s.expectPush(pk, byCreator), {
                eventId: byCreator,
                roomId: room,
                highlight: true,
                prio: "high",
            });
            const byModerator = await s.send(dave, room, "$atroom-power50", atRoom("standup in five minutes"));
            checkEventPush(await s.expectPush(pk, byModerator), {
                eventId: byModerator,
                roomId: room,
                highlight: true,
                prio: "high",
            });
            const byMember = await s.send(carol, room, "$atroom-power0", atRoom("who wants cake?"));
            checkEventPush(await s.expectPush(pk, byMember), { eventId: byMember, roomId: room, highlight: false });
            // The same without m.mentions (an older client): spec v1.17 removed .m.rule.roomnotif
            // (MSC4210), so "@room" in the body alone is a plain message, whoever sends it.
            const legacyMember = await s.send(carol, room, "$legacy-atroom-power0", {
                msgtype: "m.text",
                body: "@room legacy ping",
            });
            checkEventPush(await s.expectPush(pk, legacyMember), {
                eventId: legacyMember,
                roomId: room,
                highlight: false,
            });
            const legacyModerator = await s.send(dave, room, "$legacy-atroom-power50", {
                msgtype: "m.text",
                body: "@room legacy ping from dave",
            });
            checkEventPush(await s.expectPush(pk, legacyModerator), {
                eventId: legacyModerator,
                roomId: room,
                highlight: false,
            });
            return s.result();
        },
    },
    {
        key: "f-badge",
        title: "f. read receipts: counts-only badge pushes, and js-sdk's room counts back to 0",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const one = await s.createRoom(alice, "!one", {
                preset: "private_chat",
                name: "Badge Room One",
                invite: [bob.userId, carol.userId],
            });
            const two = await s.createRoom(alice, "!two", {
                preset: "private_chat",
                name: "Badge Room Two",
                invite: [bob.userId, carol.userId],
            });
            await s.join([bob, carol], one);
            await s.join([bob, carol], two);
            const pk = await s.pusher(bob, "full");
            const bobSync = await startSyncingClient(s.server, bob);
            const counts = [];

            const m1 = await s.send(alice, one, "$one-1", text("First message in room one"));
            await s.expectPush(pk, m1);
            const m2 = await s.send(alice, one, "$one-2", text("Second message in room one"));
            await s.expectPush(pk, m2);
            const m3 = await s.send(
                alice,
                two,
                "$two-mention",
                text("Bob: a question in room two", { "m.mentions": { user_ids: [bob.userId] } }),
            );
            checkEventPush(await s.expectPush(pk, m3), { eventId: m3, roomId: two, highlight: true });
            counts.push(await expectJsCounts(s, bobSync, one, { total: 2, highlight: 0 }));
            counts.push(await expectJsCounts(s, bobSync, two, { total: 1, highlight: 1 }));

            let mark = s.gw.mark();
            await withTimeout(
                bobSync.sendReadReceipt(await waitForEventInClient(bobSync, one, m2)),
                "receipt in room one",
            );
            const badge1 = await s.expectBadge(pk, mark);
            checkBadge(badge1, 1);
            counts.push(await expectJsCounts(s, bobSync, one, { total: 0, highlight: 0 }));

            mark = s.gw.mark();
            await withTimeout(
                bobSync.sendReadReceipt(await waitForEventInClient(bobSync, two, m3)),
                "receipt in room two",
            );
            const badge0 = await s.expectBadge(pk, mark);
            checkBadge(badge0, 0);
            counts.push(await expectJsCounts(s, bobSync, two, { total: 0, highlight: 0 }));
            return s.result({ jsCounts: counts });
        },
    },
    {
        key: "g-rejected",
        title: "g. a pushkey the gateway rejects: its pusher disappears from GET /pushers",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const room = await s.createRoom(alice, "!group", {
                preset: "private_chat",
                name: "Reject Room",
                invite: [bob.userId, carol.userId],
            });
            await s.join([bob, carol], room);
            const gone = await s.pusher(bob, "rejected");
            const kept = await s.pusher(bob, "kept", { appId: "io.element.test.other" });
            s.gw.reject(gone);
            try {
                const m1 = await s.send(alice, room, "$first", text("First message"));
                await s.expectPush(gone, m1);
                await s.expectPush(kept, m1);
                await waitForPushers(s, bob, ["pk:kept"]);
                const afterRemoval = s.gw.mark();
                const m2 = await s.send(alice, room, "$second", text("Second message"));
                await s.expectPush(kept, m2);
                await s.gw.assertQuiet(forPushkey(gone), {
                    ms: 1_000,
                    since: afterRemoval,
                    what: "push to a rejected pushkey after its pusher was removed",
                });
                return s.result({ pushersAfter: await pushersOf(s, bob) });
            } finally {
                s.gw.unreject(gone);
            }
        },
    },
    {
        key: "g2-retry",
        title: "g2. the gateway answers 500: the homeserver retries and the push arrives",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const room = await s.createRoom(alice, "!group", {
                preset: "private_chat",
                name: "Retry Room",
                invite: [bob.userId, carol.userId],
            });
            await s.join([bob, carol], room);
            const pk = await s.pusher(bob, "full");
            const mark = s.gw.mark();
            s.gw.failWith(500);
            let msg;
            try {
                msg = await s.send(alice, room, "$message", text("Delivered on a retry"));
                // Two failed attempts: the first and at least one retry.
                const deadline = Date.now() + 15_000;
                const failures = () => s.gw.records.filter((r) => r.seq > mark && r.failed && forPushkey(pk)(r));
                while (failures().length < 2) {
                    if (Date.now() > deadline) throw new Error(`expected 2 failed attempts, saw ${failures().length}`);
                    await sleep(50);
                }
            } finally {
                s.gw.failWith(null);
            }
            checkEventPush(await s.expectPush(pk, msg, { timeoutMs: 20_000 }), { eventId: msg, roomId: room });
            const attempts = s.gw.records.filter((r) => r.seq > mark && forPushkey(pk)(r));
            const times = attempts.map((r) => r.at - attempts[0].at);
            return s.result({}, { attemptOffsetsMs: times });
        },
    },
    {
        key: "h-pushers",
        title: "h. POST /pushers/set: update, invalid URLs (400), kind null deletes, append",
        async run(s) {
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const dave = await s.user("dave", "Dave");
            const api = {};
            const android = { appId: "im.vector.app.android", format: "event_id_only" };
            const key = s.pushkey("phone");
            await withTimeout(bob.client.setPusher(s.pusherBody(key, android)), "set");
            api.afterSet = await pushersOf(s, bob);
            assert.equal(api.afterSet.length, 1);
            assert.deepEqual(api.afterSet[0].data, { url: "<gateway url>", format: "event_id_only" });

            await withTimeout(
                bob.client.setPusher({
                    ...s.pusherBody(key, android),
                    device_display_name: "Renamed phone",
                    lang: "de",
                }),
                "update",
            );
            api.afterUpdate = await pushersOf(s, bob);
            assert.equal(api.afterUpdate.length, 1);
            assert.equal(api.afterUpdate[0].device_display_name, "Renamed phone");

            const status = async (body) => {
                try {
                    await bob.client.setPusher(body);
                    return { status: 200 };
                } catch (err) {
                    return { status: err.httpStatus ?? String(err), errcode: err.errcode };
                }
            };
            const base = s.pusherBody(s.pushkey("invalid"));
            const invalid = {
                "path with a suffix": { ...base, data: { url: `${s.gw.url}/extra` } },
                "other path": { ...base, data: { url: `${s.gw.baseUrl}/push` } },
                "path with a trailing slash": { ...base, data: { url: `${s.gw.url}/` } },
                "no url": { ...base, data: { format: "event_id_only" } },
                "no data": Object.fromEntries(Object.entries(base).filter(([k]) => k !== "data")),
            };
            api.invalid = {};
            const errcodes = {};
            for (const [name, body] of Object.entries(invalid)) {
                const { status: st, errcode } = await status(body);
                api.invalid[name] = st;
                errcodes[name] = errcode;
                assert.equal(st, 400, `${name}: expected 400`);
            }
            api.afterInvalid = await pushersOf(s, bob);

            await withTimeout(bob.client.setPusher({ kind: null, app_id: android.appId, pushkey: key }), "delete");
            api.afterDelete = await pushersOf(s, bob);
            assert.deepEqual(api.afterDelete, []);
            api.deleteAgain = (await status({ kind: null, app_id: android.appId, pushkey: key })).status;

            // Same app_id and pushkey for several users.
            const shared = s.pushkey("shared");
            await withTimeout(bob.client.setPusher(s.pusherBody(shared)), "bob sets shared");
            await withTimeout(
                carol.client.setPusher({ ...s.pusherBody(shared), append: true }),
                "carol appends shared",
            );
            api.appendTrue = { bob: await pushersOf(s, bob), carol: await pushersOf(s, carol) };
            assert.equal(api.appendTrue.bob.length, 1, "append: true keeps bob's pusher");
            assert.equal(api.appendTrue.carol.length, 1);
            await withTimeout(dave.client.setPusher({ ...s.pusherBody(shared), append: false }), "dave takes shared");
            api.appendFalse = {
                bob: await pushersOf(s, bob),
                carol: await pushersOf(s, carol),
                dave: await pushersOf(s, dave),
            };
            assert.deepEqual(api.appendFalse.bob, [], "append: false removes other users' pushers with that key");
            assert.deepEqual(api.appendFalse.carol, []);
            assert.equal(api.appendFalse.dave.length, 1);
            return s.result({ api }, { errcodes });
        },
    },
    {
        key: "j-threads",
        title: "j. threads: js-sdk thread counts (threadSupport) and threaded receipts",
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const carol = await s.user("carol", "Carol");
            const room = await s.createRoom(alice, "!group", {
                preset: "private_chat",
                name: "Thread Room",
                invite: [bob.userId, carol.userId],
            });
            await s.join([bob, carol], room);
            const pk = await s.pusher(bob, "full");
            const bobSync = await startSyncingClient(s.server, bob, { startOptions: { threadSupport: true } });
            const counts = [];

            const root = await s.send(alice, room, "$root", text("Plans for Friday?"));
            await s.expectPush(pk, root);
            const inThread = (body, inReplyTo) =>
                text(body, {
                    "m.relates_to": {
                        rel_type: "m.thread",
                        event_id: root,
                        is_falling_back: true,
                        "m.in_reply_to": { event_id: inReplyTo },
                    },
                });
            const r1 = await s.send(alice, room, "$reply1", inThread("A picnic in the park", root));
            await s.expectPush(pk, r1);
            const r2 = await s.send(alice, room, "$reply2", inThread("Or a film, if it rains", r1));
            await s.expectPush(pk, r2);

            counts.push(await expectJsCounts(s, bobSync, room, { total: 2, highlight: 0 }, { threadId: root }));
            counts.push(await expectJsCounts(s, bobSync, room, { total: 1, highlight: 0 }, { mainOnly: true }));

            // A threaded receipt (js-sdk adds thread_id) clears the thread only.
            await withTimeout(
                bobSync.sendReadReceipt(await waitForEventInClient(bobSync, room, r2)),
                "threaded receipt",
            );
            counts.push(await expectJsCounts(s, bobSync, room, { total: 0, highlight: 0 }, { threadId: root }));
            counts.push(await expectJsCounts(s, bobSync, room, { total: 1, highlight: 0 }, { mainOnly: true }));

            const mark = s.gw.mark();
            await withTimeout(bobSync.sendReadReceipt(await waitForEventInClient(bobSync, room, root)), "main receipt");
            counts.push(await expectJsCounts(s, bobSync, room, { total: 0, highlight: 0 }, { mainOnly: true }));
            checkBadge(await s.expectBadge(pk, mark), 0);
            return s.result({ jsCounts: counts });
        },
    },
    {
        key: "i-restart",
        title: "i. gateway down, a message, a failed attempt, SIGKILL and restart: the push still arrives",
        only: "moss",
        why: "Synapse's retry timing differs, and restarting on the same data uses helpers.restartServer",
        timeoutMs: 120_000,
        async run(s) {
            const alice = await s.user("alice", "Alice");
            const bob = await s.user("bob", "Bob");
            const dm = await s.createRoom(alice, "!dm", {
                preset: "trusted_private_chat",
                is_direct: true,
                invite: [bob.userId],
            });
            await s.join([bob], dm);
            const pk = await s.pusher(bob, "full");
            const gw = s.gw;
            await gw.stopListening(); // connection refused
            let msg;
            let failedAttempts;
            try {
                msg = await s.send(alice, dm, "$message", text("Did this survive the crash?"));
                // Make sure the server has tried (and failed) before it dies, so the crash hits a
                // push that is waiting for its retry: listen again, but close every connection.
                const dropsBefore = gw.dropped;
                gw.dropConnections(true);
                await gw.listen();
                const deadline = Date.now() + 20_000;
                while (gw.dropped === dropsBefore) {
                    if (Date.now() > deadline) throw new Error("the server made no attempt to push within 20 s");
                    await sleep(25);
                }
                failedAttempts = gw.dropped - dropsBefore;
                await gw.stopListening();
                gw.dropConnections(false);
                s.env.server = await restartServer(s.env.server, { signal: "SIGKILL" });
            } finally {
                gw.dropConnections(false);
                await gw.listen(); // the same port
            }
            const started = Date.now();
            checkEventPush(await s.expectPush(pk, msg, { timeoutMs: 30_000 }), {
                eventId: msg,
                roomId: dm,
                sound: "default",
            });
            return s.result(
                {},
                { failedAttemptsBeforeCrash: failedAttempts, deliveredAfterRestartMs: Date.now() - started },
            );
        },
    },
];

// ---------------------------------------------------------------------------------------------
// Comparison with Synapse
// ---------------------------------------------------------------------------------------------

function firstDifference(a, b, at = "") {
    if (isDeepStrictEqual(a, b)) return null;
    const strings = (x) => Array.isArray(x) && x.every((v) => typeof v === "string");
    if (at.endsWith(".keys") && strings(a) && strings(b)) {
        const onlyA = JSON.stringify(a.filter((k) => !b.includes(k)));
        const onlyB = JSON.stringify(b.filter((k) => !a.includes(k)));
        return `${at}: fields only Synapse sends ${onlyA}, only moss sends ${onlyB}`;
    }
    if (a && b && typeof a === "object" && typeof b === "object" && Array.isArray(a) === Array.isArray(b)) {
        for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
            const d = firstDifference(a[k], b[k], `${at}${Array.isArray(a) ? `[${k}]` : `.${k}`}`);
            if (d) return d;
        }
    }
    return `${at || "(top)"}: Synapse ${JSON.stringify(a)} vs moss ${JSON.stringify(b)}`;
}

function assertSameAsSynapse(key, mossResult, t) {
    const reference = results.synapse[key];
    if (!reference) {
        t.diagnostic("no Synapse result to compare with (Synapse skipped or its scenario failed)");
        return;
    }
    const comparable = ({ notes, ...rest }) => rest;
    const a = comparable(reference);
    const b = comparable(mossResult);
    if (!isDeepStrictEqual(a, b)) {
        throw new Error(
            `moss differs from Synapse in scenario ${key}: ${firstDifference(a, b)}\n` +
                `--- Synapse (normalised) ---\n${JSON.stringify(a, null, 1)}\n` +
                `--- moss (normalised) ---\n${JSON.stringify(b, null, 1)}\n` +
                `--- Synapse bodies ---\n${JSON.stringify(reference.notes.bodies)}\n` +
                `--- moss bodies ---\n${JSON.stringify(mossResult.notes.bodies)}`,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The suites: Synapse first (the reference), then moss
// ---------------------------------------------------------------------------------------------

for (const target of TARGETS) {
    describe(`push notifications on ${target.name}`, { skip: target.skip, timeout: 6 * 60_000 }, () => {
        const env = { name: target.name, server: null, gateway: null };
        let failed = false;

        before(async () => {
            env.gateway = await startPushGateway({ name: `${target.name}'s push gateway`, tolerate: target.tolerate });
            env.server = await target.start();
        });

        after(async () => {
            stopAllClients();
            await env.gateway?.close();
            const latencies = Object.values(results[target.name])
                .flatMap((r) => r.notes.latenciesMs ?? [])
                .sort((a, b) => a - b);
            if (latencies.length) {
                const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];
                console.error(
                    `[${target.name}] send → push latency over ${latencies.length} pushes: ` +
                        `median ${at(0.5)} ms, p90 ${at(0.9)} ms, max ${latencies.at(-1)} ms`,
                );
            }
            if (env.gateway?.tolerated.length) {
                console.error(
                    `[${target.name}] tolerated departures from the push gateway spec: ` +
                        JSON.stringify([...new Set(env.gateway.tolerated.map((v) => `${v.path}: ${v.problem}`))]),
                );
            }
            if (!env.server) return;
            if (failed)
                console.error(
                    `--- ${target.name} log tail (${env.server.logPath}) ---\n${env.server.logTail(80)}\n---`,
                );
            await env.server.stop({ keepDir: failed });
        });

        for (const scenario of SCENARIOS) {
            const skip =
                scenario.only && scenario.only !== target.name ? `${scenario.only} only: ${scenario.why}` : false;
            it(scenario.title, { skip, timeout: scenario.timeoutMs ?? 60_000 }, async (t) => {
                const s = new Scenario(env, scenario.key);
                try {
                    const result = await scenario.run(s);
                    s.assertSpec();
                    results[target.name][scenario.key] = result;
                    dumpResults();
                    if (target.name === "moss") assertSameAsSynapse(scenario.key, result, t);
                } catch (err) {
                    failed = true;
                    const pushes = s.delivered().map((r) => s.full(r));
                    err.message +=
                        `\n--- pushes this scenario received on ${target.name} (normalised) ---\n` +
                        JSON.stringify(pushes, null, 1);
                    throw err;
                } finally {
                    stopAllClients();
                }
            });
        }
    });
}
