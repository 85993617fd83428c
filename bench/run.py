"""Side-by-side benchmark: moss against Synapse on this machine, same workloads, in alternation.

Usage (from the repo root, after scripts/setup-synapse.sh):
    .venv-synapse/bin/python bench/run.py [--quick] [--moss target/release/moss]

Writes bench/results/<UTC time>.json and .md (and latest.md). --quick shrinks every workload so
the whole run takes a couple of minutes; CI runs it only to keep the harness working.
First slice of issue 5: messaging, sync, login and memory workloads against moss and Synapse on
SQLite. Synapse on PostgreSQL, the media workloads and the plots are still to come.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import shutil
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


class Synapse(Server):
    name = "synapse-sqlite"

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
            conf["database"] = {"name": "sqlite3", "args": {"database": str(self.work / "homeserver.db")}}
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
    return out


def machine() -> dict:
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    synapse_version = subprocess.run([sys.executable, "-c", "import synapse; print(synapse.__version__)"],
                                     capture_output=True, text=True).stdout.strip()
    return {"cores": os.cpu_count(), "memory_gib": round(int(mem) / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version(), "synapse": synapse_version}


ROWS = [
    ("sequential send p50 (ms)", "seq_send", "p50_ms", "lower"),
    ("sequential send p99 (ms)", "seq_send", "p99_ms", "lower"),
    ("sequential send (events/s)", "seq_send", "events_per_s", "higher"),
    ("concurrent send (events/s)", "concurrent_send", "events_per_s", "higher"),
    ("delivery p50 (ms)", "delivery", "p50_ms", "lower"),
    ("delivery p99 (ms)", "delivery", "p99_ms", "lower"),
    ("initial sync (ms)", "initial_sync", "median_ms", "lower"),
    ("no-op sync p50 (ms)", "noop_sync", "p50_ms", "lower"),
    ("logins/s", "login", "per_s", "higher"),
    ("create room + join p50 (ms)", "create_and_join", "p50_ms", "lower"),
    ("cold start (s)", None, "cold_start_s", "lower"),
    ("idle RSS (MiB)", None, "idle_rss_mib", "lower"),
    ("peak RSS (MiB)", None, "peak_rss_mib", "lower"),
]


def report(results: dict, meta: dict) -> str:
    names = list(results)
    lines = [f"# moss vs Synapse ({meta['mode']})", "",
             f"{meta['when']} · {meta['machine']['cores']} cores · {meta['machine']['memory_gib']} GiB · "
             f"moss {meta['moss_binary']} · Synapse {meta['machine']['synapse']} (SQLite)", "",
             "| workload | " + " | ".join(names) + " | moss / synapse |", "|" + "---|" * (len(names) + 2)]
    for label, section, key, better in ROWS:
        vals = [(results[n].get(section, {}) if section else results[n]).get(key) for n in names]
        cells = [f"{v:.1f}" if isinstance(v, (int, float)) else "-" for v in vals]
        ratio = "-"
        if len(vals) == 2 and all(isinstance(v, (int, float)) and v for v in vals):
            r = vals[0] / vals[1] if better == "higher" else vals[1] / vals[0]
            ratio = f"{r:.1f}× {'better' if r >= 1 else 'worse'}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    lines += ["", "Ratios are oriented so that above 1× means moss is better.", ""]
    return "\n".join(lines)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--moss", default=str(REPO / "target/release/moss"))
    ap.add_argument("--out", default=str(REPO / "bench/results"))
    args = ap.parse_args()
    binary = Path(args.moss).resolve()
    if not binary.exists():
        raise SystemExit(f"{binary} does not exist: build it (cargo build --release) or pass --moss")
    work = Path(tempfile.mkdtemp(prefix="moss-bench-"))
    results = {}
    try:
        for server in [Moss(work / "moss", binary), Synapse(work / "synapse")]:
            server.work.mkdir(parents=True)
            await server.start()
            try:
                print(f"running {server.name} …", flush=True)
                results[server.name] = await workloads(server, args.quick)
            finally:
                server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H%M%SZ")
    meta = {"when": when, "mode": "quick" if args.quick else "full", "machine": machine(), "moss_binary": binary.name}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{when}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    md = report(results, meta)
    (out / f"{when}.md").write_text(md)
    if not args.quick:
        (out / "latest.md").write_text(md)
    print(md)


if __name__ == "__main__":
    asyncio.run(main())
