// A matrix-js-sdk 36 peer for moss-sdk-scenario: logs in as one user with Rust crypto (in-memory
// store), syncs with the classic /sync, and talks to its parent process in JSON lines.
//
//   node js-peer.mjs --base-url URL --user-id @carol:localhost --password PW [--auto-join]
//                    [--js-dir DIR]   (default: ../js, where `npm ci` installed matrix-js-sdk)
//
// stdout (one JSON object per line):
//   {"type":"ready","user_id":…,"device_id":…,"ed25519":…}
//   {"type":"invite","room_id":…,"inviter":…,"is_direct":…}
//   {"type":"joined","room_id":…}
//   {"type":"message","room_id":…,"event_id":…,"sender":…,"body":…,"encrypted":bool}
//   {"type":"utd","room_id":…,"event_id":…,"sender":…,"reason":…}  (not decryptable yet)
//   {"type":"sent","room_id":…,"event_id":…,"body":…}
//   {"type":"error","message":…}          (the process keeps running after a failed command)
// stdin (one JSON object per line):
//   {"cmd":"send","room_id":…,"body":…[,"new_session":true]}   send m.text (encrypted when the
//                                          room is; new_session: rotate the megolm session first)
//   {"cmd":"stop"}                         stop the client and exit 0 (so does EOF on stdin)
//
// Logs (MOSS_SDK_LOG=debug|info|warn|error, default warn) go to stderr.

import path from "node:path";
import readline from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

const here = path.dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
    options: {
        "base-url": { type: "string" },
        "user-id": { type: "string" },
        password: { type: "string" },
        "auto-join": { type: "boolean", default: false },
        "js-dir": { type: "string", default: path.join(here, "..", "js") },
    },
});
for (const name of ["base-url", "user-id", "password"]) {
    if (!args[name]) {
        console.error(`js-peer: --${name} is required`);
        process.exit(2);
    }
}

// matrix-js-sdk 36.2.0 arms long safety-net timers it never clears (see tests/clients/js/test/
// helpers.mjs): unref long timers so they cannot keep this process alive after "stop".
const LONG_TIMER_MS = 20_000;
for (const name of ["setTimeout", "setInterval"]) {
    const original = globalThis[name];
    globalThis[name] = Object.assign(function (handler, ms, ...rest) {
        const timer = original(handler, ms, ...rest);
        if (Number(ms) >= LONG_TIMER_MS && typeof timer?.unref === "function") timer.unref();
        return timer;
    }, original);
}

const level = (process.env.MOSS_SDK_LOG ?? "warn").toLowerCase();
// The Rust crypto wasm logs through console.debug/info; stdout is our protocol channel, so
// everything the SDK prints goes to stderr.
console.log = (...a) => console.error(...a);
if (!["trace", "debug", "info"].includes(level)) {
    console.debug = () => {};
    console.info = () => {};
}

const sdkUrl = (file) => pathToFileURL(path.join(args["js-dir"], "node_modules", "matrix-js-sdk", "lib", file)).href;
const sdk = await import(sdkUrl("index.js"));
const { logger: rootLogger } = await import(sdkUrl("logger.js"));
rootLogger.setLevel(level === "silent" ? "silent" : level, false);

const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
const fail = (err) => out({ type: "error", message: String(err?.stack ?? err) });

const baseUrl = args["base-url"];
const userId = args["user-id"];

const loginRes = await fetch(`${baseUrl}/_matrix/client/v3/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({
        type: "m.login.password",
        identifier: { type: "m.id.user", user: userId },
        password: args.password,
        initial_device_display_name: "moss-sdk-scenario js-peer",
    }),
});
const loginText = await loginRes.text();
if (loginRes.status !== 200) {
    fail(`login failed: HTTP ${loginRes.status} ${loginText}`);
    process.exit(1);
}
const login = JSON.parse(loginText);

const LEVELS = ["trace", "debug", "info", "warn", "error"];
function makeLogger() {
    const log = {};
    for (const l of LEVELS) {
        const on = level !== "silent" && LEVELS.indexOf(l) >= LEVELS.indexOf(level);
        log[l] = on ? (...a) => console.error(`[js-peer ${l}]`, ...a) : () => {};
    }
    log.getChild = () => makeLogger();
    return log;
}

const client = sdk.createClient({
    baseUrl,
    userId: login.user_id,
    accessToken: login.access_token,
    deviceId: login.device_id,
    logger: makeLogger(),
});
await client.initRustCrypto({ useIndexedDB: false });

const seen = new Set();
async function report(event, room) {
    const eventId = event.getId();
    if (!eventId || seen.has(eventId)) return;
    try {
        await client.decryptEventIfNeeded(event);
    } catch {
        // shows as a decryption failure below
    }
    const roomId = room?.roomId ?? event.getRoomId();
    if (event.isDecryptionFailure()) {
        // Reported again (as "message") when a later key makes the retry succeed.
        out({ type: "utd", room_id: roomId, event_id: eventId, sender: event.getSender(),
              reason: String(event.decryptionFailureReason) });
        return;
    }
    if (event.getType() !== "m.room.message") return;
    seen.add(eventId);
    out({
        type: "message",
        room_id: roomId,
        event_id: eventId,
        sender: event.getSender(),
        body: event.getContent()?.body ?? null,
        encrypted: event.isEncrypted(),
    });
}

client.on(sdk.RoomEvent.Timeline, (event, room, toStartOfTimeline) => {
    if (toStartOfTimeline) return;
    report(event, room).catch(fail);
});
// A failed decryption is retried when the key arrives: report the retry too.
client.on(sdk.MatrixEventEvent.Decrypted, (event) => {
    if (!event.isDecryptionFailure() && event.getType() === "m.room.message") {
        report(event, client.getRoom(event.getRoomId())).catch(fail);
    }
});

client.on(sdk.RoomEvent.MyMembership, (room, membership) => {
    if (membership === "invite") {
        const me = room.getMember(login.user_id);
        const inviteEvent = me?.events?.member;
        out({
            type: "invite",
            room_id: room.roomId,
            inviter: inviteEvent?.getSender() ?? null,
            is_direct: inviteEvent?.getContent()?.is_direct ?? null,
        });
        if (args["auto-join"]) client.joinRoom(room.roomId).catch(fail);
    } else if (membership === "join") {
        out({ type: "joined", room_id: room.roomId });
    }
});

const prepared = new Promise((resolve, reject) => {
    const onSync = (state, _prev, data) => {
        if (state === sdk.SyncState.Prepared) {
            client.off(sdk.ClientEvent.Sync, onSync);
            resolve();
        } else if (state === sdk.SyncState.Error) {
            reject(new Error(`initial sync failed: ${data?.error ?? "unknown"}`));
        }
    };
    client.on(sdk.ClientEvent.Sync, onSync);
});
await client.startClient({ initialSyncLimit: 20 });
await prepared;
const keys = await client.getCrypto().getOwnDeviceKeys();
out({ type: "ready", user_id: login.user_id, device_id: login.device_id, ed25519: keys.ed25519 });

let stopping = false;
function stop(code = 0) {
    if (stopping) return;
    stopping = true;
    client.stopClient();
    client.serverCapabilitiesService?.stop?.();
    client.removeAllListeners();
    // Let stdout drain, then leave even if the SDK still holds timers.
    setTimeout(() => process.exit(code), 200);
}

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
    if (!line.trim()) return;
    let cmd;
    try {
        cmd = JSON.parse(line);
    } catch (err) {
        fail(`bad command ${line}: ${err}`);
        return;
    }
    try {
        if (cmd.cmd === "send") {
            // new_session: discard the outbound megolm session first, so the new room key has to
            // reach the other devices as a to-device message.
            if (cmd.new_session) await client.getCrypto().forceDiscardSession(cmd.room_id);
            const res = await client.sendMessage(cmd.room_id, { msgtype: "m.text", body: cmd.body });
            out({ type: "sent", room_id: cmd.room_id, event_id: res.event_id, body: cmd.body });
        } else if (cmd.cmd === "stop") {
            stop(0);
        } else {
            fail(`unknown command ${line}`);
        }
    } catch (err) {
        fail(err);
    }
});
rl.on("close", () => stop(0));
