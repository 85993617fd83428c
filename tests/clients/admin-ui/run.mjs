#!/usr/bin/env node
// Admin UI test: the real synapse-admin web UI (0.11.4), in headless Chromium, drives moss's
// Synapse-compatible admin API (/_synapse/admin/...).
//
// Scenario (exit code 0 = pass):
//   1. Start the moss binary (env MOSS_BIN, default <repo>/target/debug/moss) on a free loopback
//      port with a temp data dir and open registration (MOSS_* variables, as the other client
//      tests do), after creating the admin with the CLI (`moss user create admin --admin`).
//   2. Seed over the client-server API: bob, mallory and rita register; bob creates "Doomed room"
//      (rita joins, bob talks) and "Kept room" (rita joins; she reports bob's message there, so the
//      report outlives the deletion of the other room); bob uploads a PNG.
//   3. Serve a writable copy of synapse-admin's build (scripts/setup-admin-ui.sh makes
//      synapse-admin/dist) from a static server in this process, with
//      config.json = {"restrictBaseUrl": moss}: every UI request to moss is cross-origin.
//   4. In Chromium (playwright-core, /usr/bin/chromium, 1280x1600 because the page's fixed footer
//      covers the form toolbars at smaller heights): log in as admin; see the users; create carol
//      (then log in as carol over the API); erase mallory (then mallory cannot log in and her
//      token is dead); list the rooms, open "Doomed room", its members, forward extremities and
//      state tabs, and delete it (then bob and rita are no longer joined, and the list drops it);
//      open the event report (reason), its details (event_json), delete it; open bob's media tab
//      and delete the upload (then its download answers 404).
//
// Every step waits on real conditions (UI elements, moss's responses, API checks) and fails at
// once when an admin request answers >= 400 (ADMIN_UI_TEST_LENIENT=1 only logs those). Every
// /_synapse/admin request the UI makes is logged with its status as it happens. A screenshot is
// saved after each step in MOSS_TEST_OUTPUT (default ./output), with admin-requests.json (every
// UI request to moss, with admin response bodies), the browser console and moss's log. On failure
// the runner names the step and the last admin exchange, and prints moss's log tail.
//
// Env: MOSS_BIN, MOSS_TEST_OUTPUT, CHROMIUM (default /usr/bin/chromium), ADMIN_UI_DIST (default
// ./synapse-admin/dist), ADMIN_UI_TEST_LENIENT=1, ADMIN_UI_TEST_KEEP_TMP=1 (keep moss's data
// dir, the UI copy and the browser profile).

import { spawnSync } from "node:child_process";
import { cpSync, existsSync, rmSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import {
    REPO_ROOT, SERVER_NAME, configure, settings, state, stamp, log, tmpDir, StepError, Fatal, waitFor, // basics
    startMoss, mossReport, api, apiOk, register, startStaticServer, // moss, its API, the app's server
    launchChromium, shot, prepareOutput, writeArtifacts, cleanup, // browser, output, teardown
} from "../harness/harness.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const OUTPUT_DIR = path.resolve(process.env.MOSS_TEST_OUTPUT || path.join(HERE, "output"));
const DIST_DIR = path.resolve(process.env.ADMIN_UI_DIST || path.join(HERE, "synapse-admin/dist"));
const LENIENT = process.env.ADMIN_UI_TEST_LENIENT === "1";
const STEP_TIMEOUT_MS = 20_000;
const API_CHECK_TIMEOUT_MS = 10_000;
const OVERALL_TIMEOUT_MS = 115_000;
const ADMIN_PREFIX = "/_synapse/admin/";
configure({
    mossBin: process.env.MOSS_BIN ? path.resolve(process.env.MOSS_BIN) : path.join(REPO_ROOT, "target/debug/moss"),
    outputDir: OUTPUT_DIR,
    stepTimeoutMs: STEP_TIMEOUT_MS,
    waitIntervalMs: 150,
    logTailLines: 60,
    keepTmp: process.env.ADMIN_UI_TEST_KEEP_TMP === "1",
    terseErrors: true,
});

// The seeded world (every user's password is "<localpart>-pw-0123").
const pw = (localpart) => `${localpart}-pw-0123`;
const CAROL_NAME = "Carol Created";
const DOOMED_ROOM = "Doomed room";
const KEPT_ROOM = "Kept room";
const REPORTED_BODY = "Cheap watches, click here (admin-ui test)";
const REPORT_REASON = "Spam from bob (admin-ui test)";
const UPLOAD_NAME = "admin-ui-test.png";
const uid = (localpart) => `@${localpart}:${SERVER_NAME}`;

// A 1x1 transparent PNG.
const PNG = Buffer.from(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "base64",
);

// ---------------------------------------------------------------------------------------------
// The test's own state, beside the harness's (moss, browser, temp dirs, console log).
Object.assign(state, {
    requests: [], // every UI request to moss: {t, method, path, status, failure, request, body}
    stepStart: 0, // index into requests where the current step began
});

// ---------------------------------------------------------------------------------------------
// moss, its admin created first with the CLI

function startMossWithAdmin() {
    // The admin comes from the CLI, on the same data dir, before the server starts.
    return startMoss("moss-admin-ui-", async ({ workdir, env }) => {
        const create = spawnSync(settings.mossBin, ["user", "create", "admin", "--password", pw("admin"), "--admin"], {
            cwd: workdir,
            env,
            encoding: "utf8",
            timeout: 30_000,
        });
        if (create.status !== 0) {
            throw new StepError(
                `moss user create admin --admin failed (status ${create.status}, ${create.error || create.signal || "no signal"}):\n` +
                    `${create.stdout}\n${create.stderr}`,
            );
        }
        log(`created the admin with the CLI: ${(create.stdout.trim().split("\n").at(-1) || "").trim()}`);
    });
}

// ---------------------------------------------------------------------------------------------
// Matrix client-server API (seeding and the checks after each UI action)

function passwordLogin(baseUrl, user, password) {
    return api(baseUrl, "POST", "/_matrix/client/v3/login", {
        body: { type: "m.login.password", identifier: { type: "m.id.user", user }, password },
    });
}

async function joinedRooms(baseUrl, token) {
    return (await apiOk(baseUrl, "GET", "/_matrix/client/v3/joined_rooms", { token })).joined_rooms;
}

const rid = (roomId) => encodeURIComponent(roomId);

async function seed(mossBase) {
    const bob = await register(mossBase, "bob", pw("bob"), "seed");
    const mallory = await register(mossBase, "mallory", pw("mallory"), "seed");
    const rita = await register(mossBase, "rita", pw("rita"), "seed");
    log(`registered ${bob.user_id}, ${mallory.user_id}, ${rita.user_id}`);

    const createRoom = async (name) =>
        (
            await apiOk(mossBase, "POST", "/_matrix/client/v3/createRoom", {
                token: bob.access_token,
                body: { name, preset: "public_chat" },
            })
        ).room_id;
    const send = async (roomId, body, txn) =>
        (
            await apiOk(mossBase, "PUT", `/_matrix/client/v3/rooms/${rid(roomId)}/send/m.room.message/${txn}`, {
                token: bob.access_token,
                body: { msgtype: "m.text", body },
            })
        ).event_id;
    const ritaJoins = (roomId) =>
        apiOk(mossBase, "POST", `/_matrix/client/v3/join/${rid(roomId)}`, { token: rita.access_token, body: {} });

    const doomedId = await createRoom(DOOMED_ROOM);
    await ritaJoins(doomedId);
    await send(doomedId, "This room will not last", "t1");
    const keptId = await createRoom(KEPT_ROOM);
    await ritaJoins(keptId);
    const reportedEventId = await send(keptId, REPORTED_BODY, "t2");
    log(`bob created ${doomedId} ("${DOOMED_ROOM}") and ${keptId} ("${KEPT_ROOM}"), rita joined both`);

    await apiOk(mossBase, "POST", `/_matrix/client/v3/rooms/${rid(keptId)}/report/${encodeURIComponent(reportedEventId)}`, {
        token: rita.access_token,
        body: { reason: REPORT_REASON, score: -100 },
    });
    log(`rita reported ${reportedEventId} ("${REPORT_REASON}")`);

    const upload = await apiOk(mossBase, "POST", `/_matrix/media/v3/upload?filename=${encodeURIComponent(UPLOAD_NAME)}`, {
        token: bob.access_token,
        raw: PNG,
        contentType: "image/png",
    });
    const mediaId = upload.content_uri.replace(`mxc://${SERVER_NAME}/`, "");
    if (mediaId === upload.content_uri) throw new StepError(`unexpected content_uri ${upload.content_uri}`);
    // The baseline for the check after the deletion: the download works now.
    const dl = await mediaDownloadStatus(mossBase, bob.access_token, mediaId);
    if (dl !== 200) throw new StepError(`downloading the fresh upload ${upload.content_uri} answered ${dl}, not 200`);
    log(`bob uploaded ${upload.content_uri} (${UPLOAD_NAME})`);

    return { bob, mallory, rita, doomedId, keptId, reportedEventId, mediaId, mxc: upload.content_uri };
}

async function mediaDownloadStatus(baseUrl, token, mediaId) {
    const res = await fetch(`${baseUrl}/_matrix/client/v1/media/download/${SERVER_NAME}/${encodeURIComponent(mediaId)}`, {
        headers: { authorization: `Bearer ${token}` },
        signal: AbortSignal.timeout(15_000),
    });
    await res.arrayBuffer().catch(() => {});
    return res.status;
}

// ---------------------------------------------------------------------------------------------
// Static server for a writable copy of synapse-admin's dist/

async function startWebServer(mossBase) {
    if (!existsSync(path.join(DIST_DIR, "index.html"))) {
        throw new StepError(`${DIST_DIR}/index.html is missing: run scripts/setup-admin-ui.sh to build synapse-admin`);
    }
    // The build's files may be read-only (the vendored source is 0444): copy, then replace config.json.
    const root = path.join(tmpDir("moss-admin-ui-dist-"), "dist");
    cpSync(DIST_DIR, root, { recursive: true });
    rmSync(path.join(root, "config.json"), { force: true });
    // A single URL: the login form's homeserver field is prefilled and read-only.
    writeFileSync(path.join(root, "config.json"), JSON.stringify({ restrictBaseUrl: mossBase }));

    const url = await startStaticServer(root);
    log(`serving synapse-admin (${DIST_DIR}) at ${url}, restrictBaseUrl ${mossBase}`);
    return url;
}

// ---------------------------------------------------------------------------------------------
// Browser

const isAdmin = (e) => e.path.startsWith(ADMIN_PREFIX);
const okStatus = (s) => s >= 200 && s < 300;
const cut = (t, n = 300) => (t && t.length > n ? `${t.slice(0, n)}…` : t);

function describe(e) {
    const outcome = e.failure ? `FAILED (${e.failure})` : e.status == null ? "(no response yet)" : `-> ${e.status}`;
    let s = `${e.method} ${e.path} ${outcome}`;
    if (e.request) s += `\n      request body: ${cut(e.request)}`;
    if (e.status >= 400 && e.body) s += `\n      response body: ${cut(e.body)}`;
    return s;
}

async function launchBrowser(mossBase) {
    const { context, page } = await launchChromium(chromium, "moss-admin-ui-chromium-", {
        // Tall: index.html's fixed footer covers the forms' Save/Delete toolbar at 720 px.
        viewport: { width: 1280, height: 1600 },
        locale: "en-US",
    });

    const entries = new Map(); // Request -> entry
    context.on("request", (req) => {
        const url = req.url();
        if (!url.startsWith(mossBase)) return;
        const entry = { t: stamp(), step: state.step, method: req.method(), path: url.slice(mossBase.length), status: null };
        const post = req.postData();
        if (post) entry.request = post.slice(0, 4000);
        entries.set(req, entry);
        state.requests.push(entry);
    });
    context.on("requestfailed", (req) => {
        const entry = entries.get(req);
        if (!entry) return;
        entry.failure = req.failure()?.errorText || "failed";
        entry.done = true;
        if (isAdmin(entry)) log(`  admin ${describe(entry)}`);
    });
    context.on("response", async (res) => {
        const entry = entries.get(res.request());
        if (!entry) return;
        entry.status = res.status();
        // Only admin responses and errors keep their bodies (what moss's admin API answered).
        if (isAdmin(entry) || entry.status >= 400) {
            entry.body = (await res.text().catch(() => "<no body>")).slice(0, 4000);
        }
        entry.done = true;
        if (isAdmin(entry) || entry.status >= 400 || entry.method !== "GET") log(`  ${isAdmin(entry) ? "admin" : "ui->moss"} ${describe(entry)}`);
    });
    return page;
}

// Runs one step; then waits (briefly) for the admin requests the step caused to be answered and
// checks them too, so that an error is charged to the step that caused it.
async function step(name, fn, checkOpts = {}) {
    state.step = name;
    state.stepStart = state.requests.length;
    log(`step: ${name}`);
    const result = await fn();
    const pending = () => stepRequests().filter((e) => isAdmin(e) && !e.done);
    await waitFor("the step's admin requests to be answered", () => pending().length === 0, 5000, 100).catch(() =>
        log(`note: admin requests still unanswered at the end of step ${name}: ${pending().map((e) => `${e.method} ${e.path}`).join(", ")}`),
    );
    checkUi(checkOpts);
    await shot(name);
    return result;
}

const stepRequests = () => state.requests.slice(state.stepStart);

// Fails the step at once when one of the admin requests made during it answered >= 400 (or did
// not complete), unless ADMIN_UI_TEST_LENIENT=1, and when the UI has logged out (synapse-admin
// logs out on any 401/403).
function checkUi({ allow = () => false, loggedIn = true } = {}) {
    if (!LENIENT) {
        const bad = stepRequests().find((e) => isAdmin(e) && e.done && (e.failure || e.status >= 400) && !allow(e));
        if (bad) throw new Fatal(`admin API error: ${describe(bad)}`);
    }
    if (loggedIn && state.page.url().includes("#/login")) {
        const last = [...state.requests].reverse().find((e) => e.status === 401 || e.status === 403);
        throw new Fatal(`synapse-admin logged out (it does so on any 401/403)${last ? `; last 401/403: ${describe(last)}` : ""}`);
    }
}

// Waits until the UI made a request matching `pred` during this step (or, with `anyStep`, at any
// time; with `after`, after that earlier entry) and moss answered it with 2xx (a non-2xx answer
// fails at once).
async function waitResponse(what, pred, opts = {}) {
    const from = opts.after ? state.requests.indexOf(opts.after) + 1 : opts.anyStep ? 0 : state.stepStart;
    return waitFor(`${what} (a 2xx answer from moss)`, async () => {
        const e = state.requests.slice(from).find((x) => pred(x) && x.done);
        if (e && (e.failure || !okStatus(e.status))) {
            throw new Fatal(what.startsWith(`${e.method} /`) ? describe(e) : `${what}: ${describe(e)}`);
        }
        if (!e) checkUi(opts);
        return e;
    });
}

// Waits until `locator` is visible, checking for admin errors and logouts meanwhile.
async function waitVisible(what, locator, opts = {}) {
    return waitFor(what, async () => {
        checkUi(opts);
        return await locator.first().isVisible();
    }, opts.timeout);
}

async function waitGone(what, locator, opts = {}) {
    return waitFor(what, async () => {
        checkUi(opts);
        return (await locator.count()) === 0;
    }, opts.timeout);
}

async function waitUrl(what, re, opts = {}) {
    return waitFor(`${what} (URL matching ${re}; at ${state.page?.url()})`, async () => {
        checkUi(opts);
        return re.test(state.page.url());
    }, opts.timeout);
}

// Polls a client-server API condition after a UI action; fails with the last observation.
async function apiCheck(what, fn, timeoutMs = API_CHECK_TIMEOUT_MS) {
    let last = "nothing observed";
    try {
        return await waitFor(what, async () => {
            const [ok, seen] = await fn();
            last = seen;
            return ok;
        }, timeoutMs, 250);
    } catch (err) {
        throw new StepError(`API check failed: ${what}; last seen: ${last}`);
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario

const ARTIFACTS = ["browser-console.log", "admin-requests.json", "moss.log"];

async function scenario() {
    prepareOutput(ARTIFACTS);
    log(`output in ${OUTPUT_DIR}${LENIENT ? " (lenient: admin errors are only logged)" : ""}`);
    const mossBase = await startMossWithAdmin();
    state.step = "seed";
    const w = await seed(mossBase);
    const webBase = await startWebServer(mossBase);
    const page = await launchBrowser(mossBase);
    const ui = (hash) => `${webBase}/#${hash}`;
    const cell = (name) => page.getByRole("cell", { name, exact: true });
    const button = (name) => page.getByRole("button", { name, exact: true });
    const encUser = (localpart) => encodeURIComponent(uid(localpart));
    // Synapse-admin percent-encodes ids in some paths and not in others: accept both.
    const idIn = (p, id) => p.includes(id) || p.includes(encodeURIComponent(id));

    // The next step checks the server version: here the login form is all that counts.
    const loginFormOpts = { loggedIn: false, allow: (e) => e.path === "/_synapse/admin/v1/server_version" };
    await step("login-form", async () => {
        await page.goto(ui("/"), { waitUntil: "load" });
        await waitUrl("the redirect to the login page", /#\/login/, loginFormOpts);
        const baseUrl = page.getByLabel("Homeserver URL");
        await waitVisible("the login form's Homeserver URL field", baseUrl, loginFormOpts);
        const shown = await baseUrl.inputValue();
        if (shown !== mossBase) throw new StepError(`the Homeserver URL field shows "${shown}", not config.json's ${mossBase}`);
        await page.getByLabel("Username").fill("admin");
        await page.locator('input[name="password"]').fill(pw("admin"));
    }, loginFormOpts);

    await step("login-server-info", async () => {
        // The login page asks moss for its version (unauthenticated), spec versions and flows
        // as soon as the form has a valid URL (here at once, from config.json).
        await waitVisible('"supports Matrix specs …" on the login page', page.locator(".matrixVersions", { hasText: /supports Matrix specs .*v1\./ }), { loggedIn: false });
        try {
            const opts = { loggedIn: false, anyStep: true, allow: () => LENIENT };
            await waitResponse("GET /_synapse/admin/v1/server_version", (e) => e.method === "GET" && e.path === "/_synapse/admin/v1/server_version", opts);
            await waitVisible('"Synapse version …" on the login page', page.locator(".serverVersion", { hasText: /Synapse version \S/ }), opts);
            log(`login page: "${(await page.locator(".serverVersion").innerText()).trim()}"`);
        } catch (err) {
            // Only the printed version depends on it: lenient runs go on to the sign-in.
            if (!LENIENT) throw err;
            log(`LENIENT: going on without the server version: ${err.message}`);
        }
    }, { loggedIn: false });

    await step("login", async () => {
        await button("Sign in").click();
        const login = await waitResponse("POST /_matrix/client/r0/login", (e) => e.method === "POST" && e.path === "/_matrix/client/r0/login", { loggedIn: false });
        const body = JSON.parse(login.request || "{}");
        if (body.initial_device_display_name !== "Synapse Admin") log(`note: unexpected login body ${login.request}`);
        // synapse-admin stores home_server from the login response and builds user ids (create)
        // and media paths (delete) from it: a missing field is stored as the string "undefined".
        const stored = await waitFor("synapse-admin to store the login in localStorage", () =>
            page.evaluate(() => (localStorage.getItem("access_token") ? { hs: localStorage.getItem("home_server"), user: localStorage.getItem("user_id") } : null)),
        );
        if (stored.hs !== SERVER_NAME) {
            throw new Fatal(`the login response's home_server is ${JSON.stringify(stored.hs)} in synapse-admin's localStorage, not "${SERVER_NAME}": moss's login response must include "home_server"`);
        }
        if (stored.user !== uid("admin")) throw new Fatal(`synapse-admin stored user_id ${stored.user}`);
        await waitResponse("the users list (GET /_synapse/admin/v2/users)", (e) => e.method === "GET" && e.path.startsWith("/_synapse/admin/v2/users?"));
        await waitVisible('the "Users" heading', page.getByRole("heading", { name: "Users" }));
    });

    await step("users-list", async () => {
        for (const u of ["admin", "bob", "mallory", "rita"]) {
            await waitVisible(`the users list to show ${uid(u)}`, cell(uid(u)));
        }
    });

    await step("create-user", async () => {
        await page.goto(ui("/users/create"));
        await waitVisible("the create-user form", page.locator('input[name="id"]'));
        await page.locator('input[name="id"]').fill("carol");
        await page.locator('input[name="displayname"]').fill(CAROL_NAME);
        await page.locator('input[name="password"]').fill(pw("carol"));
        await button("Save").click();
        await waitResponse(`PUT /_synapse/admin/v2/users/${uid("carol")}`, (e) => e.method === "PUT" && idIn(e.path, uid("carol")));
        await waitUrl("the redirect to carol's edit page", new RegExp(`#/users/${encUser("carol")}$`));
        await waitFor(`carol's edit page to show the display name "${CAROL_NAME}"`, async () => {
            checkUi();
            return (await page.locator('input[name="displayname"]').inputValue()) === CAROL_NAME;
        });
        await apiCheck("carol can log in with the password set in the UI", async () => {
            const { status, json } = await passwordLogin(mossBase, "carol", pw("carol"));
            return [status === 200 && json.user_id === uid("carol"), `login HTTP ${status} ${JSON.stringify(json)}`];
        });
        await apiCheck(`carol's display name is "${CAROL_NAME}"`, async () => {
            const { status, json } = await api(mossBase, "GET", `/_matrix/client/v3/profile/${encUser("carol")}/displayname`);
            return [status === 200 && json.displayname === CAROL_NAME, `HTTP ${status} ${JSON.stringify(json)}`];
        });
    });

    await step("erase-user", async () => {
        await page.goto(ui(`/users/${encUser("mallory")}`));
        await waitFor("mallory's edit page", async () => {
            checkUi();
            const id = page.locator('input[name="id"]');
            return (await id.count()) > 0 && (await id.inputValue()) === uid("mallory");
        });
        await button("Erase user data").click();
        await button("Confirm").click();
        const deact = await waitResponse(`POST /_synapse/admin/v1/deactivate/${uid("mallory")}`, (e) => e.method === "POST" && e.path.startsWith("/_synapse/admin/v1/deactivate/") && idIn(e.path, uid("mallory")));
        if (!/"erase"\s*:\s*true/.test(deact.request || "")) log(`note: the deactivate body was ${deact.request}`);
        await waitUrl("the redirect to the users list", /#\/users$/);
        await waitResponse("the users list fetched after the deactivation", (e) => e.method === "GET" && e.path.startsWith("/_synapse/admin/v2/users?"), { after: deact });
        await waitVisible("the users list to show bob", cell(uid("bob")));
        await waitGone("the users list to hide the deactivated mallory", cell(uid("mallory")));
        await apiCheck("mallory can no longer log in", async () => {
            const { status, json } = await passwordLogin(mossBase, "mallory", pw("mallory"));
            return [status !== 200 && status < 500, `login HTTP ${status} ${JSON.stringify(json)}`];
        });
        await apiCheck("mallory's access token is revoked", async () => {
            const { status, json } = await api(mossBase, "GET", "/_matrix/client/v3/account/whoami", { token: w.mallory.access_token });
            return [status === 401, `whoami HTTP ${status} ${JSON.stringify(json)}`];
        });
    });

    await step("rooms-list", async () => {
        await page.goto(ui("/rooms"));
        await waitResponse("the rooms list (GET /_synapse/admin/v1/rooms)", (e) => e.method === "GET" && e.path.startsWith("/_synapse/admin/v1/rooms?"));
        await waitVisible(`the rooms list to show "${DOOMED_ROOM}"`, cell(DOOMED_ROOM));
        await waitVisible(`the rooms list to show "${KEPT_ROOM}"`, cell(KEPT_ROOM));
    });

    await step("room-show", async () => {
        await cell(DOOMED_ROOM).first().click();
        await waitUrl(`the show page of "${DOOMED_ROOM}"`, /#\/rooms\/[^/]+\/show/);
        const shownId = decodeURIComponent(page.url().match(/#\/rooms\/([^/]+)\/show/)[1]);
        if (shownId !== w.doomedId) throw new StepError(`clicked "${DOOMED_ROOM}" but the UI opened ${shownId}, not ${w.doomedId}`);
        await waitVisible(`the room's id on its show page`, page.getByText(w.doomedId, { exact: true }));
        await waitVisible(`the room's name on its show page`, page.locator("main").getByText(DOOMED_ROOM, { exact: true }));
    });

    await step("room-tabs", async () => {
        // The show page's tabs load lazily: members, state events, forward extremities.
        const show = ui(`/rooms/${encodeURIComponent(w.doomedId)}/show`);
        const roomPath = (e, tail) => e.method === "GET" && e.path.startsWith("/_synapse/admin/v1/rooms/") && idIn(e.path, w.doomedId) && e.path.includes(`/${tail}`);
        await page.goto(`${show}/members`);
        await waitResponse("the room's members (GET /_synapse/admin/v1/rooms/{roomId}/members)", (e) => roomPath(e, "members"));
        for (const u of ["bob", "rita"]) await waitVisible(`${uid(u)} in the room's members tab`, cell(uid(u)));
        await shot("room-members");
        await page.goto(`${show}/forward_extremities`);
        await waitResponse("the room's forward extremities (GET /_synapse/admin/v1/rooms/{roomId}/forward_extremities)", (e) => roomPath(e, "forward_extremities"));
        await waitVisible("an event id in the room's forward extremities tab", page.getByRole("cell", { name: /^\$/ }));
        await page.goto(`${show}/state`);
        await waitResponse("the room's state (GET /_synapse/admin/v1/rooms/{roomId}/state)", (e) => roomPath(e, "state"));
        for (const t of ["m.room.create", "m.room.name", "m.room.member"]) await waitVisible(`a ${t} event in the room's state tab`, cell(t));
    });

    await step("room-delete", async () => {
        await page.goto(ui(`/rooms/${encodeURIComponent(w.doomedId)}/show`));
        await waitVisible(`the room's id on its show page`, page.getByText(w.doomedId, { exact: true }));
        await button("Delete").first().click();
        await button("Confirm").click();
        await waitResponse(`DELETE /_synapse/admin/v2/rooms/${w.doomedId}`, (e) => e.method === "DELETE" && e.path.startsWith("/_synapse/admin/v2/rooms/") && idIn(e.path, w.doomedId));
        await waitUrl("the redirect to the rooms list", /#\/rooms$/);
        for (const [who, token] of [["bob", w.bob.access_token], ["rita", w.rita.access_token]]) {
            await apiCheck(`${who} is no longer joined to the deleted room`, async () => {
                const rooms = await joinedRooms(mossBase, token);
                return [!rooms.includes(w.doomedId) && rooms.includes(w.keptId), `${who}'s joined_rooms ${JSON.stringify(rooms)}`];
            });
        }
        // The list the UI re-fetched after the delete; reload while moss may still be purging.
        await waitFor(`the rooms list without "${DOOMED_ROOM}" (the page is reloaded every second)`, async () => {
            checkUi();
            if ((await cell(KEPT_ROOM).count()) > 0 && (await cell(DOOMED_ROOM).count()) === 0) return true;
            state.stepStart = state.requests.length;
            await page.reload();
            await cell(KEPT_ROOM).first().waitFor({ timeout: 5000 });
            return (await cell(DOOMED_ROOM).count()) === 0;
        }, STEP_TIMEOUT_MS, 1000);
    });

    let reportId;
    await step("reports-list", async () => {
        await page.goto(ui("/reports"));
        await waitResponse("the event reports list (GET /_synapse/admin/v1/event_reports)", (e) => e.method === "GET" && e.path.startsWith("/_synapse/admin/v1/event_reports?"));
        const row = page.getByRole("row").filter({ has: cell(uid("rita")) });
        await waitVisible("the report by rita in the list", row);
        await waitVisible(`the report's room name "${KEPT_ROOM}"`, row.first().getByRole("cell", { name: KEPT_ROOM, exact: true }));
        await row.first().getByRole("cell", { name: uid("rita"), exact: true }).click();
        await waitUrl("the report's show page", /#\/reports\/[^/]+\/show$/);
        reportId = decodeURIComponent(page.url().match(/#\/reports\/([^/]+)\/show/)[1]);
        await waitVisible(`the report's reason "${REPORT_REASON}"`, page.getByText(REPORT_REASON, { exact: true }));
    });

    await step("report-details", async () => {
        await page.goto(ui(`/reports/${encodeURIComponent(reportId)}/show/detail`));
        await waitVisible("the reported event's body", page.getByText(REPORTED_BODY, { exact: true }));
        await waitVisible("the reported event's id", page.getByText(w.reportedEventId, { exact: true }));
        await waitVisible("the reported event's sender", page.getByText(uid("bob"), { exact: true }));
    });

    await step("report-delete", async () => {
        await page.goto(ui(`/reports/${encodeURIComponent(reportId)}/show`));
        await waitVisible("the report's show page", page.getByText(REPORT_REASON, { exact: true }));
        await button("Delete").click();
        await button("Confirm").click();
        const del = await waitResponse(`DELETE /_synapse/admin/v1/event_reports/${reportId}`, (e) => e.method === "DELETE" && e.path === `/_synapse/admin/v1/event_reports/${encodeURIComponent(reportId)}`);
        await waitUrl("the redirect to the reports list", /#\/reports$/);
        await waitResponse("the reports list fetched after the delete", (e) => e.method === "GET" && e.path.startsWith("/_synapse/admin/v1/event_reports?"), { after: del });
        await waitGone("the reports list without rita's report", cell(uid("rita")));
    });

    await step("user-media", async () => {
        await page.goto(ui(`/users/${encUser("bob")}/media`));
        await waitResponse("bob's media (GET /_synapse/admin/v1/users/@bob/media)", (e) => e.method === "GET" && e.path.startsWith(`/_synapse/admin/v1/users/`) && idIn(e.path, uid("bob")) && /\/media\?/.test(e.path));
        const row = page.getByRole("row").filter({ has: cell(UPLOAD_NAME) });
        await waitVisible(`bob's upload "${UPLOAD_NAME}" in his media tab`, row);
        await waitVisible(`the media id ${w.mediaId} in its row`, row.first().getByText(w.mediaId, { exact: true }));
    });

    await step("media-delete", async () => {
        const row = page.getByRole("row").filter({ has: cell(UPLOAD_NAME) });
        await row.first().getByRole("button", { name: "Delete", exact: true }).click();
        await button("Confirm").click();
        const del = await waitResponse(`DELETE /_synapse/admin/v1/media/${SERVER_NAME}/${w.mediaId}`, (e) => e.method === "DELETE" && e.path === `/_synapse/admin/v1/media/${SERVER_NAME}/${w.mediaId}`);
        await waitResponse("bob's media fetched after the delete", (e) => e.method === "GET" && /^\/_synapse\/admin\/v1\/users\/[^/]+\/media\?/.test(e.path), { after: del });
        await waitGone(`"${UPLOAD_NAME}" gone from bob's media tab`, cell(UPLOAD_NAME));
        await apiCheck(`the download of ${w.mxc} answers 404`, async () => {
            const status = await mediaDownloadStatus(mossBase, w.bob.access_token, w.mediaId);
            return [status === 404, `download HTTP ${status}`];
        });
    });
}

// ---------------------------------------------------------------------------------------------

function writeAdminArtifacts() {
    writeArtifacts(() => ({
        "admin-requests.json": JSON.stringify(state.requests.map(({ done, ...e }) => e), null, 1),
    }));
}

function failureReport(err) {
    const out = [];
    out.push(`\nFAILED at step "${state.step}": ${err instanceof StepError || !err.stack ? err.message : err.stack}`);
    const admin = state.requests.filter(isAdmin);
    const last = admin.at(-1);
    out.push(`last admin API exchange: ${last ? describe(last) : "none (the UI made no /_synapse/admin request)"}`);
    const lastBad = admin.filter((e) => e.failure || e.status >= 400).at(-1);
    if (lastBad && lastBad !== last) out.push(`last failed admin API exchange: ${describe(lastBad)}`);
    const pending = admin.filter((e) => e.status == null && !e.failure);
    if (pending.length > 0) out.push(`admin requests without an answer: ${pending.map((e) => `${e.method} ${e.path}`).join(", ")}`);
    const bad = state.requests.filter((e) => e.failure || e.status >= 400);
    out.push(`\n--- UI requests to moss that failed or answered >= 400 (${bad.length}) ---`);
    for (const e of bad) out.push(`[${e.t}s ${e.step}] ${describe(e)}`);
    if (state.moss) out.push(mossReport());
    out.push(`\n--- browser console (last 40 of ${state.consoleLog.length} lines) ---`);
    out.push(...state.consoleLog.slice(-40));
    console.error(out.join("\n"));
}

let failed = false;
let finishing = false;
const overall = setTimeout(async () => {
    if (finishing) return;
    finishing = true;
    failed = true;
    await shot(`failure-${state.step}`).catch(() => {});
    failureReport(new StepError(`overall timeout of ${OVERALL_TIMEOUT_MS} ms exceeded`));
    writeAdminArtifacts();
    await cleanup().catch(() => {});
    console.log("admin-ui: 0 passed, 1 failed");
    process.exit(1);
}, OVERALL_TIMEOUT_MS);
for (const sig of ["SIGINT", "SIGTERM"]) {
    process.on(sig, async () => {
        if (finishing) return;
        finishing = true;
        log(`${sig}: stopping moss and the browser`);
        await cleanup().catch(() => {});
        process.exit(130);
    });
}

try {
    await scenario();
} catch (err) {
    failed = true;
    if (!finishing) {
        await shot(`failure-${state.step}`);
        failureReport(err);
    }
}
if (finishing) await new Promise(() => {}); // the timeout or a signal is already finishing the run
finishing = true;
writeAdminArtifacts();
await cleanup();
clearTimeout(overall);
const secs = ((Date.now() - state.started) / 1000).toFixed(1);
console.log(`synapse-admin scenario ${failed ? `FAILED at step "${state.step}"` : "passed"} in ${secs}s; artifacts in ${OUTPUT_DIR}`);
// The closing line in the plain 'N passed, N failed' form that test-result readers understand.
console.log(failed ? "admin-ui: 0 passed, 1 failed" : "admin-ui: 1 passed, 0 failed");
process.exit(failed ? 1 : 0);
