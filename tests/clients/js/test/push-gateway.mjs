// A push gateway for tests: the receiving end of the Matrix Push Gateway API v1
// (spec v1.18, "Push Gateway API": POST /_matrix/push/v1/notify), as a homeserver's HTTP
// pushers see it. It follows the spec exactly and checks every request against it:
//
//   - POST /_matrix/push/v1/notify with a JSON body { notification: {...} } is answered
//     200 { "rejected": [pushkeys of this request that the test told us to reject] };
//   - any other path is answered 404 (M_UNRECOGNIZED), another method on that path 405;
//   - every request on the notify path is recorded (parsed body, arrival time), and every way
//     it departs from the spec's schema is recorded as a violation, so a test can fail on it.
//
// It can be told to fail (answer 500 to everything, close connections as they are accepted,
// or stop listening so connections are refused) and to come back on the same port, to test a
// homeserver's retries.
//
// Node built-ins only.

import http from "node:http";
import { setTimeout as sleep } from "node:timers/promises";

export const NOTIFY_PATH = "/_matrix/push/v1/notify";

// The setTimeout of the test process may have been patched to unref long timers (helpers.mjs);
// waits here must keep the process alive, so they use plain short timers in a loop.
const POLL_MS = 25;

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const isInt = (v) => typeof v === "number" && Number.isSafeInteger(v);

/**
 * Checks a request body against the spec's schema of POST /_matrix/push/v1/notify (v1.18).
 * Returns a list of { path, problem } (empty when the body conforms). Unknown extra keys are
 * allowed (the schema does not forbid them), except `url` in `devices[].data`, which the spec
 * says the homeserver must strip.
 */
export function validateNotifyBody(body) {
    const v = [];
    const bad = (path, problem) => v.push({ path, problem });
    if (!isObject(body)) {
        bad("", "body must be a JSON object");
        return v;
    }
    const n = body.notification;
    if (!isObject(n)) {
        bad("notification", "required, must be an object");
        return v;
    }
    for (const key of ["event_id", "room_id", "type", "sender", "sender_display_name", "room_name", "room_alias"]) {
        if (key in n && typeof n[key] !== "string")
            bad(`notification.${key}`, `must be a string, got ${JSON.stringify(n[key])}`);
    }
    if ("event_id" in n && !("room_id" in n)) bad("notification.room_id", "required when event_id is present");
    if ("user_is_target" in n && typeof n.user_is_target !== "boolean") {
        bad("notification.user_is_target", `must be a boolean, got ${JSON.stringify(n.user_is_target)}`);
    }
    if ("prio" in n && n.prio !== "high" && n.prio !== "low") {
        bad("notification.prio", `must be "high" or "low", got ${JSON.stringify(n.prio)}`);
    }
    if ("content" in n && !isObject(n.content)) bad("notification.content", "must be an object");
    if ("counts" in n) {
        if (!isObject(n.counts)) {
            bad("notification.counts", "must be an object");
        } else {
            for (const key of ["unread", "missed_calls"]) {
                if (key in n.counts && !(isInt(n.counts[key]) && n.counts[key] >= 0)) {
                    bad(
                        `notification.counts.${key}`,
                        `must be a non-negative integer, got ${JSON.stringify(n.counts[key])}`,
                    );
                }
            }
        }
    }
    if (!Array.isArray(n.devices)) {
        bad("notification.devices", "required, must be an array");
        return v;
    }
    if (n.devices.length === 0) bad("notification.devices", "must name at least one device");
    n.devices.forEach((d, i) => {
        const at = `notification.devices[${i}]`;
        if (!isObject(d)) {
            bad(at, "must be an object");
            return;
        }
        if (typeof d.app_id !== "string") bad(`${at}.app_id`, "required, must be a string");
        if (typeof d.pushkey !== "string") bad(`${at}.pushkey`, "required, must be a string");
        if ("pushkey_ts" in d && !isInt(d.pushkey_ts)) bad(`${at}.pushkey_ts`, "must be an integer");
        // "The unix timestamp (in seconds) when the pushkey was last updated."
        if (isInt(d.pushkey_ts) && (d.pushkey_ts > Date.now() / 1000 + 60 || d.pushkey_ts < 1e9)) {
            bad(`${at}.pushkey_ts`, `must be a unix time in seconds, got ${d.pushkey_ts}`);
        }
        if ("data" in d) {
            if (!isObject(d.data)) bad(`${at}.data`, "must be an object");
            else if ("url" in d.data) bad(`${at}.data.url`, "the pusher's url must not be forwarded");
        }
        if ("tweaks" in d && !isObject(d.tweaks)) bad(`${at}.tweaks`, "must be an object");
    });
    return v;
}

/**
 * Starts a gateway on 127.0.0.1 (a random free port unless `port` is given).
 *
 * Options:
 * - `reject`: pushkeys to reject (a Set or array; `gateway.reject(key)` adds more later);
 * - `tolerate(violation, record)`: return true for known departures from the spec that should
 *   not count as violations (recorded in `gateway.tolerated` instead);
 * - `name`: used in messages.
 *
 * Returns the gateway object described below.
 */
export async function startPushGateway({ port = 0, reject = [], tolerate = () => false, name = "gateway" } = {}) {
    const gateway = new PushGateway({ reject, tolerate, name });
    await gateway.listen(port);
    return gateway;
}

class PushGateway {
    constructor({ reject, tolerate, name }) {
        this.name = name;
        this.rejectKeys = new Set(reject);
        this.tolerate = tolerate;
        /** Every notify request: { seq, at (ms), path, body, notification, status, rejected }. */
        this.records = [];
        /** Spec violations: { seq, path, problem, body }. */
        this.violations = [];
        /** Departures the `tolerate` hook let through, for the report. */
        this.tolerated = [];
        /** Requests to other paths or with other methods: { at, method, path }. */
        this.strayRequests = [];
        /** When set, every request is answered with this HTTP status (e.g. 500) and not recorded as delivered. */
        this.failStatus = null;
        /** When true, every connection is closed as soon as it is accepted (counted in `dropped`). */
        this.dropping = false;
        this.dropped = 0;
        this.port = null;
        this.server = null;
        this.seq = 0;
    }

    get url() {
        return `http://127.0.0.1:${this.port}${NOTIFY_PATH}`;
    }

    get baseUrl() {
        return `http://127.0.0.1:${this.port}`;
    }

    /** Starts (or restarts, after stopListening()) answering on `port` (0: a random one). */
    listen(port = this.port ?? 0) {
        if (this.server) return Promise.resolve();
        const server = http.createServer((req, res) => this.handle(req, res));
        server.keepAliveTimeout = 5_000;
        server.on("connection", (socket) => {
            if (!this.dropping) return;
            this.dropped += 1;
            socket.destroy();
        });
        return new Promise((resolve, reject) => {
            server.once("error", reject);
            server.listen(port, "127.0.0.1", () => {
                server.off("error", reject);
                this.server = server;
                this.port = server.address().port;
                resolve();
            });
        });
    }

    /** Stops listening and drops open connections: the homeserver sees "connection refused". */
    stopListening() {
        const server = this.server;
        if (!server) return Promise.resolve();
        this.server = null;
        return new Promise((resolve) => {
            server.close(() => resolve());
            server.closeAllConnections();
        });
    }

    /** Stops for good (same as stopListening; named for after() hooks). */
    close() {
        return this.stopListening();
    }

    /** Answers every request with `status` (e.g. 500) until failWith(null). */
    failWith(status) {
        this.failStatus = status;
    }

    /**
     * While on, keeps listening but closes every connection at once, before any request is
     * read: the homeserver sees a connection reset, and `dropped` shows that it tried.
     */
    dropConnections(on = true) {
        this.dropping = on;
    }

    reject(pushkey) {
        this.rejectKeys.add(pushkey);
    }

    unreject(pushkey) {
        this.rejectKeys.delete(pushkey);
    }

    handle(req, res) {
        const at = Date.now();
        const chunks = [];
        req.on("data", (c) => chunks.push(c));
        req.on("end", () => {
            const path = new URL(req.url, "http://gateway").pathname;
            const send = (status, obj) => {
                const text = JSON.stringify(obj);
                res.writeHead(status, {
                    "Content-Type": "application/json",
                    "Content-Length": Buffer.byteLength(text),
                });
                res.end(text);
            };
            if (path !== NOTIFY_PATH) {
                this.strayRequests.push({ at, method: req.method, path: req.url });
                send(404, { errcode: "M_UNRECOGNIZED", error: "Unrecognized request" });
                return;
            }
            if (req.method !== "POST") {
                this.strayRequests.push({ at, method: req.method, path: req.url });
                send(405, { errcode: "M_UNRECOGNIZED", error: "Method not allowed" });
                return;
            }
            const seq = ++this.seq;
            const raw = Buffer.concat(chunks).toString("utf8");
            let body;
            let problems = [];
            try {
                body = JSON.parse(raw);
            } catch {
                problems.push({ path: "", problem: `body is not JSON: ${raw.slice(0, 200)}` });
            }
            const contentType = req.headers["content-type"] ?? "";
            if (!/^application\/json\b/i.test(contentType)) {
                problems.push({
                    path: "Content-Type",
                    problem: `expected application/json, got ${JSON.stringify(contentType)}`,
                });
            }
            if (body !== undefined) problems.push(...validateNotifyBody(body));
            const record = {
                seq,
                at,
                path,
                body,
                notification: body?.notification,
                status: this.failStatus ?? 200,
                rejected: [],
            };
            for (const p of problems) {
                const entry = { seq, ...p, body };
                if (this.tolerate(p, record)) this.tolerated.push(entry);
                else this.violations.push(entry);
            }
            if (this.failStatus !== null) {
                record.failed = true;
                this.records.push(record);
                send(this.failStatus, { errcode: "M_UNKNOWN", error: "told to fail" });
                return;
            }
            const devices = Array.isArray(body?.notification?.devices) ? body.notification.devices : [];
            record.rejected = devices.map((d) => d?.pushkey).filter((k) => this.rejectKeys.has(k));
            this.records.push(record);
            send(200, { rejected: record.rejected });
        });
    }

    /** Delivered (answered 200) notifications, optionally only those matching `predicate(record)`. */
    delivered(predicate = () => true, { since = 0 } = {}) {
        return this.records.filter((r) => r.seq > since && !r.failed && predicate(r));
    }

    /** A marker for `since`: only records after this point count. */
    mark() {
        return this.seq;
    }

    /**
     * Resolves with the first `count` delivered records matching `predicate` (after `since`),
     * once there are at least that many; rejects after `timeoutMs` with what did arrive.
     */
    async waitFor(predicate, { count = 1, since = 0, timeoutMs = 15_000, what = "notifications" } = {}) {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
            const found = this.delivered(predicate, { since });
            if (found.length >= count) return found.slice(0, count);
            if (Date.now() > deadline) {
                throw new Error(
                    `${this.name}: timed out after ${timeoutMs} ms waiting for ${count} ${what} ` +
                        `(got ${found.length}); all requests since #${since}:\n` +
                        JSON.stringify(this.records.filter((r) => r.seq > since).map(brief), null, 1),
                );
            }
            await sleep(POLL_MS);
        }
    }

    /** Waits `ms` and throws if any delivered record matching `predicate` arrived after `since`. */
    async assertQuiet(predicate, { ms = 1_000, since = this.seq, what = "notification" } = {}) {
        await sleep(ms);
        const found = this.delivered(predicate, { since });
        if (found.length > 0) {
            throw new Error(
                `${this.name}: expected no ${what} within ${ms} ms, got:\n` + JSON.stringify(found.map(brief), null, 1),
            );
        }
    }

    /** Throws if any request broke the spec (so a test can call it at its end). */
    assertNoViolations() {
        if (this.violations.length > 0) {
            throw new Error(
                `${this.name}: ${this.violations.length} request(s) departed from the Push Gateway API spec:\n` +
                    this.violations
                        .slice(0, 10)
                        .map((x) => `  #${x.seq} ${x.path}: ${x.problem}\n    body: ${JSON.stringify(x.body)}`)
                        .join("\n"),
            );
        }
        if (this.strayRequests.length > 0) {
            throw new Error(`${this.name}: requests to other paths: ${JSON.stringify(this.strayRequests)}`);
        }
    }
}

function brief(record) {
    return {
        seq: record.seq,
        status: record.status,
        rejected: record.rejected,
        notification: record.notification,
    };
}

/** For a record: does it carry a device with this pushkey? */
export const forPushkey = (pushkey) => (record) =>
    Array.isArray(record.notification?.devices) && record.notification.devices.some((d) => d?.pushkey === pushkey);
