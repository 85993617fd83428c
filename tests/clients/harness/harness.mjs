// Shared harness of the headless-Chromium client tests (tests/clients/browser/run.mjs, Hydrogen,
// and tests/clients/admin-ui/run.mjs, synapse-admin): a plain ES module on Node's built-ins only.
// Playwright stays each test's own dependency: launchChromium() takes the test's `chromium`.
//
// It offers:
//   configure(opts), settings   per-test settings (moss binary, output dir, timeouts, ...);
//                               each test calls configure() once, before anything else
//   state                       the run's state shared with the failure report and cleanup
//                               (started, tmpDirs, moss, web, context, page, consoleLog,
//                               pageErrors, step, shots); tests add their own fields to it
//   REPO_ROOT, SERVER_NAME, CHROMIUM, CHROMIUM_FLAGS
//   stamp, log, sleep, tmpDir, freePort
//   StepError, Fatal, waitFor   polling with a timeout; a Fatal thrown by the predicate ends it
//   mossEnv, startMoss, stopMoss, mossLogTail, mossReport
//                               moss on a free loopback port with a temp data dir and open
//                               registration, configured through MOSS_* variables
//   api, apiOk, register        a minimal client-server API client (setup and checks)
//   startStaticServer           serves a built web app from a folder on a free port
//   launchChromium              a persistent headless Chromium context with a fresh profile
//   shot, prepareOutput, writeArtifacts, cleanup
//                               screenshots and artifacts in the output dir; the final teardown

import { spawn } from "node:child_process";
import { once } from "node:events";
import { createReadStream, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { clusterEnv, clusterMode, createPostgresDatabase, startNginx } from "./cluster.mjs";

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
export const SERVER_NAME = "localhost";
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

export const settings = {
    mossBin: path.join(REPO_ROOT, "target/debug/moss"),
    outputDir: path.resolve("output"), // screenshots and artifacts
    stepTimeoutMs: 30_000, // waitFor's default timeout and the page's default timeout
    waitIntervalMs: 100, // waitFor's default polling interval
    logTailLines: 80, // lines of moss's log in the failure report
    keepTmp: false, // keep the temp dirs at cleanup
    // Shorter failure messages: a waitFor timeout quotes only the first line of the last error,
    // and api() keeps only 200 characters of an answer that is not JSON.
    terseErrors: false,
};

export function configure(opts) {
    Object.assign(settings, opts);
}

export const state = {
    started: Date.now(),
    tmpDirs: [],
    moss: null, // {proc, logPath, baseUrl, exit}
    web: null, // http.Server
    context: null, // playwright BrowserContext
    page: null,
    consoleLog: [],
    pageErrors: [],
    step: "setup",
    shots: 0,
};

export const stamp = () => ((Date.now() - state.started) / 1000).toFixed(1);

export function log(msg) {
    console.log(`[${stamp().padStart(5)}s] ${msg}`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function tmpDir(prefix) {
    const dir = mkdtempSync(path.join(os.tmpdir(), prefix));
    state.tmpDirs.push(dir);
    return dir;
}

// Ports are taken below the kernel's ephemeral range (32768-60999 on Linux): a port handed out
// for listen(0) can be handed out again, before the server binds it, as the source port of an
// outgoing connection. Below that range only explicit binds take ports. Never the same one twice.
const PORT_FIRST = 20000;
const PORT_SPAN = 12000;
let portNext = (process.pid * 997 + 9000) % PORT_SPAN;

function portIsFree(port) {
    return new Promise((resolve) => {
        const probe = net.createServer();
        probe.unref();
        probe.once("error", () => resolve(false));
        probe.listen(port, "127.0.0.1", () => probe.close(() => resolve(true)));
    });
}

/** A free TCP port on 127.0.0.1 (probed, then released). */
export async function freePort() {
    for (let i = 0; i < PORT_SPAN; i++) {
        const port = PORT_FIRST + (portNext++ % PORT_SPAN);
        if (await portIsFree(port)) return port;
    }
    throw new Error(`no free port in ${PORT_FIRST}..${PORT_FIRST + PORT_SPAN}`);
}

// A failure of the scenario (its message says it all).
export class StepError extends Error {}
// An error that ends a waitFor at once (other errors thrown by the predicate are retried).
export class Fatal extends StepError {}

export async function waitFor(what, fn, timeoutMs = settings.stepTimeoutMs, intervalMs = settings.waitIntervalMs) {
    const deadline = Date.now() + timeoutMs;
    let lastErr;
    while (Date.now() < deadline) {
        try {
            const v = await fn();
            if (v) return v;
        } catch (err) {
            if (err instanceof Fatal) throw err;
            lastErr = err;
        }
        await sleep(intervalMs);
    }
    let detail = "";
    if (lastErr) detail = settings.terseErrors ? ` (last error: ${lastErr.message.split("\n")[0]})` : `: ${lastErr.message}`;
    throw new StepError(`timed out after ${timeoutMs} ms waiting for ${what}${detail}`);
}

// ---------------------------------------------------------------------------------------------
// moss

export function mossEnv(workdir, port) {
    // moss reads every MOSS_* variable as configuration and rejects unknown keys: drop ours.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("MOSS_")));
    return Object.assign(env, {
        MOSS_DATA_DIR: path.join(workdir, "data"),
        MOSS_HTTP__BIND: `127.0.0.1:${port}`,
        MOSS_SERVER_NAME: SERVER_NAME,
        MOSS_REGISTRATION: "open",
        MOSS_RATE_LIMITS__ENABLED: "false",
        MOSS_LOG__LEVEL: "info",
        RUST_BACKTRACE: "1",
        NO_COLOR: "1",
    });
}

// Starts `moss serve` in a new temp dir (named from `prefix`) and waits until it answers.
// `beforeServe({workdir, env})` runs first, on the same data dir (e.g. moss's CLI).
export async function startMoss(prefix, beforeServe = async () => {}) {
    const bin = settings.mossBin;
    if (!existsSync(bin)) {
        throw new StepError(`moss binary not found at ${bin}: build it first or set MOSS_BIN`);
    }
    const workdir = tmpDir(prefix);
    const port = await freePort();
    let baseUrl = `http://127.0.0.1:${port}`;
    const logPath = path.join(workdir, "moss.log");
    const env = mossEnv(workdir, port);
    // MOSS_TEST_CLUSTER=postgres: a second process on the same PostgreSQL database and data
    // directory, nginx in front of both (cluster.mjs); the first process's log is the report's.
    const cluster = clusterMode() ? { dir: path.join(workdir, "cluster") } : null;
    if (cluster) {
        Object.assign(env, clusterEnv(createPostgresDatabase("moss_browser"), path.join(workdir, "data")));
        // Clients find the homeserver through .well-known: it must name the proxy.
        cluster.front = await freePort();
        env.MOSS_PUBLIC_BASEURL = `http://127.0.0.1:${cluster.front}`;
    }
    await beforeServe({ workdir, env });

    const fd = openSync(logPath, "w");
    const proc = spawn(bin, ["serve"], { cwd: workdir, env, stdio: ["ignore", fd, fd] });
    state.moss = { proc, logPath, baseUrl, exit: null };
    proc.on("exit", (code, signal) => (state.moss.exit = { code, signal }));
    if (cluster) {
        const port2 = await freePort();
        mkdirSync(cluster.dir, { recursive: true });
        const fd2 = openSync(path.join(cluster.dir, "moss-2.log"), "w");
        cluster.second = spawn(bin, ["serve"], {
            cwd: cluster.dir,
            env: { ...env, MOSS_HTTP__BIND: `127.0.0.1:${port2}` },
            stdio: ["ignore", fd2, fd2],
        });
        cluster.second.on("exit", (code, signal) => (state.moss.exit ??= { code, signal, process: 2 }));
        cluster.nginx = startNginx(path.join(cluster.dir, "nginx"), cluster.front, [`127.0.0.1:${port}`, `127.0.0.1:${port2}`]);
        baseUrl = env.MOSS_PUBLIC_BASEURL;
        state.moss.baseUrl = baseUrl;
        state.moss.cluster = cluster;
    }
    await waitFor(
        "moss to answer /_matrix/client/versions",
        async () => {
            if (state.moss.exit) throw new Fatal(`moss exited during startup (${JSON.stringify(state.moss.exit)})`);
            const res = await fetch(`${baseUrl}/_matrix/client/versions`, { signal: AbortSignal.timeout(2000) });
            return res.ok;
        },
        30_000,
    );
    log(`moss ${bin} is up at ${baseUrl} (workdir ${workdir})`);
    return baseUrl;
}

export async function stopMoss() {
    const m = state.moss;
    if (!m) return;
    m.cluster?.nginx.stop();
    for (const proc of [m.proc, m.cluster?.second].filter(Boolean)) {
        if (proc.exitCode !== null || proc.signalCode !== null) continue;
        proc.kill("SIGTERM");
        const exited = await Promise.race([once(proc, "exit").then(() => true), sleep(10_000).then(() => false)]);
        if (!exited) {
            proc.kill("SIGKILL");
            await once(proc, "exit");
        }
    }
}

export function mossLogTail(lines = settings.logTailLines) {
    try {
        return readFileSync(state.moss.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch (err) {
        return `<cannot read moss log: ${err.message}>`;
    }
}

// The failure report's section on moss: whether it still runs, and its log's tail.
export function mossReport() {
    const st = state.moss.exit ? `EXITED ${JSON.stringify(state.moss.exit)}` : "running";
    return `\n--- moss (${st}) last ${settings.logTailLines} lines of ${state.moss.logPath} ---\n${mossLogTail()}`;
}

// ---------------------------------------------------------------------------------------------
// Matrix client-server API

// `body` is sent as JSON, `raw` (a Buffer or string) as it is, with `contentType`.
export async function api(baseUrl, method, urlPath, { token, body, raw, contentType } = {}) {
    const headers = {};
    if (token) headers.authorization = `Bearer ${token}`;
    let payload;
    if (raw !== undefined) {
        payload = raw;
        headers["content-type"] = contentType || "application/octet-stream";
    } else if (body !== undefined) {
        payload = JSON.stringify(body);
        headers["content-type"] = "application/json";
    }
    const res = await fetch(`${baseUrl}${urlPath}`, {
        method,
        headers,
        body: payload,
        signal: AbortSignal.timeout(15_000),
    });
    const text = await res.text();
    let json;
    try {
        json = JSON.parse(text);
    } catch {
        json = { raw: settings.terseErrors ? text.slice(0, 200) : text };
    }
    return { status: res.status, json };
}

export async function apiOk(baseUrl, method, urlPath, opts) {
    const { status, json } = await api(baseUrl, method, urlPath, opts);
    if (status !== 200) {
        throw new StepError(`${method} ${urlPath} -> HTTP ${status} ${JSON.stringify(json)}`);
    }
    return json;
}

// The spec'd user-interactive flow: first request without `auth`; on 401 complete m.login.dummy.
export async function register(baseUrl, username, password, deviceName) {
    const url = "/_matrix/client/v3/register";
    const body = { username, password, initial_device_display_name: deviceName };
    let { status, json } = await api(baseUrl, "POST", url, { body });
    if (status === 401) {
        const auth = { type: "m.login.dummy" };
        if (json.session) auth.session = json.session;
        ({ status, json } = await api(baseUrl, "POST", url, { body: { ...body, auth } }));
    }
    if (status !== 200 || !json.access_token) {
        throw new StepError(`registering ${username} failed: HTTP ${status} ${JSON.stringify(json)}`);
    }
    return json;
}

// ---------------------------------------------------------------------------------------------
// Static server for a web app's build

const MIME = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm", // needed for WebAssembly.instantiateStreaming
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
};

// Serves the files below `root` on a free loopback port (state.web); returns its base URL.
export async function startStaticServer(root) {
    const server = http.createServer((req, res) => {
        let urlPath;
        try {
            urlPath = decodeURIComponent(new URL(req.url, "http://x").pathname);
        } catch {
            res.writeHead(400).end();
            return;
        }
        let file = path.normalize(path.join(root, urlPath));
        if (!file.startsWith(root)) {
            res.writeHead(403).end();
            return;
        }
        if (urlPath.endsWith("/")) file = path.join(file, "index.html");
        let st;
        try {
            st = statSync(file);
            if (!st.isFile()) throw new Error("not a file");
        } catch {
            res.writeHead(404, { "content-type": "text/plain" }).end("not found");
            return;
        }
        res.writeHead(200, {
            "content-type": MIME[path.extname(file)] || "application/octet-stream",
            "content-length": st.size,
            "cache-control": "no-store",
        });
        if (req.method === "HEAD") res.end();
        else createReadStream(file).pipe(res);
    });
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    state.web = server;
    return `http://127.0.0.1:${server.address().port}`;
}

// ---------------------------------------------------------------------------------------------
// Browser

// Launches headless Chromium through the test's own playwright-core `chromium` with a fresh
// profile (a temp dir named from `profilePrefix`) and `options` for launchPersistentContext
// (viewport, locale, ...). Sets state.context and state.page; the page's console, uncaught
// exceptions (also in state.pageErrors) and crash go to state.consoleLog.
export async function launchChromium(chromium, profilePrefix, options) {
    if (!existsSync(CHROMIUM)) throw new StepError(`${CHROMIUM} is missing: run scripts/setup-browser.sh`);
    const profile = tmpDir(profilePrefix);
    // launchPersistentContext passes --user-data-dir=<profile> itself (a fresh, empty profile).
    const context = await chromium.launchPersistentContext(profile, {
        executablePath: CHROMIUM,
        headless: true,
        args: CHROMIUM_FLAGS,
        timeout: 30_000,
        ...options,
    });
    state.context = context;
    const page = context.pages()[0] || (await context.newPage());
    state.page = page;
    page.setDefaultTimeout(settings.stepTimeoutMs);
    page.on("console", (msg) => state.consoleLog.push(`[${stamp()}s] console.${msg.type()}: ${msg.text()}`));
    page.on("pageerror", (err) => {
        state.consoleLog.push(`[${stamp()}s] pageerror: ${err.stack || err}`);
        state.pageErrors.push(err);
    });
    page.on("crash", () => state.consoleLog.push(`[${stamp()}s] PAGE CRASHED`));
    return { context, page };
}

export async function shot(name) {
    if (!state.page || state.page.isClosed()) return;
    state.shots += 1;
    const file = path.join(settings.outputDir, `${String(state.shots).padStart(2, "0")}-${name}.png`);
    try {
        await state.page.screenshot({ path: file, fullPage: false, timeout: 10_000 });
        const rel = path.relative(process.cwd(), file);
        log(`screenshot ${rel.startsWith("..") ? file : rel}`);
    } catch (err) {
        log(`screenshot ${name} failed: ${err.message}`);
    }
}

// ---------------------------------------------------------------------------------------------
// Output and teardown

// Creates the output dir and drops a previous run's screenshots and `artifacts` (only the files
// the runner writes).
export function prepareOutput(artifacts) {
    mkdirSync(settings.outputDir, { recursive: true });
    for (const f of readdirSync(settings.outputDir)) {
        if (/^\d\d-.*\.png$/.test(f) || artifacts.includes(f)) rmSync(path.join(settings.outputDir, f), { force: true });
    }
}

// Writes browser-console.log, moss.log and the files `extra()` returns ({name: content}).
export function writeArtifacts(extra = () => ({})) {
    const write = (name, content) => writeFileSync(path.join(settings.outputDir, name), content);
    try {
        mkdirSync(settings.outputDir, { recursive: true });
        write("browser-console.log", state.consoleLog.join("\n") + "\n");
        for (const [name, content] of Object.entries(extra())) write(name, content);
        if (state.moss) write("moss.log", readFileSync(state.moss.logPath));
    } catch (err) {
        log(`writing artifacts failed: ${err.message}`);
    }
}

// Closes the browser, runs `beforeStopMoss` (the test's own processes), stops moss and the
// static server and removes the temp dirs (unless settings.keepTmp).
export async function cleanup(beforeStopMoss = async () => {}) {
    if (state.context) await state.context.close().catch(() => {});
    await beforeStopMoss();
    await stopMoss().catch(() => {});
    if (state.web) {
        state.web.closeAllConnections?.();
        state.web.close();
    }
    if (!settings.keepTmp) for (const d of state.tmpDirs) rmSync(d, { recursive: true, force: true });
    else if (state.tmpDirs.length) log(`kept ${state.tmpDirs.join(" ")}`);
}
