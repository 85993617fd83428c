"""Side-by-side benchmark: moss against Synapse on this machine, same workloads, one after the other.

Usage (from the repo root, after scripts/setup-synapse.sh and scripts/setup-postgres.sh):
    .venv-synapse/bin/python bench/run.py [--quick] [--moss target/release/moss] [--out DIR]
        [--pg-env DIR/env] [--servers moss,synapse-postgres,synapse-sqlite]

Rows: moss, Synapse on PostgreSQL (the fair comparison: the issue 5 targets are against it) and
Synapse on SQLite. The harness starts a throwaway PostgreSQL cluster with scripts/postgres-start.sh
and stops it at the end, unless --pg-env names the env file of a running one.

Writes <out>/<UTC time>.json and .md (and latest.md for full runs). --quick shrinks every workload
so the whole run takes well under three minutes; CI runs it only to keep the harness working.
Messaging, sync, login and memory workloads; the media workloads and the plots are still to come.
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

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of a process (scans /proc: /proc/PID/task/PID/children is not always there)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


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
        async with aiohttp.ClientSession() as http:
            for _ in range(3000):
                try:
                    async with http.get(f"{self.base}/_matrix/client/versions") as r:
                        if r.status == 200:
                            self.cold_start_s = time.perf_counter() - started
                            return
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None:
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

    def __init__(self, work: Path, binary: Path):
        super().__init__(work)
        self.binary = binary

    def command(self):
        env = {
            "MOSS_DATA_DIR": str(self.work / "data"),
            "MOSS_HTTP__BIND": f"127.0.0.1:{self.port}",
            "MOSS_REGISTRATION": "open",
            "MOSS_RATE_LIMITS__ENABLED": "false",
            "MOSS_LOG__LEVEL": "warn",
        }
        return [str(self.binary), "serve"], env


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
            cfg.write_text(yaml.safe_dump(conf))
        return [sys.executable, "-m", "synapse.app.homeserver", "-c", str(cfg)], {}


class SynapsePg(Synapse):
    name = "synapse-postgres"

    def __init__(self, work: Path, pg: Postgres):
        super().__init__(work)
        self.pg = pg

    def database(self) -> dict:
        e = self.pg.env
        return {"name": "psycopg2", "args": {
            "user": e["MOSS_TEST_PG_USER"], "password": e["MOSS_TEST_PG_PASSWORD"], "database": e["MOSS_TEST_PG_DB"],
            "host": e["MOSS_TEST_PG_HOST"], "port": int(e["MOSS_TEST_PG_PORT"]),
            # Synapse's documented example pool; 10 connections is plenty for 8 concurrent senders.
            "cp_min": 5, "cp_max": 10}}

    async def start(self) -> None:
        self.pg.reset()
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
        out["seq_send"] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "events_per_s": n_seq / (time.perf_counter() - t0)}

        # 2. concurrent send throughput
        room = await alice.create_room()
        senders = [await Client(http, server.base).register(f"u{i}{tag}") for i in range(users)]
        for c in senders:
            await c.join(room)

        async def burst(c: Client) -> None:
            for i in range(per_user):
                await c.send(room, f"c {i}")

        t0 = time.perf_counter()
        await asyncio.gather(*(burst(c) for c in senders))
        out["concurrent_send"] = {"events_per_s": users * per_user / (time.perf_counter() - t0), "users": users, "per_user": per_user}

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
            lat.append((time.perf_counter() - s) * 1000)
            since = res["next_batch"]
        out["delivery"] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}

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

TITLES = {"moss": "moss", "synapse-postgres": "Synapse+PostgreSQL", "synapse-sqlite": "Synapse+SQLite"}
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


def report(results: dict, meta: dict) -> str:
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
             " · ".join(([f"moss `{meta['moss_binary']}`"] if "moss" in results else []) + stack), "",
             "| " + " | ".join(["workload", *(TITLES[n] for n in names), *(f"moss / {TITLES[o]}" for o in others)]) + " |",
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
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    lines += ["", "Ratios are oriented so that above 1× means moss is better; moss / Synapse+PostgreSQL is the "
              "fair comparison. Memory: moss and Synapse are one process each (RSS; peak = VmHWM); PostgreSQL is "
              "a postmaster plus a backend per pooled connection, sampled every 0.25 s. Its RSS summed over "
              "processes counts shared buffers and libraries once per process; PSS splits shared pages between "
              "them, so the \"incl. database\" rows add PostgreSQL's PSS to the server's RSS.", ""]
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
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--moss", default=str(REPO / "target/release/moss"))
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    ap.add_argument("--pg-env", help="env file of a running cluster from scripts/postgres-start.sh "
                                     "(default: start a throwaway one, and stop it after its row)")
    ap.add_argument("--servers", default=",".join(TITLES), help="comma-separated rows to run, in this order")
    args = ap.parse_args()
    binary = Path(args.moss).resolve()
    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(servers) - set(TITLES)
    if unknown or len(set(servers)) != len(servers):
        raise SystemExit(f"--servers: each of {list(TITLES)} at most once")
    if "moss" in servers and not binary.exists():
        raise SystemExit(f"{binary} does not exist: build it (cargo build --release) or pass --moss")
    if args.pg_env and not Path(args.pg_env).exists():
        raise SystemExit(f"{args.pg_env} does not exist")
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
    try:
        for name in servers:
            if name == "moss":
                server: Server = Moss(work / "moss", binary)
            elif name == "synapse-sqlite":
                server = Synapse(work / "synapse-sqlite")
            else:
                if pg is None:
                    pg = Postgres(read_env_file(Path(args.pg_env)), owned=False) if args.pg_env \
                        else Postgres.start(pg_dir)
                    pg_version = versions(pg).get("postgresql")
                server = SynapsePg(work / "synapse-postgres", pg)
            server.work.mkdir(parents=True)
            try:
                await server.start()
                print(f"running {server.name} …", flush=True)
                results[server.name] = await workloads(server, args.quick)
            finally:
                server.stop()
            if name == PRIMARY and pg is not None:
                pg.stop()  # right after its row: the other rows run without PostgreSQL beside them
                pg = None
    finally:
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
    meta["targets"] = targets(results)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{when}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = report(results, meta)
    (out / f"{when}.md").write_text(md)
    if not args.quick:
        (out / "latest.md").write_text(md)
    print(md)
    print(f"({meta['duration_s']} s)")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        raise SystemExit("bench/run.py: cancelled (SIGTERM); servers stopped")
