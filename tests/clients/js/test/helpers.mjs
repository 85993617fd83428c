// Shared plumbing for the matrix-js-sdk scenarios: run a throw-away moss server, register
// users over plain HTTP, and drive matrix-js-sdk clients through their own sync loop.
//
// Everything here is written so that a broken or hanging server turns into a prompt,
// readable test failure (with the server log attached) and never into a hung test run.

import { spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";

import * as sdk from "matrix-js-sdk";
import { logger as sdkRootLogger } from "matrix-js-sdk/lib/logger.js";

import { clusterEnv, clusterMode, createPostgresDatabase, startNginx } from "../../harness/cluster.mjs";
import { freePort } from "../../harness/harness.mjs";

export { sdk };

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

export const SERVER_NAME = "localhost";

/** Default upper bound for any single wait on the server or a client. */
export const WAIT_MS = 15_000;

// ---------------------------------------------------------------------------------------------
// Timers: matrix-js-sdk 36.2.0 arms long safety-net timers it never clears. Each /sync request
// gets a local timeout of pollTimeout + 80 s (timeoutSignal() in http-api/utils), and the
// capabilities poller can re-arm a 30 s / 6 h timer after stopClient() if a request was in
// flight. None of them can be reached from outside the SDK, and each keeps Node's event loop
// (and so this test process) alive for minutes after every client has been stopped.
//
// We therefore unref long timers created through the global setTimeout/setInterval: they still
// fire if the process is alive anyway, they just no longer keep it alive. Our own waits use
// `keepAliveTimeout` below (captured before the patch) so that a pending wait always keeps the
// process running until it either succeeds or times out.
// ---------------------------------------------------------------------------------------------
const LONG_TIMER_MS = 20_000;
const keepAliveTimeout = globalThis.setTimeout;

function unrefLongTimers(original) {
    const patched = function (handler, ms, ...args) {
        const timer = original(handler, ms, ...args);
        if (Number(ms) >= LONG_TIMER_MS && typeof timer?.unref === "function") timer.unref();
        return timer;
    };
    // Keep util.promisify(setTimeout) and friends working.
    return Object.assign(patched, original);
}

if (!globalThis.setTimeout.__mossUnrefPatched) {
    globalThis.setTimeout = unrefLongTimers(globalThis.setTimeout);
    globalThis.setInterval = unrefLongTimers(globalThis.setInterval);
    globalThis.setTimeout.__mossUnrefPatched = true;
}

// ---------------------------------------------------------------------------------------------
// SDK logging: the SDK logs every request and sync step at DEBUG, which would bury the test
// report. MOSS_SDK_LOG=debug|info|warn|error|silent picks the level (default: warn).
// ---------------------------------------------------------------------------------------------
const SDK_LOG_LEVELS = ["trace", "debug", "info", "warn", "error"];
const sdkLogLevel = (process.env.MOSS_SDK_LOG ?? "warn").toLowerCase();

sdkRootLogger.setLevel(sdkLogLevel === "silent" ? "silent" : sdkLogLevel, false);

// Child loggers created by the SDK reset themselves to DEBUG, so clients get their own logger.
function makeSdkLogger(prefix = "") {
    const threshold = SDK_LOG_LEVELS.indexOf(sdkLogLevel);
    const log = {};
    for (const [index, level] of SDK_LOG_LEVELS.entries()) {
        log[level] =
            threshold >= 0 && index >= threshold
                ? (...args) => console.error(`[sdk${prefix}] ${level}:`, ...args)
                : () => {};
    }
    log.getChild = (namespace) => makeSdkLogger(`${prefix} ${namespace}`);
    return log;
}

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/**
 * Resolves with the first truthy value of `check(...args)`, evaluated once right away (so a
 * condition that already holds is never missed) and again on every listed emitter event.
 * Rejects after `timeoutMs` with a message built from `what` (a string, or a function so it
 * can describe the state seen at the time of failure).
 */
export function waitFor({ emitter, events, check, what, timeoutMs = WAIT_MS }) {
    return new Promise((resolve, reject) => {
        let settled = false;
        let timer;
        const finish = (fn, value) => {
            if (settled) return;
            settled = true;
            clearTimeout(timer);
            for (const name of events) emitter.off(name, onEvent);
            fn(value);
        };
        const onEvent = (...args) => {
            if (settled) return;
            try {
                const result = check(...args);
                if (result) finish(resolve, result);
            } catch (err) {
                finish(reject, err);
            }
        };
        for (const name of events) emitter.on(name, onEvent);
        timer = keepAliveTimeout(() => {
            const description = typeof what === "function" ? safeDescribe(what) : what;
            finish(reject, new Error(`timed out after ${timeoutMs} ms waiting for ${description}`));
        }, timeoutMs);
        onEvent();
    });
}

function safeDescribe(what) {
    try {
        return what();
    } catch (err) {
        return `<could not describe: ${err}>`;
    }
}

/**
 * Waits until `check(client)` is truthy. It is re-evaluated after every processed /sync
 * response (the SDK emits ClientEvent.Sync once per response, after applying it) and on the
 * extra `events`, so it covers any state the SDK derives from sync.
 */
export function waitForClientState(client, { check, what, events = [], timeoutMs = WAIT_MS }) {
    return waitFor({
        emitter: client,
        events: [sdk.ClientEvent.Sync, sdk.ClientEvent.Room, ...events],
        check: () => check(client),
        what,
        timeoutMs,
    });
}

/**
 * Waits for an event in the live timeline of `roomId` that matches `predicate`, through the
 * SDK's RoomEvent.Timeline. Events already in the timeline count, so calling this after the
 * event arrived does not hang.
 */
export function waitForTimelineEvent(client, roomId, predicate, { what, timeoutMs = WAIT_MS } = {}) {
    const findExisting = () =>
        client
            .getRoom(roomId)
            ?.getLiveTimeline()
            .getEvents()
            .find((event) => predicate(event));
    return waitFor({
        emitter: client,
        events: [sdk.RoomEvent.Timeline],
        check: (event, room) => {
            if (event === undefined) return findExisting();
            return room?.roomId === roomId && predicate(event) ? event : undefined;
        },
        what: what ?? `a matching timeline event in ${roomId}`,
        timeoutMs,
    });
}

/** Runs `promise` but fails after `timeoutMs`, so one stuck HTTP call cannot hang the run. */
export async function withTimeout(promise, what, timeoutMs = WAIT_MS) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = keepAliveTimeout(
            () => reject(new Error(`timed out after ${timeoutMs} ms: ${what}`)),
            timeoutMs,
        );
    });
    try {
        return await Promise.race([promise, timeout]);
    } finally {
        clearTimeout(timer);
    }
}

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/** A free TCP port on 127.0.0.1, below the ephemeral range (see the shared harness). */
export { freePort };

/** The last `maxLines` lines of a log file (or a note that it cannot be read). */
export function tailOf(file, maxLines = 60) {
    try {
        const lines = fs.readFileSync(file, "utf8").trimEnd().split("\n");
        return lines.slice(-maxLines).join("\n");
    } catch (err) {
        return `<no log: ${err.message}>`;
    }
}

/**
 * Starts `moss serve` on a free loopback port with a fresh data directory, and waits until
 * GET /_matrix/client/versions answers 200. Returns a handle with baseUrl, port, dir, logPath,
 * logTail() and stop().
 *
 * Options (all optional; without them the behaviour is unchanged):
 * - `extraToml`: text written to DIR/moss.toml and passed with `--config` (for sections the
 *   MOSS_… environment variables cannot express, e.g. `[push]` with arrays). The environment
 *   below still overrides the keys it sets.
 * - `dir` and `port`: reuse an existing data directory and port (to restart a server on the
 *   same data; see restartServer()).
 */
export async function startServer({ readyTimeoutMs = 30_000, extraToml, dir: reuseDir, port: reusePort } = {}) {
    const bin = process.env.MOSS_BIN ?? path.join(REPO_ROOT, "target/debug/moss");
    if (!fs.existsSync(bin)) {
        throw new Error(`moss binary not found at ${bin}: build it (cargo build) or set MOSS_BIN`);
    }
    if (clusterMode()) return startCluster({ bin, readyTimeoutMs, extraToml });

    const dir = reuseDir ?? (await fsp.mkdtemp(path.join(os.tmpdir(), "moss-js-")));
    const port = reusePort ?? (await freePort());
    const baseUrl = `http://127.0.0.1:${port}`;
    const { proc, pid, logPath } = spawnMember(bin, dir, port, extraToml, { MOSS_DATA_DIR: path.join(dir, "data") });

    const server = {
        baseUrl,
        port,
        dir,
        logPath,
        extraToml,
        pid,
        logTail: (maxLines) => tailOf(logPath, maxLines),

        /**
         * SIGTERM (or `signal`, e.g. "SIGKILL" to simulate a crash), then SIGKILL after 10 s.
         * Resolves with { code, signal }.
         */
        async stop({ keepDir = false, signal = "SIGTERM" } = {}) {
            const info = await proc.stop(signal);
            if (!keepDir) await fsp.rm(dir, { recursive: true, force: true });
            return info;
        },
    };

    await waitUntilServing(server, proc, "moss", readyTimeoutMs, 100);
    return server;
}

/**
 * Watches a server process: when it exited (`exitInfo()`, null while running), a SIGKILL if this
 * test process exits without stopping it, and `stop(signal)` which escalates to SIGKILL after 10 s.
 */
export function superviseChild(child) {
    let exitInfo = null;
    const exited = new Promise((resolve) => {
        const done = (info) => {
            exitInfo ??= info;
            resolve(exitInfo);
        };
        child.once("exit", (code, signal) => done({ code, signal }));
        child.once("error", (error) => done({ code: null, signal: null, error }));
    });
    const killOnExit = () => {
        if (exitInfo === null) child.kill("SIGKILL");
    };
    process.once("exit", killOnExit);
    return {
        exitInfo: () => exitInfo,
        async stop(signal = "SIGTERM") {
            if (exitInfo === null) {
                child.kill(signal);
                const escalate = keepAliveTimeout(() => child.kill("SIGKILL"), 10_000);
                await exited;
                clearTimeout(escalate);
            }
            process.off("exit", killOnExit);
            return exited;
        },
    };
}

/**
 * Polls `server.baseUrl`'s /versions until it answers 200; fails with the server's log when the
 * process exits first or `timeoutMs` passes (then the server is stopped, its directory kept).
 */
export async function waitUntilServing(server, proc, name, timeoutMs, pollMs) {
    const deadline = Date.now() + timeoutMs;
    let lastProblem = "no answer yet";
    while (Date.now() < deadline) {
        if (proc.exitInfo() !== null) {
            throw new Error(`${name} exited before it was ready (${JSON.stringify(proc.exitInfo())}); ` +
                `dir ${server.dir}; log:\n${server.logTail()}`);
        }
        try {
            const res = await fetch(`${server.baseUrl}/_matrix/client/versions`, { signal: AbortSignal.timeout(2_000) });
            await res.arrayBuffer();
            if (res.status === 200) return;
            lastProblem = `HTTP ${res.status}`;
        } catch (err) {
            lastProblem = err.cause?.code ?? err.message;
        }
        await sleep(pollMs);
    }
    await server.stop({ keepDir: true });
    throw new Error(`${name} did not answer GET /_matrix/client/versions with 200 within ${timeoutMs} ms ` +
        `(last: ${lastProblem}); dir ${server.dir}; log:\n${server.logTail()}`);
}

/** One `moss serve` on `port` with `env` added; its handle (proc, pid, port, logPath). */
function spawnMember(bin, dir, port, extraToml, env) {
    fs.mkdirSync(dir, { recursive: true });
    const logPath = path.join(dir, "moss.log");
    const args = ["serve"];
    if (extraToml !== undefined) {
        const configPath = path.join(dir, "moss.toml");
        fs.writeFileSync(configPath, extraToml);
        args.unshift("--config", configPath);
    }
    const logFd = fs.openSync(logPath, "a");
    const child = spawn(bin, args, {
        cwd: dir,
        env: {
            ...process.env,
            MOSS_HTTP__BIND: `127.0.0.1:${port}`,
            MOSS_SERVER_NAME: SERVER_NAME,
            MOSS_REGISTRATION: "open",
            MOSS_RATE_LIMITS__ENABLED: "false",
            ...env,
        },
        stdio: ["ignore", logFd, logFd],
    });
    fs.closeSync(logFd);
    return { proc: superviseChild(child), pid: child.pid, port, dir, logPath };
}

/**
 * Two moss processes on one new PostgreSQL database behind nginx (tests/clients/harness/
 * cluster.mjs): the same handle as one server (baseUrl is nginx's), plus `members` and
 * `kill(i, signal)` / `revive(i)` for one of them. Clients' requests alternate between them.
 */
async function startCluster({ bin, readyTimeoutMs, extraToml }) {
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "moss-js-cluster-"));
    const shared = clusterEnv(createPostgresDatabase(), path.join(dir, "data"));
    const ports = [await freePort(), await freePort()];
    const port = await freePort();
    shared.MOSS_PUBLIC_BASEURL = `http://127.0.0.1:${port}`; // what .well-known names: the proxy
    const spawnOne = (i) => spawnMember(bin, path.join(dir, "ab"[i]), ports[i], extraToml, shared);
    const members = [spawnOne(0), spawnOne(1)];
    // Waits until member `i` answers on its own port; `giveUp` is what a timeout stops.
    const waitForMember = (i, giveUp) => {
        const m = members[i];
        const one = { ...m, baseUrl: `http://127.0.0.1:${m.port}`, dir, logTail: () => tailOf(m.logPath), stop: giveUp };
        return waitUntilServing(one, m.proc, `moss process ${"ab"[i]}`, readyTimeoutMs, 100);
    };
    const nginx = startNginx(path.join(dir, "nginx"), port, ports.map((p) => `127.0.0.1:${p}`));
    const server = {
        baseUrl: `http://127.0.0.1:${port}`,
        port,
        dir,
        logPath: members[0].logPath,
        extraToml,
        members,
        pid: members[0].pid,
        logTail: (maxLines = 60) =>
            members.map((m, i) => `--- process ${"ab"[i]} ---\n${tailOf(m.logPath, maxLines)}`).join("\n"),
        /** Stops (or with "SIGKILL" kills) member `i`; nginx passes its requests to the other. */
        async kill(i, signal = "SIGKILL") {
            return members[i].proc.stop(signal);
        },
        /** Starts member `i` again on its port and waits until it answers. */
        async revive(i) {
            members[i] = spawnOne(i);
            await waitForMember(i, async () => members[i].proc.stop());
        },
        async stop({ keepDir = false, signal = "SIGTERM" } = {}) {
            nginx.stop();
            const infos = await Promise.all(members.map((m) => m.proc.stop(signal)));
            if (!keepDir) await fsp.rm(dir, { recursive: true, force: true });
            return infos[0];
        },
        /** Both processes stopped with `signal` and started again on the same database. */
        async restart({ signal = "SIGTERM" } = {}) {
            await Promise.all(members.map((m) => m.proc.stop(signal)));
            await Promise.all([0, 1].map((i) => server.revive(i)));
            return server;
        },
    };
    for (const i of [0, 1]) await waitForMember(i, async () => server.stop({ keepDir: true }));
    await waitUntilServing(server, members[0].proc, "nginx in front of two moss processes", readyTimeoutMs, 100);
    return server;
}

/**
 * Stops `server` with `signal` (default SIGTERM; "SIGKILL" simulates a crash) and starts a new
 * moss on the same data directory, port and extra configuration. Returns the new handle (same
 * baseUrl, so clients created for the old one keep working). A cluster restarts both processes.
 */
export async function restartServer(server, { signal = "SIGTERM", readyTimeoutMs = 30_000 } = {}) {
    if (server.restart) return server.restart({ signal });
    await server.stop({ keepDir: true, signal });
    return startServer({ readyTimeoutMs, extraToml: server.extraToml, dir: server.dir, port: server.port });
}

// ---------------------------------------------------------------------------------------------
// Users and clients
// ---------------------------------------------------------------------------------------------

async function postJson(url, body) {
    const res = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(WAIT_MS),
    });
    const text = await res.text();
    let json;
    try {
        json = JSON.parse(text);
    } catch {
        json = undefined;
    }
    return { status: res.status, json, text };
}

/**
 * Registers `username` with the m.login.dummy stage. The spec lets a server answer the first
 * attempt with 401 and a user-interactive-auth `session` even when dummy auth is offered up
 * front; the stage then has to be completed again inside that session.
 * Returns { userId, accessToken, deviceId, password }.
 */
export async function registerUser(server, username, password = `pw-${randomUUID()}`) {
    const url = `${server.baseUrl}/_matrix/client/v3/register`;
    const body = {
        username,
        password,
        initial_device_display_name: `js-sdk test (${username})`,
        auth: { type: "m.login.dummy" },
    };

    let res = await postJson(url, body);
    if (res.status === 401 && typeof res.json?.session === "string") {
        res = await postJson(url, {
            ...body,
            auth: { type: "m.login.dummy", session: res.json.session },
        });
    }
    if (res.status !== 200) {
        throw new Error(`registering ${username} failed: HTTP ${res.status} ${res.text}`);
    }

    const { user_id: userId, access_token: accessToken, device_id: deviceId } = res.json ?? {};
    const expectedUserId = `@${username}:${SERVER_NAME}`;
    if (userId !== expectedUserId || typeof accessToken !== "string" || typeof deviceId !== "string") {
        throw new Error(
            `registering ${username}: expected user_id ${expectedUserId} with access_token and ` +
                `device_id strings, got ${res.text}`,
        );
    }
    return { userId, accessToken, deviceId, password };
}

// Every client created here, so a failed step cannot leave a sync loop running.
const liveClients = new Set();

/** A client that is not syncing (for one-off API calls). */
export function createClient(server, user) {
    const client = sdk.createClient({
        baseUrl: server.baseUrl,
        accessToken: user.accessToken,
        userId: user.userId,
        deviceId: user.deviceId,
        logger: makeSdkLogger(` ${user.userId}`),
    });
    liveClients.add(client);
    return client;
}

/**
 * Creates a client, starts its sync loop and waits for the first sync to complete
 * (SyncState.Prepared). An initial sync that errors fails at once instead of at the timeout.
 * `startOptions` are passed on to client.startClient (e.g. { threadSupport: true }).
 */
export async function startSyncingClient(
    server,
    user,
    { initialSyncLimit = 20, timeoutMs = WAIT_MS, startOptions = {} } = {},
) {
    const client = createClient(server, user);
    const prepared = waitFor({
        emitter: client,
        events: [sdk.ClientEvent.Sync],
        check: (state, _prevState, data) => {
            if (state === sdk.SyncState.Error) {
                throw new Error(`initial sync of ${user.userId} failed: ${data?.error ?? "unknown error"}`);
            }
            return state === sdk.SyncState.Prepared;
        },
        what: () => `the first sync of ${user.userId} (sync state: ${client.getSyncState()})`,
        timeoutMs,
    });
    try {
        await client.startClient({ initialSyncLimit, ...startOptions });
        await prepared;
    } catch (err) {
        stopClient(client);
        throw err;
    }
    return client;
}

/** Stops a client's sync loop and every timer or listener we can reach. Idempotent. */
export function stopClient(client) {
    if (!liveClients.delete(client)) return;
    client.stopClient();
    // stopClient() leaves the capabilities poller armed when its request was still in flight.
    client.serverCapabilitiesService?.stop();
    client.removeAllListeners();
}

export function stopAllClients() {
    for (const client of [...liveClients]) stopClient(client);
}

// ---------------------------------------------------------------------------------------------
// Clients with extra options (added for the end-to-end-encryption scenarios)
// ---------------------------------------------------------------------------------------------

/**
 * Like `createClient`, but passes `options` (e.g. `cryptoCallbacks`) on to sdk.createClient.
 * The client is tracked like the others, so stopClient()/stopAllClients() stop it.
 */
export function createClientWithOptions(server, user, options = {}) {
    const client = sdk.createClient({
        baseUrl: server.baseUrl,
        accessToken: user.accessToken,
        userId: user.userId,
        deviceId: user.deviceId,
        logger: makeSdkLogger(` ${user.userId}/${user.deviceId}`),
        ...options,
    });
    liveClients.add(client);
    return client;
}

/**
 * Like `startSyncingClient`, but the client is built with `clientOptions`, and
 * `await beforeStart(client)` runs before the sync loop starts (for example
 * `client.initRustCrypto(...)`, which must happen before startClient).
 */
export async function startCustomClient(
    server,
    user,
    { clientOptions = {}, beforeStart, initialSyncLimit = 20, timeoutMs = WAIT_MS } = {},
) {
    const client = createClientWithOptions(server, user, clientOptions);
    try {
        if (beforeStart) await beforeStart(client);
        const prepared = waitFor({
            emitter: client,
            events: [sdk.ClientEvent.Sync],
            check: (state, _prevState, data) => {
                if (state === sdk.SyncState.Error) {
                    throw new Error(`initial sync of ${user.userId} failed: ${data?.error ?? "unknown error"}`);
                }
                return state === sdk.SyncState.Prepared;
            },
            what: () => `the first sync of ${user.userId} (sync state: ${client.getSyncState()})`,
            timeoutMs,
        });
        prepared.catch(() => {}); // observed below; avoids an unhandled rejection if startClient throws
        await client.startClient({ initialSyncLimit });
        await prepared;
    } catch (err) {
        stopClient(client);
        throw err;
    }
    return client;
}
