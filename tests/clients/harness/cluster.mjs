// Two moss processes on one PostgreSQL database and one data directory behind nginx (round
// robin, nothing sticky): the deployment docs/scaling.md describes. With MOSS_TEST_CLUSTER=postgres
// the JS scenarios (matrix-js-sdk, Hydrogen) run against it instead of one process, as the
// Python suite does (tests/clients/python/conftest.py, start_cluster). PostgreSQL is the one
// scripts/postgres-start.sh runs (its MOSS_TEST_PG_* variables), nginx Debian's.

import { execFileSync, spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import path from "node:path";

/** The scenarios should run against two processes on PostgreSQL. */
export const clusterMode = () => process.env.MOSS_TEST_CLUSTER === "postgres";

/** A new, empty database on the test PostgreSQL, made by its superuser over the socket; its URL. */
export function createPostgresDatabase(prefix = "moss_js") {
    const env = process.env;
    for (const k of ["MOSS_TEST_PG_BIN", "MOSS_TEST_PG_SOCKET_DIR", "MOSS_TEST_PG_PORT", "MOSS_TEST_PG_USER",
        "MOSS_TEST_PG_PASSWORD"]) {
        if (!env[k]) throw new Error(`MOSS_TEST_CLUSTER=postgres needs ${k} (source scripts/postgres-start.sh)`);
    }
    const name = `${prefix}_${process.pid}_${randomUUID().replaceAll("-", "").slice(0, 8)}`;
    execFileSync(`${env.MOSS_TEST_PG_BIN}/psql`, [
        "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", env.MOSS_TEST_PG_SOCKET_DIR, "-p", env.MOSS_TEST_PG_PORT,
        "-U", "postgres", "-d", "postgres", "-c",
        `CREATE DATABASE ${name} OWNER "${env.MOSS_TEST_PG_USER}" TEMPLATE template0 ENCODING 'UTF8' ` +
        "LC_COLLATE 'C' LC_CTYPE 'C'",
    ], { stdio: ["ignore", "ignore", "pipe"] });
    return `postgres://${env.MOSS_TEST_PG_USER}:${env.MOSS_TEST_PG_PASSWORD}@127.0.0.1:${env.MOSS_TEST_PG_PORT}/${name}`;
}

/** What every member of one cluster shares: the database, the data directory (media, keys) and
 * trust in the proxy's X-Forwarded-For. */
export function clusterEnv(url, dataDir) {
    return {
        MOSS_DATABASE__URL: url,
        MOSS_DATA_DIR: dataDir,
        MOSS_HTTP__TRUSTED_PROXIES: '["127.0.0.1/32"]',
    };
}

/**
 * nginx on 127.0.0.1:`port` (files in `dir`) passing every request to `upstreams`
 * ("127.0.0.1:PORT", …) in turn. A member that refuses the connection (killed) is skipped for
 * the next one, as nginx does by default for idempotent requests. Returns { stop() }.
 */
export function startNginx(dir, port, upstreams) {
    mkdirSync(dir, { recursive: true });
    const conf = path.join(dir, "nginx.conf");
    writeFileSync(conf, `
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
    access_log ${dir}/access.log;
    client_body_temp_path ${dir}/body;
    proxy_temp_path ${dir}/proxy;
    upstream moss {
${upstreams.map((u) => `        server ${u};`).join("\n")}
        keepalive 32;
    }
    server {
        listen 127.0.0.1:${port};
        client_max_body_size 110m;
        proxy_request_buffering off;
        proxy_read_timeout 120s;
        location / {
            proxy_pass http://moss;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }
    }
}
`);
    const started = spawnSync("nginx", ["-p", dir, "-c", conf], { encoding: "utf8" });
    if (started.status !== 0) throw new Error(`nginx did not start: ${started.stderr}`);
    return {
        stop() {
            spawnSync("nginx", ["-p", dir, "-c", conf, "-s", "stop"], { encoding: "utf8" });
        },
    };
}
