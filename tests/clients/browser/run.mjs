#!/usr/bin/env node
// Real-browser client test: the Hydrogen web client, in headless Chromium, talks to moss.
//
// Scenario (exit code 0 = pass):
//   1. Start the moss binary (env MOSS_BIN, default ../../../target/debug/moss) on a free loopback
//      port with a temp data dir and open registration, configured through MOSS_* variables exactly
//      like tests/clients/python/conftest.py does.
//   2. Serve the Vite build of the Hydrogen app (dist/, see src/main.js; built by
//      scripts/setup-browser.sh) from a tiny static server on another port, so every request
//      Hydrogen makes to moss is cross-origin and needs moss's CORS handling.
//   3. Register alice and bob over the client-server API; alice creates a room that is
//      end-to-end encrypted (m.room.encryption, m.megolm.v1.aes-sha2, as initial state) and
//      invites bob; bob joins.  BROWSER_TEST_ENCRYPTED=0 makes it a plain, unencrypted room.
//   4. Start bob_nio.py (matrix-nio, with E2EE in the encrypted scenario) in the repo's venv: it logs
//      in a new device, uploads its device and one-time keys, syncs once and says "ready".
//   5. Launch /usr/bin/chromium through playwright-core with a fresh profile, open the app, type
//      moss's URL into Hydrogen's homeserver field, log in as alice through the login form, open
//      the room from the room list, type a message in the composer and press Enter. In the
//      encrypted room Hydrogen (libolm in WebAssembly) claims bob's one-time key, shares its Megolm
//      session with bob's device over to-device messages and sends an m.room.encrypted event.
//   6. Pass when bob_nio reports the message with the exact body, decrypted from a MegolmEvent in
//      the encrypted scenario.
//
// A screenshot is saved after each browser step in MOSS_TEST_OUTPUT (default ./output), together
// with the browser console log and moss's log. On failure the runner prints moss's log tail, the
// browser console, every moss response with status >= 400 and bob's output.
//
// Env: MOSS_BIN, MOSS_TEST_OUTPUT, BROWSER_TEST_ENCRYPTED (default 1), BROWSER_TEST_PYTHON
// (default <repo>/.venv/bin/python), CHROMIUM (default /usr/bin/chromium),
// BROWSER_TEST_KEEP_TMP=1 keeps the temp dirs (moss data, browser profile, nio store).
// BROWSER_TEST_HOMESERVER=<base url> runs the same scenario against an already running server
// with open registration (e.g. Synapse) instead of starting moss: a check of the harness itself.

import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync } from "node:fs";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import {
    REPO_ROOT, configure, state, stamp, log, sleep, tmpDir, Fatal, waitFor, // basics
    startMoss, mossReport, apiOk, register, startStaticServer, // moss, its API, the app's server
    launchChromium, shot, prepareOutput, writeArtifacts, cleanup, // browser, output, teardown
} from "../harness/harness.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const OUTPUT_DIR = path.resolve(process.env.MOSS_TEST_OUTPUT || path.join(HERE, "output"));
const DIST_DIR = path.join(HERE, "dist");
const PYTHON = process.env.BROWSER_TEST_PYTHON || path.join(REPO_ROOT, ".venv/bin/python");
const ENCRYPTED = process.env.BROWSER_TEST_ENCRYPTED !== "0";
const EXTERNAL_HS = process.env.BROWSER_TEST_HOMESERVER?.replace(/\/+$/, "") || null;
const BOB_TIMEOUT_S = 60;
const OVERALL_TIMEOUT_MS = 150_000;
configure({
    mossBin: path.resolve(HERE, process.env.MOSS_BIN || "../../../target/debug/moss"),
    outputDir: OUTPUT_DIR,
    stepTimeoutMs: 30_000,
    waitIntervalMs: 100,
    logTailLines: 80,
    keepTmp: process.env.BROWSER_TEST_KEEP_TMP === "1",
});

// ---------------------------------------------------------------------------------------------
// The test's own state, beside the harness's (moss, browser, temp dirs, console log).
Object.assign(state, {
    bob: null, // {proc, lines: [], stderr: []}
    badResponses: [],
    requests: [],
    warnings: [],
});

// ---------------------------------------------------------------------------------------------
// Static server for dist/

async function startWebServer() {
    if (!existsSync(path.join(DIST_DIR, "index.html"))) {
        throw new Error(`${DIST_DIR}/index.html is missing: run scripts/setup-browser.sh to build the app`);
    }
    const url = await startStaticServer(DIST_DIR);
    log(`serving ${DIST_DIR} at ${url}`);
    return url;
}

// ---------------------------------------------------------------------------------------------
// bob (matrix-nio)

function startBob(args) {
    if (!existsSync(PYTHON)) {
        throw new Error(`${PYTHON} is missing: run scripts/setup-python.sh first`);
    }
    const proc = spawn(PYTHON, [path.join(HERE, "bob_nio.py"), ...args], {
        stdio: ["ignore", "pipe", "pipe"],
        env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    const bob = { proc, lines: [], stderr: [], exit: null };
    state.bob = bob;
    readline.createInterface({ input: proc.stdout }).on("line", (line) => {
        let msg;
        try {
            msg = JSON.parse(line);
        } catch {
            msg = { event: "text", line };
        }
        bob.lines.push(msg);
        log(`bob: ${line}`);
    });
    readline.createInterface({ input: proc.stderr }).on("line", (line) => bob.stderr.push(line));
    proc.on("exit", (code, signal) => (bob.exit = { code, signal }));
    return bob;
}

async function bobEvent(kind, timeoutMs, check = () => {}) {
    const bob = state.bob;
    return waitFor(
        `bob_nio to report "${kind}"`,
        () => {
            check();
            const hit = bob.lines.find((l) => l.event === kind);
            if (hit) return hit;
            const result = bob.lines.find((l) => l.event === "result");
            if (result) throw new Fatal(`bob_nio finished early: ${JSON.stringify(result)}`);
            if (bob.exit) throw new Fatal(`bob_nio exited (${JSON.stringify(bob.exit)}) before "${kind}"`);
            return null;
        },
        timeoutMs,
    );
}

// ---------------------------------------------------------------------------------------------
// Browser

// An exception that escaped Hydrogen (an unhandled rejection in its key sharing, say) leaves the
// UI looking fine while the scenario can no longer succeed: fail at once with it.
function assertNoPageError() {
    if (state.pageErrors.length > 0) {
        const err = state.pageErrors[0];
        throw new Fatal(`uncaught exception in Hydrogen: ${err.stack || err}`);
    }
}

async function step(name, fn) {
    state.step = name;
    log(`step: ${name}`);
    const result = await fn();
    await shot(name);
    return result;
}

async function launchBrowser(mossBase) {
    const { context, page } = await launchChromium(chromium, "moss-chromium-profile-", {
        viewport: { width: 1200, height: 800 },
    });
    // Record every failing or interesting moss response (the context sees service-worker traffic too).
    context.on("requestfailed", (req) => {
        if (req.url().startsWith(mossBase)) {
            state.consoleLog.push(`[${stamp()}s] request failed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`);
        }
    });
    context.on("response", async (res) => {
        const url = res.url();
        // Hydrogen's service worker forwards GETs: the context sees the worker's own request to
        // moss, and the page sees the same response once more "from the service worker" (with
        // its body readable): keep the page's view only.
        if (!url.startsWith(mossBase) || res.request().serviceWorker()) return;
        const req = res.request();
        const entry = { t: stamp(), method: req.method(), path: url.slice(mossBase.length), status: res.status() };
        // Bodies are kept for failures and for the E2EE endpoints, whose exact shape matters.
        if (res.status() >= 400 || /\/(keys|sendToDevice|room_keys)\//.test(entry.path)) {
            entry.body = (await res.text().catch(() => "<no body>")).slice(0, 4000);
            if (req.method() !== "GET") entry.request = req.postData()?.slice(0, 4000);
        }
        if (res.status() >= 400) state.badResponses.push(entry);
        state.requests.push(entry);
    });
    return page;
}

// ---------------------------------------------------------------------------------------------
// Scenario

const ARTIFACTS = ["browser-console.log", "homeserver-requests.json", "moss.log", "bob-nio.log"];

async function scenario() {
    prepareOutput(ARTIFACTS);
    log(`scenario: ${ENCRYPTED ? "ENCRYPTED room (m.megolm.v1.aes-sha2)" : "unencrypted room"}; output in ${OUTPUT_DIR}`);
    const mossBase = EXTERNAL_HS || (await startMoss("moss-browser-"));
    if (EXTERNAL_HS) log(`using the running homeserver at ${EXTERNAL_HS} instead of starting moss`);
    const webBase = await startWebServer();

    const suffix = Math.random().toString(36).slice(2, 8);
    const alicePw = `alice-pw-${suffix}`;
    const bobPw = `bob-pw-${suffix}`;
    // A fresh moss has no users yet; a long-lived external server gets unique names.
    const aliceName = EXTERNAL_HS ? `alice_${suffix}` : "alice";
    const alice = await register(mossBase, aliceName, alicePw, "register");
    const bob = await register(mossBase, EXTERNAL_HS ? `bob_${suffix}` : "bob", bobPw, "register");
    log(`registered ${alice.user_id} and ${bob.user_id}`);

    const roomName = `Browser test ${ENCRYPTED ? "(encrypted)" : "(plain)"}`;
    const initialState = ENCRYPTED
        ? [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }]
        : [];
    const { room_id: roomId } = await apiOk(mossBase, "POST", "/_matrix/client/v3/createRoom", {
        token: alice.access_token,
        body: { name: roomName, preset: "private_chat", invite: [bob.user_id], initial_state: initialState },
    });
    await apiOk(mossBase, "POST", `/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, {
        token: bob.access_token,
        body: {},
    });
    log(`alice created ${roomId} ("${roomName}"), bob joined`);

    const message = `Hello Bob from Hydrogen ${suffix}${ENCRYPTED ? " (encrypted)" : ""}`;
    const nioStore = tmpDir("moss-nio-store-");
    startBob([
        "--homeserver", mossBase,
        "--user", bob.user_id,
        "--password", bobPw,
        "--room-id", roomId,
        "--sender", alice.user_id,
        "--expect-body", message,
        "--store-dir", nioStore,
        "--timeout", String(BOB_TIMEOUT_S),
        ...(ENCRYPTED ? ["--encrypted"] : []),
    ]);
    const ready = await bobEvent("ready", 30_000);
    if (ENCRYPTED && !ready.room_encrypted) throw new Error("bob's nio client does not see the room as encrypted");
    if (ready.keys_error) {
        // Not fatal yet: go on so the report also shows how far Hydrogen gets; bob cannot
        // decrypt anything without keys, so the run fails at the end regardless.
        state.warnings.push(`bob's device has no keys on the server: ${ready.keys_error}`);
        log(`WARNING: ${state.warnings.at(-1)}`);
    }

    const page = await launchBrowser(mossBase);

    await step("login-page", async () => {
        // Without encryption the app is started without libolm (?e2ee=0): Hydrogen then runs as a
        // client without E2EE support and never touches the /keys endpoints.
        await page.goto(`${webBase}/index.html${ENCRYPTED ? "" : "?e2ee=0"}`, { waitUntil: "load" });
        await page.waitForSelector("#homeserver");
    });

    await step("homeserver-entered", async () => {
        await page.fill("#homeserver", mossBase);
        // Hydrogen queries /.well-known and the login flows about 1 s after typing stops.
        await page.locator("#homeserver").blur();
        await page.waitForSelector("#username:not([disabled])");
    });

    await step("credentials-entered", async () => {
        await page.fill("#username", aliceName);
        await page.fill("#password", alicePw);
    });

    await step("logged-in", async () => {
        await page.click(".PasswordLoginView button[type=submit]");
        // Login, then Hydrogen's session load (keys upload in the E2EE case) and first sync.
        await waitFor(
            "Hydrogen's session view with the room in the room list",
            async () => {
                assertNoPageError();
                const err = await page.locator(".LoginView .error").allTextContents();
                if (err.some((e) => e.trim())) throw new Fatal(`Hydrogen shows a login error: ${err.join(" | ")}`);
                // A failed session load shows its message next to "Export logs" / "Log out" buttons.
                const load = page.locator(".SessionLoadStatusView", { has: page.locator("button", { hasText: "Log out" }) });
                if ((await load.count()) > 0) {
                    throw new Fatal(`Hydrogen's session load failed: ${(await load.first().locator("p").first().innerText()).trim()}`);
                }
                return (await page.locator(".SessionView .RoomList li", { hasText: roomName }).count()) > 0;
            },
            45_000,
            250,
        );
    });

    await step("room-open", async () => {
        await page.locator(".SessionView .RoomList li a", { hasText: roomName }).first().click();
        await page.waitForSelector(".RoomView .MessageComposer textarea");
        if (ENCRYPTED) {
            // Hydrogen sets this placeholder only once it knows the room is encrypted.
            await page.waitForSelector('.MessageComposer textarea[placeholder^="Send an encrypted message"]');
        }
    });

    await step("message-typed", async () => {
        await page.locator(".MessageComposer textarea").fill(message);
    });

    await step("message-sent", async () => {
        const errorsBefore = state.badResponses.length;
        await page.locator(".MessageComposer textarea").press("Enter");
        // Moss must have accepted the event: a PUT …/send/<type>/<txn> answered 200. In the
        // encrypted room Hydrogen first fetches the members, queries and claims keys and sends
        // the room key to bob's device: an error on any of those stops the message, and Hydrogen
        // would only retry quietly, so report the first one at once.
        const eventType = ENCRYPTED ? "m.room.encrypted" : "m.room.message";
        const sendPath = /\/(send|sendToDevice|keys|members)\b/;
        await waitFor(
            `moss to accept Hydrogen's PUT /send/${eventType}`,
            async () => {
                assertNoPageError();
                const bad = state.badResponses.slice(errorsBefore).find((r) => sendPath.test(r.path));
                if (bad) throw new Fatal(`sending failed at ${bad.method} ${bad.path}: HTTP ${bad.status} ${bad.body}`);
                return state.requests.some(
                    (r) => r.method === "PUT" && r.path.includes(`/send/${eventType}/`) && r.status === 200,
                );
            },
            30_000,
            200,
        );
        await page.locator(".Timeline_message", { hasText: message }).first().waitFor();
    });

    const result = await step("bob-received", async () => {
        const res = await bobEvent("result", (BOB_TIMEOUT_S + 10) * 1000, assertNoPageError);
        // Give the UI a moment so the final screenshot shows the echoed message.
        await sleep(500);
        return res;
    });
    if (!result.ok) throw new Error(`bob did not get the message: ${JSON.stringify(result)}`);
    if (result.message.body !== message) throw new Error(`bob got the wrong body: ${JSON.stringify(result)}`);
    if (ENCRYPTED && !result.message.decrypted) throw new Error(`bob's message was not decrypted: ${JSON.stringify(result)}`);
    log(`bob received ${JSON.stringify(result.message)}`);
}

// ---------------------------------------------------------------------------------------------

function writeBrowserArtifacts() {
    writeArtifacts(() => ({
        "homeserver-requests.json": JSON.stringify(state.requests, null, 1),
        ...(state.bob && {
            "bob-nio.log": [...state.bob.lines.map((l) => JSON.stringify(l)), "--- stderr ---", ...state.bob.stderr].join("\n") + "\n",
        }),
    }));
}

function failureReport(err) {
    const out = [];
    out.push(`\nFAILED at step "${state.step}": ${err.stack || err}`);
    if (state.moss) out.push(mossReport());
    for (const w of state.warnings) out.push(`WARNING: ${w}`);
    out.push(`\n--- moss responses with status >= 400 (${state.badResponses.length}) ---`);
    for (const r of state.badResponses) {
        const shown = { ...r };
        if (shown.request && shown.request.length > 300) shown.request = `${shown.request.slice(0, 300)}… (full text in homeserver-requests.json)`;
        out.push(JSON.stringify(shown));
    }
    const e2ee = state.requests.filter((r) => r.body !== undefined && r.status < 400);
    if (e2ee.length > 0) {
        out.push(`\n--- E2EE exchanges with the homeserver (${e2ee.length}; bodies cut at 600 characters) ---`);
        for (const r of e2ee) {
            const cut = (t) => (t && t.length > 600 ? `${t.slice(0, 600)}…` : t);
            out.push(JSON.stringify({ ...r, request: cut(r.request), body: cut(r.body) }));
        }
    }
    out.push(`\n--- browser console (last 150 of ${state.consoleLog.length} lines) ---`);
    out.push(...state.consoleLog.slice(-150));
    if (state.bob) {
        out.push(`\n--- bob_nio stdout ---`, ...state.bob.lines.map((l) => JSON.stringify(l)));
        out.push(`--- bob_nio stderr (last 40) ---`, ...state.bob.stderr.slice(-40));
    }
    console.error(out.join("\n"));
}

// bob goes before moss.
async function stopBob() {
    if (state.bob && !state.bob.exit) {
        state.bob.proc.kill("SIGTERM");
        await Promise.race([once(state.bob.proc, "exit"), sleep(5000)]);
    }
}

let failed = false;
const overall = setTimeout(() => {
    failed = true;
    failureReport(new Error(`overall timeout of ${OVERALL_TIMEOUT_MS} ms exceeded`));
    writeBrowserArtifacts();
    cleanup(stopBob).finally(() => process.exit(1));
}, OVERALL_TIMEOUT_MS);

try {
    await scenario();
} catch (err) {
    failed = true;
    if (state.page && !state.page.isClosed()) await shot(`failure-${state.step}`);
    failureReport(err);
}
writeBrowserArtifacts();
await cleanup(stopBob);
clearTimeout(overall);
const secs = ((Date.now() - state.started) / 1000).toFixed(1);
const scenarioName = ENCRYPTED ? "encrypted" : "unencrypted";
console.log(`Hydrogen ${scenarioName} scenario ${failed ? "FAILED" : "passed"} in ${secs}s; artifacts in ${OUTPUT_DIR}`);
// The closing line in the plain 'N passed, N failed' form that test-result readers understand.
console.log(failed ? "browser: 0 passed, 1 failed" : "browser: 1 passed, 0 failed");
process.exit(failed ? 1 : 0);
