"""Side-by-side benchmark: moss against Synapse on this machine, same workloads, one after the other.

Usage (from the repo root, after scripts/setup-synapse.sh and scripts/setup-postgres.sh):
    .venv-synapse/bin/python bench/run.py [--quick] [--moss target/release/moss] [--out DIR]
        [--pg-env DIR/env] [--servers moss,synapse-postgres,synapse-sqlite] [--only push|appservice|sliding] [--no-push] [--no-appservice]
        [--no-sliding]

Rows: moss, Synapse on PostgreSQL (the fair comparison: the issue 5 targets are against it) and
Synapse on SQLite. The harness starts a throwaway PostgreSQL cluster with scripts/postgres-start.sh
and stops it at the end, unless --pg-env names the env file of a running one.

Writes <out>/<UTC time>.json and .md (and latest.md for full runs), and PNG plots beside them
(<UTC time>-*.png, linked from the Markdown). --quick shrinks every workload so the whole run takes
well under three minutes; CI runs it only to keep the harness working.

Workloads 1-5 (messaging, sync, login, rooms) and memory run once per row. Workload 6 (media, see
bench/media.py) runs in fresh processes: moss on its fs, s3 and encrypt+s3 stores, Synapse (on the
database of the first Synapse row) on its local store and with synapse-s3-storage-provider, beside
nginx serving the same files and raw GETs from Garage. Garage is started here on free ports with
scripts/garage-start.sh; nginx comes from scripts/setup-nginx.sh. Without either, the rows that
need it are left out and the report says so.

Workload 8 (push, see bench/push.py) runs on each row right after workloads 1-5, on the same
server: a message into a 500-member room (50 with --quick) with an HTTP pusher per member, against
the bench's own push gateway. `--only push` runs just that workload (no media); `--no-push` skips it.

Workload 9 (application services, see bench/appservice.py) runs after it, on the same server: a
1,000-message burst (100 with --quick) into a room the bench's own application service is in, and
the service down for 60 s (5 s) while messages are sent. `--only appservice` runs just that;
`--no-appservice` skips it.

Workload 10 (sliding sync, see bench/sliding.py) runs last on each row: a user in 1,000 rooms (40
with --quick), a new connection's first response with a 20-room window, long-poll delivery and
memory per open connection. `--only sliding` runs just that; `--no-sliding` skips it.

Workload 11 (fan-out, see bench/fanout.py) runs on every row after workloads 1-5: 200 users (40
with --quick) long-poll one room while one user sends 30 messages/s into it for 10 s (2 s), every
delivery timed, missing ones counted. `--no-fanout` skips it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import yaml

import media as media6
import appservice as as9
import push as push8
import sliding as ss10
import fanout as fo11

# One definition each, shared with the media workload.
free_port = media6.free_port
children = media6.children

REPO = Path(__file__).resolve().parent.parent


def rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_env_file(path: Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            env[key] = value.strip("'\"")
    return env


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


class Server:
    name = "?"

    def __init__(self, work: Path):
        self.work = work
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.cold_start_s = float("nan")

    def command(self) -> tuple[list[str], dict]:
        raise NotImplementedError

    async def start(self) -> None:
        cmd, env = self.command()
        log = open(self.work / "server.log", "w")
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=self.work, env={**os.environ, **env}, stdout=log, stderr=log)
        await self.wait_ready(started)

    async def wait_ready(self, started: float) -> None:
        """Until /versions answers on `base` (cold start counted from `started`)."""
        async with aiohttp.ClientSession() as http:
            for _ in range(3000):
                try:
                    async with http.get(f"{self.base}/_matrix/client/versions") as r:
                        if r.status == 200:
                            self.cold_start_s = time.perf_counter() - started
                            return
                except aiohttp.ClientError:
                    pass
                if self.proc and self.proc.poll() is not None:
                    raise SystemExit(f"{self.name} exited during start; see {self.work / 'server.log'}")
                await asyncio.sleep(0.01)
        raise SystemExit(f"{self.name} did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Moss(Server):
    name = "moss"

    def __init__(self, work: Path, binary: Path, extra_env: dict | None = None):
        super().__init__(work)
        self.binary = binary
        self.extra_env = extra_env or {}

    def command(self):
        env = {
            "MOSS_DATA_DIR": str(self.work / "data"),
            "MOSS_HTTP__BIND": f"127.0.0.1:{self.port}",
            "MOSS_REGISTRATION": "open",
            "MOSS_RATE_LIMITS__ENABLED": "false",
            "MOSS_LOG__LEVEL": "warn",
            **self.extra_env,
        }
        return [str(self.binary), "serve"], env


def create_database(pg: "Postgres", prefix: str) -> str:
    """A new, empty database on the bench's PostgreSQL, made by its superuser over the socket;
    its URL for moss."""
    e = pg.env
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [f"{e['MOSS_TEST_PG_BIN']}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", e["MOSS_TEST_PG_SOCKET_DIR"],
         "-p", e["MOSS_TEST_PG_PORT"], "-U", "postgres", "-d", "postgres", "-c",
         f"CREATE DATABASE {name} OWNER \"{e['MOSS_TEST_PG_USER']}\" TEMPLATE template0 ENCODING 'UTF8' "
         "LC_COLLATE 'C' LC_CTYPE 'C'"], check=True, capture_output=True)
    return f"postgres://{e['MOSS_TEST_PG_USER']}:{e['MOSS_TEST_PG_PASSWORD']}@127.0.0.1:{e['MOSS_TEST_PG_PORT']}/{name}"


class MossPair(Server):
    """Two moss processes on one PostgreSQL database behind nginx (round robin): the
    deployment of docs/scaling.md. `proc` is the first process (its RSS is the one reported)."""

    name = "moss-postgres-2"

    def __init__(self, work: Path, binary: Path, url: str):
        super().__init__(work)
        shared = {"MOSS_DATABASE__URL": url, "MOSS_DATA_DIR": str(work / "data"),
                  "MOSS_HTTP__TRUSTED_PROXIES": '["127.0.0.1/32"]'}
        (work / "a").mkdir(parents=True)
        (work / "b").mkdir(parents=True)
        self.members = [Moss(work / "a", binary, shared), Moss(work / "b", binary, shared)]
        self.nginx_dir = work / "nginx"

    async def start(self) -> None:
        started = time.perf_counter()
        for m in self.members:
            await m.start()
        self.proc = self.members[0].proc
        self.nginx_dir.mkdir(exist_ok=True)
        upstream = "\n".join(f"        server 127.0.0.1:{m.port};" for m in self.members)
        (self.nginx_dir / "nginx.conf").write_text(f"""
worker_processes 1;
pid {self.nginx_dir}/nginx.pid;
error_log {self.nginx_dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {self.nginx_dir}/body;
    proxy_temp_path {self.nginx_dir}/proxy;
    upstream moss {{
{upstream}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        client_max_body_size 110m;
        proxy_request_buffering off;
        proxy_read_timeout 120s;
        location / {{
            proxy_pass http://moss;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
""")
        subprocess.run(["nginx", "-p", str(self.nginx_dir), "-c", str(self.nginx_dir / "nginx.conf")], check=True)
        await self.wait_ready(started)

    def stop(self) -> None:
        subprocess.run(["nginx", "-p", str(self.nginx_dir), "-c", str(self.nginx_dir / "nginx.conf"), "-s", "stop"],
                       capture_output=True)
        for m in self.members:
            m.stop()


class Postgres:
    """A PostgreSQL cluster: started here with scripts/postgres-start.sh, or an existing one (--pg-env)."""

    def __init__(self, env: dict, owned: bool):
        self.env, self.owned = env, owned
        pidfile = Path(env.get("MOSS_TEST_PG_DIR", "/nonexistent"), "postgres.pid")
        self.pid = int(pidfile.read_text().split()[0]) if pidfile.exists() else None

    @classmethod
    def start(cls, directory: Path) -> "Postgres":
        started = time.perf_counter()
        res = subprocess.run([str(REPO / "scripts/postgres-start.sh"), str(directory)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SystemExit(f"postgres-start.sh failed (run scripts/setup-postgres.sh first?):\n{res.stderr}")
        pg = cls(read_env_file(Path(res.stdout.strip().splitlines()[-1])), owned=True)
        print(f"PostgreSQL up on port {pg.env['MOSS_TEST_PG_PORT']} in {time.perf_counter() - started:.1f} s", flush=True)
        return pg

    def connect(self):
        import psycopg2
        e = self.env
        return psycopg2.connect(host=e["MOSS_TEST_PG_HOST"], port=int(e["MOSS_TEST_PG_PORT"]), user=e["MOSS_TEST_PG_USER"],
                                password=e["MOSS_TEST_PG_PASSWORD"], dbname=e["MOSS_TEST_PG_DB"])

    def reset(self) -> None:
        """Empties the database, so that every Synapse run starts on a fresh schema."""
        conn = self.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DROP OWNED BY CURRENT_USER CASCADE")
        conn.close()

    def version(self) -> str:
        conn = self.connect()
        with conn.cursor() as cur:
            cur.execute("SHOW server_version")
            v = cur.fetchone()[0]
        conn.close()
        return v

    def pids(self) -> list[int]:
        return [self.pid, *children(self.pid)] if self.pid else []

    def rss_mib(self) -> float:
        return sum(rss_kib(p, "VmRSS") for p in self.pids()) / 1024

    def pss_mib(self) -> float:
        return sum(pss_kib(p) for p in self.pids()) / 1024

    def stop(self) -> None:
        if not self.owned:
            return
        stop = self.env.get("MOSS_TEST_PG_STOP")
        if stop and subprocess.run([stop], capture_output=True).returncode == 0:
            return
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except OSError:
                pass


class Synapse(Server):
    name = "synapse-sqlite"
    appservice: "as9.Receiver | None" = None  # workload 9's registration, when it runs

    def database(self) -> dict:
        return {"name": "sqlite3", "args": {"database": str(self.work / "homeserver.db")}}

    def command(self):
        cfg = self.work / "homeserver.yaml"
        if not cfg.exists():
            subprocess.run(
                [sys.executable, "-m", "synapse.app.homeserver", "--server-name", "localhost", "--config-path", str(cfg),
                 "--data-directory", str(self.work), "--generate-config", "--report-stats=no"],
                check=True, cwd=self.work, stdout=subprocess.DEVNULL,
            )
            conf = yaml.safe_load(cfg.read_text())
            conf["listeners"] = [{"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "x_forwarded": False,
                                  "resources": [{"names": ["client"], "compress": False}]}]
            conf["database"] = self.database()
            conf["enable_registration"] = True
            conf["enable_registration_without_verification"] = True
            fast = {"per_second": 100000, "burst_count": 100000}
            for rc in ["rc_message", "rc_registration", "rc_joins_per_room", "rc_room_creation", "rc_media_create",
                       "rc_invites", "rc_presence", "rc_3pid_validation", "rc_admin_redaction", "rc_federation"]:
                conf[rc] = fast
            conf["rc_login"] = {"address": fast, "account": fast, "failed_attempts": fast}
            conf["rc_joins"] = {"local": fast, "remote": fast}
            conf["rc_invites"] = {"per_room": fast, "per_user": fast, "per_issuer": fast}
            conf["rc_federation"] = {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 1, "reject_limit": 100000, "concurrent": 1000}
            conf.pop("log_config", None)
            conf["max_upload_size"] = str(media6.MAX_UPLOAD)  # the default 50M is below the media sizes
            push8.configure_synapse(conf)  # workload 8: pushers may reach the bench's gateway on loopback
            as9.configure_synapse(conf, self.appservice)  # workload 9: the bench's application service
            cfg.write_text(yaml.safe_dump(conf))
        return [sys.executable, "-m", "synapse.app.homeserver", "-c", str(cfg)], {}

    def configure_media(self, store: Path, provider: dict | None) -> None:
        """For the media rows: a fresh media store directory, and the S3 provider or none."""
        cfg = self.work / "homeserver.yaml"
        conf = yaml.safe_load(cfg.read_text())
        conf["media_store_path"] = str(store)
        if provider:
            conf["media_storage_providers"] = [provider]
        else:
            conf.pop("media_storage_providers", None)
        cfg.write_text(yaml.safe_dump(conf))


class SynapsePg(Synapse):
    name = "synapse-postgres"

    def __init__(self, work: Path, pg: Postgres):
        super().__init__(work)
        self.pg = pg
        self.fresh_db = True

    def database(self) -> dict:
        e = self.pg.env
        return {"name": "psycopg2", "args": {
            "user": e["MOSS_TEST_PG_USER"], "password": e["MOSS_TEST_PG_PASSWORD"], "database": e["MOSS_TEST_PG_DB"],
            "host": e["MOSS_TEST_PG_HOST"], "port": int(e["MOSS_TEST_PG_PORT"]),
            # Synapse's documented example pool; 10 connections is plenty for 8 concurrent senders.
            "cp_min": 5, "cp_max": 10}}

    async def start(self) -> None:
        if self.fresh_db:  # the first start; the media rows restart it on the same database
            self.pg.reset()
            self.fresh_db = False
        await super().start()


class Client:
    """Just enough of the client-server API for the workloads."""

    def __init__(self, http: aiohttp.ClientSession, base: str):
        self.http, self.base = http, base
        self.token = self.user_id = None

    async def call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        headers = {"Authorization": f"Bearer {token or self.token}"} if (token or self.token) else {}
        async with self.http.request(method, self.base + path, json=body, headers=headers) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                raise RuntimeError(f"{method} {path}: {r.status} {data}")
            return data

    async def register(self, name: str) -> "Client":
        body = {"username": name, "password": "bench-password-1", "auth": {"type": "m.login.dummy"}}
        async with self.http.post(self.base + "/_matrix/client/v3/register", json=body) as r:
            data = await r.json(content_type=None)
            if r.status == 401:
                body["auth"]["session"] = data["session"]
                data = await self.call("POST", "/_matrix/client/v3/register", body)
        self.token, self.user_id = data["access_token"], data["user_id"]
        return self

    async def login(self, name: str) -> str:
        data = await self.call("POST", "/_matrix/client/v3/login", {
            "type": "m.login.password", "identifier": {"type": "m.id.user", "user": name}, "password": "bench-password-1"})
        return data["access_token"]

    async def create_room(self, **extra) -> str:
        return (await self.call("POST", "/_matrix/client/v3/createRoom", {"preset": "public_chat", **extra}))["room_id"]

    async def join(self, room: str) -> None:
        await self.call("POST", f"/_matrix/client/v3/join/{room}", {})

    async def send(self, room: str, body: str) -> str:
        txn = uuid.uuid4().hex
        return (await self.call("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}",
                                {"msgtype": "m.text", "body": body}))["event_id"]

    async def sync(self, since: str | None = None, timeout: int = 0, filt: str | None = None, token: str | None = None) -> dict:
        q = f"?timeout={timeout}" + (f"&since={since}" if since else "") + (f"&filter={filt}" if filt else "")
        return await self.call("GET", "/_matrix/client/v3/sync" + q, token=token)


async def workloads(server: Server, quick: bool) -> dict:
    n_seq, users, per_user, samples = (30, 4, 10, 10) if quick else (300, 8, 100, 50)
    rooms_n, msgs_per_room, logins = (5, 10, 5) if quick else (20, 100, 20)
    out: dict = {"cold_start_s": server.cold_start_s, "idle_rss_mib": rss_kib(server.proc.pid, "VmRSS") / 1024}
    pg: Postgres | None = getattr(server, "pg", None)
    sampler = None
    if pg:
        # PostgreSQL's memory beside Synapse's: the sum over its processes (postmaster and backends).
        # Summed RSS counts shared buffers once per process that touched them; PSS splits them.
        out["db_idle_rss_mib"], out["db_idle_pss_mib"] = pg.rss_mib(), pg.pss_mib()
        db_peak = {"rss": out["db_idle_rss_mib"], "pss": out["db_idle_pss_mib"]}

        async def sample() -> None:
            while True:
                await asyncio.sleep(0.25)
                db_peak["rss"] = max(db_peak["rss"], pg.rss_mib())
                db_peak["pss"] = max(db_peak["pss"], pg.pss_mib())

        sampler = asyncio.create_task(sample())
    conn = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as http:
        tag = uuid.uuid4().hex[:6]
        alice = await Client(http, server.base).register(f"alice{tag}")

        # 1. sequential send latency
        room = await alice.create_room()
        lat = []
        t0 = time.perf_counter()
        for i in range(n_seq):
            s = time.perf_counter()
            await alice.send(room, f"seq {i}")
            lat.append((time.perf_counter() - s) * 1000)
        out["seq_send"] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "events_per_s": n_seq / (time.perf_counter() - t0),
                           "samples_ms": lat}

        # 2. concurrent send throughput: `n` new users in one new room, each sending `each` messages
        async def concurrent(n: int, each: int, prefix: str) -> tuple[dict, str, list[Client]]:
            room = await alice.create_room()
            clients = [await Client(http, server.base).register(f"{prefix}{i}{tag}") for i in range(n)]
            for c in clients:
                await c.join(room)

            async def burst(c: Client) -> None:
                for i in range(each):
                    await c.send(room, f"{prefix} {i}")

            t0 = time.perf_counter()
            await asyncio.gather(*(burst(c) for c in clients))
            return {"events_per_s": n * each / (time.perf_counter() - t0), "users": n, "per_user": each}, room, clients

        out["concurrent_send"], room, senders = await concurrent(users, per_user, "u")
        # 2b. the same with 32 users (the load the scale-out rows are compared on)
        out["concurrent_send_32"], _, _ = await concurrent(32, 3 if quick else 25, "m")

        # 3. delivery latency: send -> the other user's long-poll returns it
        bob = senders[0]
        since = (await bob.sync())["next_batch"]
        lat = []
        for i in range(samples):
            poll = asyncio.create_task(bob.sync(since, timeout=10000))
            await asyncio.sleep(0.05)
            s = time.perf_counter()
            await alice.send(room, f"ping {i}")
            res = await poll
            # A response woken by something else (presence, say) is followed by the next poll;
            # one that waited out the long-poll means the workload itself is broken.
            while room not in res.get("rooms", {}).get("join", {}):
                if time.perf_counter() - s > 9:
                    raise RuntimeError(f"delivery workload: the message to {room} never reached bob's long-poll")
                res = await bob.sync(res["next_batch"], timeout=10000)
            lat.append((time.perf_counter() - s) * 1000)
            since = res["next_batch"]
        out["delivery"] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "samples_ms": lat}

        # 4. initial sync for a user in many rooms, with a fresh device each time
        carol = await Client(http, server.base).register(f"carol{tag}")
        for r in range(rooms_n):
            rid = await carol.create_room()
            for m in range(msgs_per_room):
                await carol.send(rid, f"r{r} m{m}")
        filt = json.dumps({"room": {"timeline": {"limit": 10}}}).replace('"', "%22").replace("{", "%7B").replace("}", "%7D").replace(":", "%3A").replace(",", "%2C")
        times = []
        for _ in range(3 if quick else 5):
            token = await carol.login(f"carol{tag}")
            s = time.perf_counter()
            res = await carol.sync(filt=filt, token=token)
            times.append((time.perf_counter() - s) * 1000)
        noop = []
        since = res["next_batch"]
        for _ in range(10 if quick else 50):
            s = time.perf_counter()
            since = (await carol.sync(since, token=token))["next_batch"]
            noop.append((time.perf_counter() - s) * 1000)
        out["initial_sync"] = {"median_ms": statistics.median(times), "rooms": rooms_n, "messages_per_room": msgs_per_room}
        out["noop_sync"] = {"p50_ms": pct(noop, 50)}

        # 5. login rate; room creation + join latency
        t0 = time.perf_counter()
        for _ in range(logins):
            await alice.login(f"alice{tag}")
        out["login"] = {"per_s": logins / (time.perf_counter() - t0)}
        lat = []
        for _ in range(5 if quick else 20):
            s = time.perf_counter()
            rid = await alice.create_room()
            await bob.join(rid)
            lat.append((time.perf_counter() - s) * 1000)
        out["create_and_join"] = {"p50_ms": pct(lat, 50)}
    out["peak_rss_mib"] = rss_kib(server.proc.pid, "VmHWM") / 1024
    # Server RSS plus, for PostgreSQL, the PSS sum: RSS summed over its processes would count the
    # shared buffers and libraries once per backend.
    out["idle_total_mib"], out["peak_total_mib"] = out["idle_rss_mib"], out["peak_rss_mib"]
    if sampler:
        sampler.cancel()
        db_peak["rss"] = max(db_peak["rss"], pg.rss_mib())
        db_peak["pss"] = max(db_peak["pss"], pg.pss_mib())
        out["db_peak_rss_mib"], out["db_peak_pss_mib"] = db_peak["rss"], db_peak["pss"]
        out["idle_total_mib"] += out["db_idle_pss_mib"]
        out["peak_total_mib"] += out["db_peak_pss_mib"]
    return out


class MediaBench:
    """Workload 6 across the rows: the data files, Garage and the reference rows are made on first
    use (right before the first server's media rows) and shared by every row after."""

    def __init__(self, work: Path, quick: bool, sizes: list[int], stores: list[str]):
        self.work, self.quick, self.sizes, self.stores = work, quick, sizes, stores
        reps = media6.QUICK_REPS if quick else media6.FULL_REPS
        self.reps = {s: reps.get(s, 1) for s in sizes}
        self.files: media6.DataFiles | None = None
        self.garage: media6.Garage | None = None
        self.result: dict = {"sizes": sizes, "reps": {str(s): n for s, n in self.reps.items()}, "rows": {},
                             "skipped": {}, "versions": {}}
        self.result["duration_s"] = 0.0  # the media phases only, server starts included

    async def measure(self, row: media6.Row, idle_rss_mib: float) -> None:
        started = time.perf_counter()
        self.result["rows"][row.id] = await media6.measure_row(row, self.files, self.sizes, self.reps, idle_rss_mib)
        self.result["rows"][row.id]["duration_s"] = round(time.perf_counter() - started, 1)

    async def prepare(self) -> None:
        if self.files is not None:
            return
        started = time.perf_counter()
        self.files = media6.DataFiles(self.work / "media-files", self.sizes)
        print(f"media: data files ({', '.join(map(media6.size_label, self.sizes))}) written in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        if media6.garage_binary():
            self.garage = media6.Garage(self.work / "garage", REPO)
            self.garage.start()
            self.result["versions"]["Garage"] = self.garage.version()
        else:
            self.result["skipped"]["S3 rows"] = "Garage is not installed (scripts/setup-garage.sh)"
        if media6.nginx_binary():
            nginx = media6.Nginx(self.work / "nginx", self.files.dir)
            self.result["versions"]["nginx"] = nginx.version()
            try:
                await nginx.start()
                await self.measure(media6.NginxRow(nginx), media6.rss_mib(nginx.pids()))
            finally:
                nginx.stop()
        else:
            self.result["skipped"]["nginx"] = "nginx is not installed (scripts/setup-nginx.sh)"
        if self.garage:
            await self.measure(media6.GarageRow(self.garage), media6.rss_mib([self.garage.pid]))

    async def moss_rows(self, binary: Path) -> None:
        started = time.perf_counter()
        try:
            await self._moss_rows(binary)
        finally:
            self.result["duration_s"] = round(self.result["duration_s"] + time.perf_counter() - started, 1)

    async def synapse_rows(self, server: "Synapse") -> None:
        started = time.perf_counter()
        try:
            await self._synapse_rows(server)
        finally:
            self.result["duration_s"] = round(self.result["duration_s"] + time.perf_counter() - started, 1)

    async def _moss_rows(self, binary: Path) -> None:
        await self.prepare()
        for store in self.stores:
            if store != "fs" and not self.garage:
                continue
            server = Moss(self.work / f"moss-media-{store.replace('+', '-')}", binary,
                          media6.moss_store_env(store, self.garage))
            server.work.mkdir(parents=True)
            try:
                await server.start()
                idle = rss_kib(server.proc.pid, "VmRSS") / 1024
                row_id, title = f"moss-{store}", f"moss {store}"
                row = (media6.MatrixRow(row_id, title, server.base, server.proc.pid) if store == "fs" else
                       media6.MossS3Row(row_id, title, server.base, server.proc.pid, self.garage,
                                        media6.moss_prefix(store)))
                await self.measure(row, idle)
            finally:
                server.stop()
                shutil.rmtree(server.work, ignore_errors=True)  # its copies of the files: up to GiBs

    async def _synapse_rows(self, server: "Synapse") -> None:
        """Restarts a Synapse row's server (same database) with a fresh media store, twice: local
        disk only, then with synapse-s3-storage-provider on Garage."""
        await self.prepare()
        self.result["versions"]["synapse-s3-storage-provider"] = versions().get("synapse-s3-storage-provider", "?")
        variants = ["local"] + (["s3"] if self.garage else [])
        for variant in variants:
            store = server.work / f"media-{variant}"
            provider = self.garage.synapse_provider("synapse/") if variant == "s3" else None
            server.configure_media(store, provider)
            title = f"{TITLES[server.name]}, " + ("local disk" if variant == "local" else "s3-storage-provider")
            try:
                await server.start()
                idle = rss_kib(server.proc.pid, "VmRSS") / 1024
                row = (media6.SynapseS3Row(f"synapse-{variant}", title, server.base, server.proc.pid, store)
                       if provider else media6.MatrixRow(f"synapse-{variant}", title, server.base, server.proc.pid))
                await self.measure(row, idle)
            finally:
                server.stop()
                shutil.rmtree(store, ignore_errors=True)

    def stop(self) -> None:
        if self.garage:
            self.garage.stop()


def machine() -> dict:
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.machine())
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def versions(pg: "Postgres | None" = None) -> dict:
    """Versions of what the Synapse rows run on (this interpreter is the Synapse venv's)."""
    import sqlite3
    from importlib import metadata
    # Not synapse.__version__: that appends `git describe` of whatever repo holds the venv (ours).
    v = {"synapse": metadata.version("matrix-synapse"), "sqlite": sqlite3.sqlite_version}
    for dist in ("psycopg2-binary", "psycopg2"):
        try:
            v["psycopg2"] = f"{dist} {metadata.version(dist)}"
            break
        except metadata.PackageNotFoundError:
            pass
    for dist in ("synapse-s3-storage-provider", "boto3", "matplotlib", "aiohttp"):
        try:
            v[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    if pg:
        try:
            v["postgresql"] = pg.version()
        except Exception as e:  # noqa: BLE001 - a version is not worth failing the run for
            v["postgresql"] = f"? ({e})"
    return v


# (label, section, key, better, scale)
ROWS = [
    ("sequential send p50 (ms)", "seq_send", "p50_ms", "lower", 1),
    ("sequential send p99 (ms)", "seq_send", "p99_ms", "lower", 1),
    ("sequential send (events/s)", "seq_send", "events_per_s", "higher", 1),
    ("concurrent send (events/s)", "concurrent_send", "events_per_s", "higher", 1),
    ("concurrent send, 32 users (events/s)", "concurrent_send_32", "events_per_s", "higher", 1),
    ("delivery p50 (ms)", "delivery", "p50_ms", "lower", 1),
    ("delivery p99 (ms)", "delivery", "p99_ms", "lower", 1),
    ("initial sync (ms)", "initial_sync", "median_ms", "lower", 1),
    ("no-op sync p50 (ms)", "noop_sync", "p50_ms", "lower", 1),
    ("logins/s", "login", "per_s", "higher", 1),
    ("create room + join p50 (ms)", "create_and_join", "p50_ms", "lower", 1),
    ("cold start (ms)", None, "cold_start_s", "lower", 1000),
    ("idle RSS, server process (MiB)", None, "idle_rss_mib", "lower", 1),
    ("idle RSS, PostgreSQL: sum of its processes (MiB)", None, "db_idle_rss_mib", "lower", 1),
    ("idle PSS, PostgreSQL: sum of its processes (MiB)", None, "db_idle_pss_mib", "lower", 1),
    ("idle memory incl. database (MiB)", None, "idle_total_mib", "lower", 1),
    ("peak RSS, server process (MiB)", None, "peak_rss_mib", "lower", 1),
    ("peak RSS, PostgreSQL: sum of its processes (MiB)", None, "db_peak_rss_mib", "lower", 1),
    ("peak PSS, PostgreSQL: sum of its processes (MiB)", None, "db_peak_pss_mib", "lower", 1),
    ("peak memory incl. database (MiB)", None, "peak_total_mib", "lower", 1),
]

TITLES = {"moss": "moss", "moss-postgres": "moss+PostgreSQL", "moss-postgres-2": "moss+PostgreSQL ×2 (nginx)",
          "synapse-postgres": "Synapse+PostgreSQL", "synapse-sqlite": "Synapse+SQLite"}
PRIMARY = "synapse-postgres"


def value(result: dict, section: str | None, key: str):
    v = (result.get(section, {}) if section else result).get(key)
    return v if isinstance(v, (int, float)) else None


def targets(results: dict) -> list[dict]:
    """The issue 5 targets: relative ones against Synapse on PostgreSQL, absolute ones for moss alone."""
    moss, base = results.get("moss", {}), results.get(PRIMARY)
    out = []

    def relative(name: str, section: str, key: str, better: str, unit: str, goal: float, what: str) -> None:
        m, b = value(moss, section, key), value(base, section, key) if base else None
        t = {"target": name, "goal": f"≥ {goal:g}× {what} Synapse+PostgreSQL"}
        if m and b:
            r = m / b if better == "higher" else b / m
            t.update(measured=f"{r:.1f}× ({m:.1f} vs {b:.1f} {unit})", ratio=r, met=r >= goal,
                     miss=f"{r:.1f}×, needs ≥ {goal:g}×")
        else:
            t.update(measured="not measured", met=None)
        out.append(t)

    def absolute(name: str, section: str | None, key: str, limit: float, unit: str) -> None:
        m = value(moss, section, key)
        t = {"target": name, "goal": f"< {limit:g} {unit}"}
        if m is not None:
            t.update(measured=f"{m:.1f} {unit}", value=m, met=m < limit, miss=f"{m:.1f} {unit}, needs < {limit:g} {unit}")
        else:
            t.update(measured="not measured", met=None)
        out.append(t)

    relative("concurrent send throughput", "concurrent_send", "events_per_s", "higher", "events/s", 10, "the throughput of")
    relative("initial sync", "initial_sync", "median_ms", "lower", "ms", 10, "faster than")
    absolute("delivery p99", "delivery", "p99_ms", 20, "ms")
    absolute("idle RSS", None, "idle_rss_mib", 40, "MiB")
    return out


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def report(results: dict, meta: dict, media: dict | None = None) -> str:
    m, v = meta["machine"], meta["versions"]
    names = [n for n in TITLES if n in results]
    others = [n for n in (PRIMARY, "synapse-sqlite") if n in results and "moss" in results]
    stack = [f"Synapse {v.get('synapse', '?')}"]
    if "postgresql" in v:
        stack.append(f"PostgreSQL {v['postgresql']} via {v.get('psycopg2', 'psycopg2 ?')}")
    stack.append(f"SQLite {v.get('sqlite', '?')}")
    lines = [f"# moss vs Synapse ({meta['mode']})", "",
             f"{meta['when']} · {m.get('cpu', '?')} · {m['cores']} cores · {m['memory_gib']} GiB · "
             f"Linux {m['kernel']} · Python {m['python']}", "",
             " · ".join(([f"moss `{meta['moss_binary']}`"] if "moss" in results else []) + stack), ""]
    table = ["| " + " | ".join(["workload", *(TITLES[n] for n in names), *(f"moss / {TITLES[o]}" for o in others)]) + " |",
             "|" + "---|" * (len(names) + len(others) + 1)]
    for label, section, key, better, scale in ROWS:
        vals = {n: value(results[n], section, key) for n in names}
        if all(x is None for x in vals.values()):
            continue
        cells = [fmt(vals[n] * scale if vals[n] is not None else None) for n in names]
        ratios = []
        for o in others:
            a, b = vals.get("moss"), vals.get(o)
            if a and b:
                r = a / b if better == "higher" else b / a
                ratios.append(f"{r:.1f}× {'better' if r >= 1 else 'worse'}")
            else:
                ratios.append("-")
        table.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    if len(table) > 2:  # not with --only push
        lines += table
        lines += ["", "Ratios are oriented so that above 1× means moss is better; moss / Synapse+PostgreSQL is the "
              "fair comparison. Memory: moss and Synapse are one process each (RSS; peak = VmHWM); PostgreSQL is "
              "a postmaster plus a backend per pooled connection, sampled every 0.25 s. Its RSS summed over "
              "processes counts shared buffers and libraries once per process; PSS splits shared pages between "
              "them, so the \"incl. database\" rows add PostgreSQL's PSS to the server's RSS.", ""]
    if media and media.get("rows"):
        lines += media6.report(media)
    ts = meta.get("targets", [])
    if ts:
        lines += ["## Issue 5 targets", "", "| target | goal | this run | |", "|---|---|---|---|"]
        for t in ts:
            verdict = "met" if t["met"] else "**missed**" if t["met"] is False else "not measured"
            lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {verdict} |")
        missed = [t for t in ts if t["met"] is False]
        unmeasured = [t for t in ts if t["met"] is None]
        lines.append("")
        if missed:
            lines.append(f"**moss misses {len(missed)} of {len(ts)} targets in this run: "
                         + "; ".join(f"{t['target']} ({t['miss']})" for t in missed) + ".**")
        elif not unmeasured:
            lines.append(f"moss meets all {len(ts)} targets in this run.")
        if unmeasured:
            lines.append("Not measured in this run: " + ", ".join(t["target"] for t in unmeasured)
                         + (" (the Synapse+PostgreSQL row is missing)." if PRIMARY not in results else "."))
        if meta["mode"] == "quick":
            lines.append("")
            lines.append("Quick mode shrinks every workload: these numbers show that the harness works, "
                         "not whether moss meets the targets.")
        lines.append("")
    lines += push8.report(results, meta, TITLES)
    lines += as9.report(results, meta, TITLES)
    lines += ss10.report(results, meta, TITLES)
    lines += fo11.report(results, meta, TITLES)
    if meta.get("plots"):
        lines += ["## Plots", ""]
        for title, name in meta["plots"]:
            lines += [f"![{title}]({name})", ""]
    if meta.get("plots_error"):
        lines += [f"Plots failed: {meta['plots_error']}", ""]
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--moss", default=str(REPO / "target/release/moss"))
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--pg-env", help="env file of a running cluster from scripts/postgres-start.sh "
                                     "(default: start a throwaway one, and stop it after its row)")
    ap.add_argument("--servers", default=",".join(TITLES), help="comma-separated rows to run, in this order")
    ap.add_argument("--no-media", action="store_true", help="skip workload 6 (media)")
    ap.add_argument("--media-sizes", help="comma-separated, e.g. 4K,1M,64M,1G (default: those four; "
                                          "--quick: 4K,1M,64M)")
    ap.add_argument("--media-stores", help="moss stores, comma-separated from fs,s3,encrypt+s3 (default: all; "
                                           "--quick: fs,encrypt+s3)")
    ap.add_argument("--only", choices=["push", "appservice", "sliding"],
                    help="run only this workload (push: workload 8; appservice: workload 9; sliding: workload 10; "
                         "no media)")
    ap.add_argument("--no-push", action="store_true", help="skip workload 8 (push)")
    ap.add_argument("--no-appservice", action="store_true", help="skip workload 9 (application services)")
    ap.add_argument("--no-sliding", action="store_true", help="skip workload 10 (sliding sync)")
    ap.add_argument("--no-fanout", action="store_true", help="skip workload 11 (fan-out to long-polling receivers)")
    args = ap.parse_args()
    if (args.only == "push" and args.no_push) or (args.only == "appservice" and args.no_appservice) \
            or (args.only == "sliding" and args.no_sliding):
        raise SystemExit(f"--only {args.only} and --no-{args.only} exclude each other")
    binary = Path(args.moss).resolve()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(TITLES)
    if unknown or len(set(servers)) != len(servers):
        raise SystemExit(f"--servers: each of {list(TITLES)} at most once")
    if "moss" in servers and not binary.exists():
        raise SystemExit(f"{binary} does not exist: build it (cargo build --release) or pass --moss")
    if args.pg_env and not Path(args.pg_env).exists():
        raise SystemExit(f"{args.pg_env} does not exist")
    sizes = sorted({media6.parse_size(x) for x in args.media_sizes.split(",")}) if args.media_sizes \
        else (media6.QUICK_SIZES if args.quick else media6.FULL_SIZES)
    stores = [x.strip() for x in args.media_stores.split(",")] if args.media_stores \
        else (media6.QUICK_MOSS_STORES if args.quick else media6.MOSS_STORES)
    if set(stores) - set(media6.MOSS_STORES):
        raise SystemExit(f"--media-stores: from {media6.MOSS_STORES}")
    media_synapse = next((n for n in servers if n.startswith("synapse")), None)
    # SIGTERM (a CI timeout, say) cancels the run like ^C does, so that the servers get stopped.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, asyncio.current_task().cancel)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="moss-bench-"))
    # The PostgreSQL cluster runs as the postgres user (when we are root), which must reach its
    # directory: /tmp rather than $TMPDIR, which may sit in a private home; short for the socket path.
    pg_dir = Path(tempfile.mkdtemp(prefix="moss-bench-pg-", dir="/tmp" if Path("/tmp").is_dir() else None))
    results: dict = {}
    pg: Postgres | None = None
    pg_version = None
    bench6 = None if args.no_media or args.only else MediaBench(work, args.quick, sizes, stores)
    receiver = None if args.no_push or args.only not in (None, "push") \
        else push8.Receiver(work / "push-receiver", free_port(), free_port())
    service = None if args.no_appservice or args.only not in (None, "appservice") \
        else as9.Receiver(work / "appservice", free_port(), free_port())
    Synapse.appservice = service
    sliding = not args.no_sliding and args.only in (None, "sliding")
    try:
        if service:
            await service.start()  # before any server: they read its registration at start
        if receiver:
            await receiver.start()
            print(f"push receiver up: {await receiver.measure_cpu(args.quick):.0f} µs of CPU per push", flush=True)
        for name in servers:
            push_notes, as_notes = [], []
            if name == "moss":
                server: Server = Moss(work / "moss", binary)
            elif name in ("moss-postgres", "moss-postgres-2"):
                if pg is None:
                    pg = Postgres(read_env_file(Path(args.pg_env)), owned=False) if args.pg_env \
                        else Postgres.start(pg_dir)
                    pg_version = versions(pg).get("postgresql")
                url = create_database(pg, name.replace("-", "_"))
                if name == "moss-postgres":
                    server = Moss(work / name, binary, {"MOSS_DATABASE__URL": url})
                    server.name = name
                    server.pg = pg
                else:
                    server = MossPair(work / name, binary, url)
                    server.pg = pg
            elif name == "synapse-sqlite":
                server = Synapse(work / "synapse-sqlite")
            else:
                if pg is None:
                    pg = Postgres(read_env_file(Path(args.pg_env)), owned=False) if args.pg_env \
                        else Postgres.start(pg_dir)
                    pg_version = versions(pg).get("postgresql")
                server = SynapsePg(work / "synapse-postgres", pg)
            server.work.mkdir(parents=True, exist_ok=True)
            # Workloads 8-10 (push, bridges, sliding sync) compare moss on SQLite with Synapse;
            # the PostgreSQL rows of moss run the core workloads (docs/benchmarks.md).
            extras = not name.startswith("moss-postgres")
            if receiver and name == "moss":  # workload 8: moss.toml with [push], if the binary knows it
                why_not = push8.configure_moss(binary, server.work, server.command()[1])
                if why_not:
                    push_notes.append(why_not)
                    print(f"push: {why_not}", flush=True)
            if service and extras and isinstance(server, Moss):  # workload 9: [appservice] in moss.toml, if the binary knows it
                extra, why_not = as9.configure_moss(binary, server.work, server.command()[1], service)
                server.extra_env.update(extra)
                if why_not:
                    as_notes.append(why_not)
                    print(f"appservice: {why_not}", flush=True)
            try:
                await server.start()
                print(f"running {server.name} …", flush=True)
                results[server.name] = {} if args.only else await workloads(server, args.quick)
                if not args.only and not args.no_fanout:
                    print(f"running fan-out: {server.name} …", flush=True)
                    results[server.name]["fanout"] = await fo11.workload(server, args.quick, Client)
                if receiver and extras:
                    print(f"running push: {server.name} …", flush=True)
                    results[server.name]["push"] = await push8.workload(server, args.quick, receiver, Client, push_notes)
                if service and extras and as_notes:  # the binary refused the registration: say so in the report
                    results[server.name]["appservice"] = {"notes": as_notes}
                elif service and extras:
                    print(f"running appservice: {server.name} …", flush=True)
                    results[server.name]["appservice"] = await as9.workload(server, args.quick, service, Client, as_notes)
                if sliding and extras:
                    print(f"running sliding sync: {server.name} …", flush=True)
                    pid = server.proc.pid
                    results[server.name]["sliding"] = await ss10.workload(
                        server, args.quick, Client, lambda: rss_kib(pid, "VmRSS") / 1024)
            finally:
                server.stop()
            if bench6 and name == "moss":
                print("running media: references and moss …", flush=True)
                await bench6.moss_rows(binary)
            if bench6 and name == media_synapse:
                print(f"running media: {server.name} …", flush=True)
                await bench6.synapse_rows(server)
            if name == PRIMARY and pg is not None:
                pg.stop()  # right after its row: the other rows run without PostgreSQL beside them
                pg = None
    finally:
        if receiver:
            receiver.stop()
        if service:
            service.stop()
        if bench6:
            bench6.stop()
        if pg is not None:
            pg.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(pg_dir, ignore_errors=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    vers = versions()
    if pg_version:
        vers["postgresql"] = pg_version
    meta = {"when": when, "mode": "quick" if args.quick else "full", "machine": machine(), "versions": vers,
            "moss_binary": binary.name, "duration_s": round(time.perf_counter() - started, 1)}
    media = bench6.result if bench6 else None
    meta["targets"] = [] if args.only else targets(results) + media6.targets(media)
    meta["push_targets"] = push8.targets(results) if receiver else []
    meta["appservice_targets"] = as9.targets(results) if service else []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        import plots
        made = [
            ("Message send latency (workload 1)", plots.latency(results, TITLES, "seq_send", "sequential send", out,
                                                                f"{when}-send-latency.png")),
            ("Delivery latency (workload 3)", plots.latency(results, TITLES, "delivery", "delivery", out,
                                                            f"{when}-delivery-latency.png")),
            ("Media throughput and peak RSS by file size (workload 6)",
             plots.media_throughput(media, out, f"{when}-media.png") if media else None),
        ]
        meta["plots"] = [(title, name) for title, name in made if name]
    except Exception as e:  # noqa: BLE001 - the numbers are still worth writing
        meta["plots_error"] = f"{type(e).__name__}: {e}"
    meta["duration_s"] = round(time.perf_counter() - started, 1)
    (out / f"{when}.json").write_text(json.dumps({"meta": meta, "results": results, "media": media}, indent=2))
    md = report(results, meta, media)
    (out / f"{when}.md").write_text(md)
    if not args.quick and not args.only:
        (out / "latest.md").write_text(md)
    print(md)
    print(f"({meta['duration_s']} s)")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        raise SystemExit("bench/run.py: cancelled (SIGTERM); servers stopped")
