// A throw-away Synapse (from PyPI, installed by scripts/setup-synapse.sh into .venv-synapse) to
// run the same client scenarios against, as the reference implementation.
//
// Which Python: $MOSS_TEST_SYNAPSE_PYTHON, else <repo>/.venv-synapse/bin/python if present.
// Without one the caller should skip, unless MOSS_REQUIRE_SYNAPSE=1 (then it is an error).
//
// The server: SQLite, one plain-HTTP client listener on 127.0.0.1, server name "localhost"
// (the same as moss in helpers.mjs, so user ids look alike), open registration without
// verification (helpers.registerUser works as is), rate limits out of the way, cheap password
// hashing, no key servers. Push settings are Synapse's defaults except that pushes to
// loopback are allowed (`ip_range_whitelist`), since the test gateway listens on 127.0.0.1.

import { spawn, execFile } from "node:child_process";
import fs from "node:fs";
import fsp from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";

import { freePort, superviseChild, tailOf, waitUntilServing } from "./helpers.mjs";

const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../..");

/**
 * { python } when a Synapse is available, else { reason } (a message for a skipped test).
 * Throws when MOSS_REQUIRE_SYNAPSE=1 and there is none.
 */
export function findSynapse() {
    const required = process.env.MOSS_REQUIRE_SYNAPSE === "1";
    const fromEnv = process.env.MOSS_TEST_SYNAPSE_PYTHON;
    const fallback = path.join(REPO_ROOT, ".venv-synapse/bin/python");
    const python = fromEnv ? fromEnv : fs.existsSync(fallback) ? fallback : null;
    let reason = null;
    if (!python) {
        reason = "no Synapse: set MOSS_TEST_SYNAPSE_PYTHON or run scripts/setup-synapse.sh";
    } else if (!fs.existsSync(python)) {
        reason = `no Synapse: ${python} (MOSS_TEST_SYNAPSE_PYTHON) does not exist`;
    }
    if (reason && required) throw new Error(`MOSS_REQUIRE_SYNAPSE=1 but ${reason}`);
    return reason ? { reason } : { python };
}

/**
 * Generates a config in a fresh directory, starts Synapse and waits until
 * GET /_matrix/client/versions answers 200. Returns { baseUrl, port, dir, logPath, logTail(),
 * stop() } like helpers.startServer. `overrides` are merged into the top level of the config.
 */
export async function startSynapse({ python, overrides = {}, readyTimeoutMs = 60_000 } = {}) {
    python ??= findSynapse().python;
    if (!python) throw new Error("no Synapse python");
    const dir = await fsp.mkdtemp(path.join(os.tmpdir(), "moss-js-synapse-"));
    const port = await freePort();
    const baseUrl = `http://127.0.0.1:${port}`;
    const mainConfig = path.join(dir, "homeserver.yaml");
    const overrideConfig = path.join(dir, "overrides.yaml");
    const logPath = path.join(dir, "homeserver.log");
    const stdoutPath = path.join(dir, "stdout.log");

    const generate = ["--server-name", "localhost", "--config-path", mainConfig, "--data-directory", dir];
    await promisify(execFile)(
        python,
        ["-m", "synapse.app.homeserver", ...generate, "--generate-config", "--report-stats=no"],
        { cwd: dir, timeout: 60_000 },
    );

    const fast = { per_second: 100000, burst_count: 100000 };
    const config = {
        listeners: [
            {
                port,
                bind_addresses: ["127.0.0.1"],
                type: "http",
                tls: false,
                x_forwarded: false,
                resources: [{ names: ["client"], compress: false }],
            },
        ],
        enable_registration: true,
        enable_registration_without_verification: true,
        bcrypt_rounds: 4,
        trusted_key_servers: [],
        suppress_key_server_warning: true,
        // Synapse refuses pushes to private addresses (ip_range_blacklist includes 127.0.0.0/8);
        // the gateway is on loopback.
        ip_range_whitelist: ["127.0.0.0/8"],
        rc_message: fast,
        rc_registration: fast,
        rc_joins_per_room: fast,
        rc_room_creation: fast,
        rc_media_create: fast,
        rc_presence: fast,
        rc_3pid_validation: fast,
        rc_admin_redaction: fast,
        rc_login: { address: fast, account: fast, failed_attempts: fast },
        rc_joins: { local: fast, remote: fast },
        rc_invites: { per_room: fast, per_user: fast, per_issuer: fast },
        ...overrides,
    };
    // JSON is YAML; Synapse merges the top-level keys of successive -c files.
    await fsp.writeFile(overrideConfig, JSON.stringify(config, null, 2));

    const env = { ...process.env };
    for (const key of Object.keys(env)) {
        if (/^(https?|all|no)_proxy$/i.test(key)) delete env[key];
    }
    const outFd = fs.openSync(stdoutPath, "a");
    const child = spawn(python, ["-m", "synapse.app.homeserver", "-c", mainConfig, "-c", overrideConfig], {
        cwd: dir,
        env,
        stdio: ["ignore", outFd, outFd],
    });
    fs.closeSync(outFd);

    const proc = superviseChild(child);

    const server = {
        name: "synapse",
        baseUrl,
        port,
        dir,
        logPath,
        logTail: (maxLines = 60) => `${tailOf(logPath, maxLines)}\n--- stdout/stderr ---\n${tailOf(stdoutPath, 20)}`,
        async stop({ keepDir = false, signal = "SIGTERM" } = {}) {
            const info = await proc.stop(signal);
            if (!keepDir) await fsp.rm(dir, { recursive: true, force: true });
            return info;
        },
    };

    await waitUntilServing(server, proc, "Synapse", readyTimeoutMs, 200);
    return server;
}
