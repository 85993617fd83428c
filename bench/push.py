"""Workload 8, push: one message into a room of N members, each with an HTTP pusher, must reach the
push gateway N-1 times (every member but the sender). bench/run.py runs it on each row after
workloads 1-5, on the same server process.

The gateway is the bench's own: this file run as `python bench/push.py receiver NOTIFY_PORT
CONTROL_PORT` is a Push Gateway API receiver on 127.0.0.1, a process of its own so that the
bench's client does not share its event loop. `POST /_matrix/push/v1/notify` (plain asyncio
HTTP/1.1, see below) checks the body's shape, notes the arrival time (CLOCK_MONOTONIC,
comparable across processes) per (event_id, pushkey) and answers `{"rejected": []}`. The control
port (aiohttp, `/_bench/*`) lets the bench wait for an event's pushes, read stats and reset.

Per row: a sender and N-1 members (moss: `/register`; Synapse: the admin API, see below) in one
public room, then
  A. M sequential sends into that room without pushers (send latency "without");
  B. an HTTP pusher per member, the sender included (app_id "bench", a pushkey per user,
     data.url = the receiver), then M sequential sends, each followed by a wait for its N-1
     pushes: send latency "with", and the fan-out time from the start of the send request to
     the last push's arrival; pushes/s = (N-1) / fan-out time.
Both phases pause PAUSE_S between sends. Missing pushes (never arrived), late ones (after the
wait gave up), duplicates, pushes for the sender or for events not sent in phase B, and bodies
that break the Push Gateway API are counted.

moss gets a moss.toml with `[push] allow_http = true, ip_range_allowlist = ["127.0.0.0/8"]` when
its binary knows that section (checked with `moss config check`); Synapse gets
`ip_range_whitelist: ["127.0.0.0/8"]` (its pushers use the IP-blocklisting HTTP client, whose
default blocklist includes loopback). Both servers keep every other push setting at its default.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import aiohttp

FULL = {"members": 500, "messages": 20}
QUICK = {"members": 50, "messages": 5}
PAUSE_S = 0.25          # between sends, in both phases
FIRST_PUSH_TIMEOUT_S = (15, 30)  # quick, full: no push at all for a message by then: the server does not push
STALL_TIMEOUT_S = 10    # no new push for this long: stop waiting for that message's missing ones
MESSAGE_TIMEOUT_S = 120
GRACE_S = 2             # after phase B, for late pushes before the final count
CEILING_PUSHES = (1000, 5000)  # quick, full: calibration of the receiver's CPU per push
# "Within noise": the send p50 with pushers may exceed the p50 without by this much.
NOISE_RATIO, NOISE_MS = 0.25, 2.0
TARGET_PUSHES_PER_S = 1000
APP_ID = "bench"
NOTIFY_PATH = "/_matrix/push/v1/notify"

MOSS_PUSH_TOML = """\
# Written by bench/push.py: pushes go to the bench's receiver on 127.0.0.1 over plain HTTP.
[push]
allow_http = true
ip_range_allowlist = ["127.0.0.0/8"]
"""


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


# ---- server configuration hooks (called by bench/run.py) ----

def configure_synapse(conf: dict) -> None:
    """homeserver.yaml: pushers may reach the receiver on loopback. Everything under `push:`
    (include_content, group_unread_count_by_room, jitter_delay) stays at Synapse's defaults."""
    conf["ip_range_whitelist"] = ["127.0.0.0/8"]


def configure_moss(binary: Path, work: Path, env: dict) -> str | None:
    """Writes work/moss.toml with the [push] section if this moss binary accepts it (moss reads
    ./moss.toml from its working directory). Returns None if it does, else why not."""
    path = work / "moss.toml"
    path.write_text(MOSS_PUSH_TOML)
    res = subprocess.run([str(binary), "config", "check"], cwd=work, env={**os.environ, **env},
                         capture_output=True, text=True)
    if res.returncode == 0:
        return None
    path.unlink()
    text = (res.stderr or res.stdout).strip()
    if "unknown field `push`" in text:
        return "this moss binary has no [push] configuration (push delivery not built in)"
    return f"moss config check refused the [push] section: {text.splitlines()[-1] if text else res.returncode}"


# ---- the receiver: a Push Gateway API endpoint in a process of its own ----
#
# The notify path is a minimal HTTP/1.1 server on asyncio's protocol API (keep-alive,
# Content-Length or chunked bodies): aiohttp's web server costs ≈ 1.7× the CPU per request, and
# on two cores that CPU is taken from the server being measured. The control endpoints
# (/_bench/*) are aiohttp, on a second port.

class Gateway:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.arrivals: dict[str, dict[str, float]] = {}  # event_id -> pushkey -> arrival (monotonic s)
        self.calls = 0
        self.duplicates = 0
        self.badge_only = 0
        self.malformed = 0
        self.problems: list[str] = []
        self.sample: dict | None = None
        self.waiters: dict[str, list[tuple[int, asyncio.Future]]] = {}
        self.connections = 0  # accepted since the reset
        self.open_now = getattr(self, "open_now", 0)
        self.open_max = self.open_now  # most connections open at once since the reset

    def opened(self) -> None:
        self.connections += 1
        self.open_now += 1
        self.open_max = max(self.open_max, self.open_now)

    def problem(self, what: str) -> None:
        self.malformed += 1
        if len(self.problems) < 10:
            self.problems.append(what)

    def notify(self, method: str, path: str, body: bytes, now: float) -> tuple[int, dict]:
        """One gateway call: checks the body against the Push Gateway API and notes its arrival."""
        if path.split("?", 1)[0] != NOTIFY_PATH:
            return 404, {"errcode": "M_UNRECOGNIZED", "error": f"no {path}"}
        if method != "POST":
            return 405, {"errcode": "M_UNRECOGNIZED", "error": f"{method} {path}"}
        self.calls += 1
        try:
            doc = json.loads(body)
            note = doc["notification"]
            devices = note["devices"]
            if not isinstance(devices, list) or not devices:
                raise ValueError("devices must be a non-empty list")
            for d in devices:
                if not (isinstance(d.get("app_id"), str) and isinstance(d.get("pushkey"), str)):
                    raise ValueError("a device without app_id or pushkey")
                if "data" in d and not isinstance(d["data"], dict):
                    raise ValueError("device data must be an object")
            counts = note.get("counts")
            if counts is not None and not isinstance(counts, dict):
                raise ValueError("counts must be an object")
            if note.get("prio", "high") not in ("high", "low"):
                raise ValueError(f"prio {note.get('prio')!r}")
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.problem(f"{type(e).__name__}: {e}")
            return 400, {"errcode": "M_BAD_JSON", "error": str(e)}
        event_id = note.get("event_id")
        if not event_id:
            self.badge_only += 1  # a badge update (Synapse sends them on read receipts)
            return 200, {"rejected": []}
        if not isinstance(note.get("room_id"), str):
            self.problem("event notification without room_id")
        if self.sample is None:
            self.sample = doc
        got = self.arrivals.setdefault(event_id, {})
        for d in devices:
            if d["pushkey"] in got:
                self.duplicates += 1
            else:
                got[d["pushkey"]] = now
        for n, fut in self.waiters.get(event_id, []):
            if len(got) >= n and not fut.done():
                fut.set_result(None)
        return 200, {"rejected": []}

    async def wait(self, request):
        from aiohttp import web
        q = request.query
        event_id, n, timeout = q["event_id"], int(q["n"]), float(q["timeout"])
        if len(self.arrivals.get(event_id, {})) < n:
            fut = asyncio.get_running_loop().create_future()
            entry = (n, fut)
            self.waiters.setdefault(event_id, []).append(entry)
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                pass
            finally:
                self.waiters[event_id].remove(entry)
        got = self.arrivals.get(event_id, {})
        return web.json_response({"count": len(got), "arrivals": got})

    async def stats(self, request):
        from aiohttp import web
        return web.json_response({
            "calls": self.calls, "duplicates": self.duplicates, "badge_only": self.badge_only,
            "malformed": self.malformed, "problems": self.problems, "sample": self.sample,
            "connections": self.connections, "open_max": self.open_max, "open_now": self.open_now,
            "events": {e: len(a) for e, a in self.arrivals.items()}})

    async def do_reset(self, request):
        from aiohttp import web
        self.reset()
        return web.json_response({})


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large"}
MAX_HEAD, MAX_BODY = 64 * 1024, 1 << 20


class NotifyProtocol(asyncio.Protocol):
    """HTTP/1.1 for the notify path: requests in order on each connection, kept alive unless the
    client says otherwise."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport  # asyncio sets TCP_NODELAY on TCP transports
        self.gateway.opened()

    def connection_lost(self, exc) -> None:
        self.gateway.open_now -= 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport and not self.transport.is_closing():
            request = self.parse()
            if request is None:
                return
            method, path, body, keep_alive = request
            try:
                status, doc = self.gateway.notify(method, path, body, time.monotonic())
            except Exception as e:  # noqa: BLE001 - answer, never drop the connection silently
                status, doc = 400, {"errcode": "M_UNKNOWN", "error": f"{type(e).__name__}: {e}"}
            self.respond(status, doc, keep_alive)

    def parse(self) -> tuple[str, str, bytes, bool] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.respond(413, {"errcode": "M_TOO_LARGE"}, False)
            return None
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        method, path, version = (lines[0].split(" ", 2) + ["", ""])[:3]
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, pos = bytearray(), start
            while True:
                eol = self.buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                size = int(bytes(self.buf[pos:eol]).split(b";")[0], 16)
                if size == 0:
                    trailer_end = self.buf.find(b"\r\n\r\n", eol)
                    if trailer_end < 0 and not self.buf.startswith(b"\r\n", eol + 2):
                        return None
                    consumed = eol + 4 if self.buf.startswith(b"\r\n", eol + 2) else trailer_end + 4
                    break
                if len(self.buf) < eol + 2 + size + 2:
                    return None
                body += self.buf[eol + 2:eol + 2 + size]
                pos = eol + 2 + size + 2
            body = bytes(body)
        else:
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY:
                self.respond(413, {"errcode": "M_TOO_LARGE"}, False)
                return None
            if len(self.buf) < start + length:
                return None
            body, consumed = bytes(self.buf[start:start + length]), start + length
        del self.buf[:consumed]
        connection = headers.get("connection", "").lower()
        keep_alive = connection != "close" and (version != "HTTP/1.0" or connection == "keep-alive")
        return method, path, body, keep_alive

    def respond(self, status: int, doc: dict, keep_alive: bool) -> None:
        payload = json.dumps(doc).encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n" + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
        self.transport.write(head.encode() + payload)
        if not keep_alive:
            self.transport.close()


async def serve(notify_port: int, control_port: int) -> None:
    from aiohttp import web
    gw = Gateway()
    loop = asyncio.get_running_loop()
    # A deep accept queue: a server may open hundreds of connections at once (Synapse opens one per
    # push in flight); the default 100 would drop SYNs and add 1 s retransmits to the fan-out.
    await loop.create_server(lambda: NotifyProtocol(gw), "127.0.0.1", notify_port, backlog=2048)
    app = web.Application()
    app.router.add_get("/_bench/wait", gw.wait)
    app.router.add_get("/_bench/stats", gw.stats)
    app.router.add_post("/_bench/reset", gw.do_reset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    await asyncio.Event().wait()


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process, in seconds (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pids(server) -> list[int]:
    """The server process, and for Synapse+PostgreSQL the cluster's processes (postmaster, backends)."""
    pg = getattr(server, "pg", None)
    return [server.proc.pid, *(pg.pids() if pg else [])]


class Receiver:
    """The receiver process, seen from the bench."""

    def __init__(self, work: Path, notify_port: int, control_port: int):
        self.work = work
        self.url = f"http://127.0.0.1:{notify_port}{NOTIFY_PATH}"
        self.control = f"http://127.0.0.1:{control_port}"
        self.ports = (notify_port, control_port)
        self.proc: subprocess.Popen | None = None
        self.cpu_per_push_us: float | None = None

    async def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        log = open(self.work / "receiver.log", "w")
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "receiver", *map(str, self.ports)],
                                     stdout=log, stderr=log)
        async with aiohttp.ClientSession() as http:
            for _ in range(1000):
                try:
                    async with http.get(self.control + "/_bench/stats") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None:
                    raise SystemExit(f"push receiver exited; see {self.work / 'receiver.log'}")
                await asyncio.sleep(0.02)
        raise SystemExit("push receiver did not start")

    def cpu_s(self) -> float:
        return cpu_s(self.proc.pid)

    async def _get(self, http: aiohttp.ClientSession, path: str, **params) -> dict:
        async with http.get(self.control + path, params={k: str(v) for k, v in params.items()}) as r:
            r.raise_for_status()
            return await r.json()

    async def wait(self, http, event_id: str, n: int, timeout: float) -> dict:
        return await self._get(http, "/_bench/wait", event_id=event_id, n=n, timeout=timeout)

    async def stats(self, http) -> dict:
        return await self._get(http, "/_bench/stats")

    async def reset(self, http) -> None:
        async with http.post(self.control + "/_bench/reset") as r:
            r.raise_for_status()

    async def measure_cpu(self, quick: bool) -> float:
        """The receiver's CPU time per push (µs), from Synapse-shaped bodies sent by an aiohttp client
        in the bench process on 100 connections. One core does 1e6 / that pushes/s."""
        count = CEILING_PUSHES[0 if quick else 1]
        event_id = f"$ceiling-{uuid.uuid4().hex}"
        conn = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=conn) as http:
            sem = asyncio.Semaphore(100)

            async def one(i: int) -> None:
                body = {"notification": {
                    "id": event_id, "event_id": event_id, "room_id": "!bench:localhost", "type": "m.room.message",
                    "sender": "@sender:localhost", "sender_display_name": "sender", "room_name": None,
                    "content": {"msgtype": "m.text", "body": "fan-out 0"}, "prio": "high",
                    "counts": {"unread": 1},
                    "devices": [{"app_id": APP_ID, "pushkey": f"ceiling-{i}", "pushkey_ts": 0, "data": {}}]}}
                async with sem:
                    async with http.post(self.url, json=body) as r:
                        if r.status != 200:
                            raise RuntimeError(f"push receiver: {r.status} {await r.text()}")
                        await r.read()

            await asyncio.gather(*(one(i) for i in range(min(200, count))))  # open the connections
            await self.reset(http)
            before = self.cpu_s()
            await asyncio.gather(*(one(i) for i in range(count)))
            used = self.cpu_s() - before
            got = (await self.stats(http))["events"].get(event_id, 0)
            await self.reset(http)
        if got != count:
            raise SystemExit(f"push receiver: {got} of {count} calibration pushes recorded")
        self.cpu_per_push_us = max(used, 0.01) / count * 1e6  # CPU ticks are 10 ms
        return self.cpu_per_push_us

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


# ---- the workload ----

async def limited(n: int, coros) -> list:
    sem = asyncio.Semaphore(n)

    async def run(c):
        async with sem:
            return await c

    return await asyncio.gather(*(run(c) for c in coros))


def quote(s: str) -> str:
    return urllib.parse.quote(s, safe="")


async def synapse_admin(server, http, Client, tag: str):
    """An admin via Synapse's shared-secret registration (registration_shared_secret is in the
    generated homeserver.yaml)."""
    import yaml
    secret = yaml.safe_load((server.work / "homeserver.yaml").read_text())["registration_shared_secret"]
    name, password = f"padmin{tag}", "bench-password-1"
    admin = Client(http, server.base)
    nonce = (await admin.call("GET", "/_synapse/admin/v1/register"))["nonce"]
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    for part in (nonce, name, password):
        mac.update(part.encode() + b"\x00")
    mac.update(b"admin")
    data = await admin.call("POST", "/_synapse/admin/v1/register", {
        "nonce": nonce, "username": name, "password": password, "admin": True, "mac": mac.hexdigest()})
    admin.token, admin.user_id = data["access_token"], data["user_id"]
    return admin


async def make_members(server, http, Client, count: int, tag: str, server_name: str) -> list:
    """count users with access tokens. moss: open registration (an argon2 hash each). Synapse: the
    admin API creates each user without a password and logs in as it, since /register would cost a
    bcrypt hash (12 rounds) per user. Setup only: none of it is measured."""
    if not server.name.startswith("synapse"):
        return await limited(4, (Client(http, server.base).register(f"p{i}x{tag}") for i in range(count)))
    admin = await synapse_admin(server, http, Client, tag)

    async def one(i: int):
        uid = f"@p{i}x{tag}:{server_name}"
        async with http.put(f"{server.base}/_synapse/admin/v2/users/{quote(uid)}", json={"displayname": f"p{i}"},
                            headers={"Authorization": f"Bearer {admin.token}"}) as r:
            if r.status != 201:  # 201 Created: Client.call wants 200
                raise RuntimeError(f"creating {uid}: {r.status} {await r.text()}")
        token = (await admin.call("POST", f"/_synapse/admin/v1/users/{quote(uid)}/login", {}))["access_token"]
        c = Client(http, server.base)
        c.token, c.user_id = token, uid
        return c

    return await limited(8, (one(i) for i in range(count)))


async def wait_fanout(receiver: Receiver, http, event_id: str, n: int, first_timeout: float) -> dict:
    """Waits until the receiver has n pushes for event_id, no push came for first_timeout (none yet)
    or STALL_TIMEOUT_S (some), or MESSAGE_TIMEOUT_S passed. Returns the arrivals."""
    started = last_change = time.monotonic()
    last = 0
    while True:
        res = await receiver.wait(http, event_id, n, 1.0)
        now = time.monotonic()
        if res["count"] >= n:
            return res
        if res["count"] != last:
            last, last_change = res["count"], now
        if now - last_change > (first_timeout if last == 0 else STALL_TIMEOUT_S) or now - started > MESSAGE_TIMEOUT_S:
            return res


async def workload(server, quick: bool, receiver: Receiver, Client, notes: list[str] | None = None) -> dict:
    """Workload 8 on a running server. Client is bench/run.py's client class."""
    size = QUICK if quick else FULL
    n, m = size["members"], size["messages"]
    first_timeout = FIRST_PUSH_TIMEOUT_S[0 if quick else 1]
    out: dict = {"members": n, "messages": m, "expected_per_message": n - 1, "notes": list(notes or []),
                 "receiver_cpu_per_push_us": receiver.cpu_per_push_us}
    setup: dict = {}
    conn = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=300)) as http:
        await receiver.reset(http)
        tag = uuid.uuid4().hex[:6]
        t = time.perf_counter()
        sender = await Client(http, server.base).register(f"psender{tag}")
        server_name = sender.user_id.split(":", 1)[1]
        members = await make_members(server, http, Client, n - 1, tag, server_name)
        setup["users_s"] = time.perf_counter() - t
        t = time.perf_counter()
        # A named room, as big rooms are: otherwise Synapse computes "X and 498 others" per push.
        room = await sender.create_room(name="push bench")
        await limited(8, (c.join(room) for c in members))
        joined = await sender.call("GET", f"/_matrix/client/v3/rooms/{quote(room)}/joined_members")
        if len(joined["joined"]) != n:
            raise RuntimeError(f"push workload: {len(joined['joined'])} joined, expected {n}")
        setup["joins_s"] = time.perf_counter() - t

        # A. sends without pushers
        without = []
        for i in range(m):
            s = time.perf_counter()
            await sender.send(room, f"no pushers {i}")
            without.append((time.perf_counter() - s) * 1000)
            await asyncio.sleep(PAUSE_S)

        # B. a pusher per member, the sender's included (it must get no push for its own messages)
        await receiver.reset(http)  # counts from here: connections, and pushes for earlier events
        t = time.perf_counter()
        pushkeys = {}
        everyone = [sender, *members]

        async def set_pusher(i: int, c) -> None:
            pushkeys[c.user_id] = f"pk{i}-{tag}"
            await c.call("POST", "/_matrix/client/v3/pushers/set", {
                "kind": "http", "app_id": APP_ID, "pushkey": pushkeys[c.user_id], "app_display_name": "bench",
                "device_display_name": f"bench {i}", "lang": "en", "data": {"url": receiver.url}})

        await limited(8, (set_pusher(i, c) for i, c in enumerate(everyone)))
        listed = await members[0].call("GET", "/_matrix/client/v3/pushers")
        if [p.get("pushkey") for p in listed.get("pushers", [])] != [pushkeys[members[0].user_id]]:
            raise RuntimeError(f"push workload: GET /pushers answered {listed}")
        setup["pushers_s"] = time.perf_counter() - t
        await asyncio.sleep(1)
        sender_key = pushkeys[sender.user_id]
        expected = set(pushkeys.values()) - {sender_key}

        with_ms, fanout, first_push, per_msg, event_ids = [], [], [], [], []
        pushing = True
        pids = server_pids(server)
        cpu0, receiver_cpu0 = sum(map(cpu_s, pids)), receiver.cpu_s()
        for i in range(m):
            t0 = time.monotonic()
            event_id = await sender.send(room, f"fan-out {i}")
            with_ms.append((time.monotonic() - t0) * 1000)
            event_ids.append(event_id)
            if pushing:
                res = await wait_fanout(receiver, http, event_id, n - 1, first_timeout)
                times = [v for k, v in res["arrivals"].items() if k in expected]
                got = len(times)
                per_msg.append({"event_id": event_id, "send_ms": with_ms[-1], "pushes": got,
                                "fanout_ms": (max(times) - t0) * 1000 if times else None,
                                "first_push_ms": (min(times) - t0) * 1000 if times else None})
                if got == n - 1:
                    fanout.append(per_msg[-1]["fanout_ms"])
                if times:
                    first_push.append(per_msg[-1]["first_push_ms"])
                else:
                    pushing = False  # nothing at all: do not wait for the remaining messages
                    out["notes"].append(f"no push arrived within {first_timeout} s of message {i + 1}; "
                                        "the remaining messages were sent without waiting for pushes")
            await asyncio.sleep(PAUSE_S)
        await asyncio.sleep(GRACE_S)
        cpu = {"server_s": sum(map(cpu_s, pids)) - cpu0, "receiver_s": receiver.cpu_s() - receiver_cpu0}
        stats = await receiver.stats(http)
        final = {e: (await receiver.wait(http, e, 0, 0))["arrivals"] for e in event_ids}

    waited = {p["event_id"]: p["pushes"] for p in per_msg}
    delivered = {e: len(expected.intersection(a)) for e, a in final.items()}
    own = sum(sender_key in a for a in final.values())
    complete = [ms for ms in fanout if ms is not None]
    out.update({
        "setup_s": setup,
        "per_message": per_msg,
        "fanout_ms": complete,
        "fanout_p50_ms": pct(complete, 50) if complete else None,
        "fanout_max_ms": max(complete) if complete else None,
        "first_push_p50_ms": pct(first_push, 50) if first_push else None,
        "pushes_per_s": (n - 1) / (pct(complete, 50) / 1000) if complete else None,
        "pushes_per_s_worst": (n - 1) / (max(complete) / 1000) if complete else None,
        "complete_messages": len(complete),
        "pushes_expected": m * (n - 1),
        "pushes_delivered": sum(delivered.values()),
        # CPU over phase B (sends, fan-outs, pauses), per push delivered; the server row's processes
        # (for Synapse+PostgreSQL: Synapse and PostgreSQL's), and the receiver's
        "cpu_s": cpu,
        "server_cpu_ms_per_push": cpu["server_s"] * 1000 / sum(delivered.values()) if sum(delivered.values()) else None,
        "missing": m * (n - 1) - sum(delivered.values()),
        "late": sum(delivered[e] - waited[e] for e in waited),
        "to_sender": own,
        "duplicates": stats["duplicates"],
        # pushes for events this phase did not send (the sends without pushers, the joins)
        "other_events": sum(c for e, c in stats["events"].items() if e not in final),
        "badge_only": stats["badge_only"],
        "malformed": stats["malformed"],
        "problems": stats["problems"],
        "sample_notification": stats["sample"],
        # connections to the gateway from the pushers' setting on: opened, and most open at once
        "connections": stats["connections"],
        "connections_open_max": stats["open_max"],
        "send_without": {"p50_ms": pct(without, 50), "p90_ms": pct(without, 90), "samples_ms": without},
        "send_with": {"p50_ms": pct(with_ms, 50), "p90_ms": pct(with_ms, 90), "samples_ms": with_ms},
    })
    return out


# ---- report ----

# (label, key, scale)
ROWS = [
    ("members, each with an HTTP pusher", "members", None),
    ("messages (each waits for its fan-out)", "messages", None),
    ("fan-out p50: send → last push (ms)", "fanout_p50_ms", 1),
    ("fan-out max (ms)", "fanout_max_ms", 1),
    ("pushes/s (N-1 / fan-out p50)", "pushes_per_s", 1),
    ("first push p50 (ms)", "first_push_p50_ms", 1),
    ("server CPU per push (ms; incl. PostgreSQL)", "server_cpu_ms_per_push", 1),
    ("connections to the gateway: opened, most at once", None, None),
    ("missing pushes", "missing", None),
    ("late, duplicates, to the sender, other events, malformed", None, None),
    ("send p50 without pushers (ms)", ("send_without", "p50_ms"), 1),
    ("send p50 with pushers (ms)", ("send_with", "p50_ms"), 1),
    ("send p90 without pushers (ms)", ("send_without", "p90_ms"), 1),
    ("send p90 with pushers (ms)", ("send_with", "p90_ms"), 1),
]


def _get(push: dict, key):
    if isinstance(key, tuple):
        return push.get(key[0], {}).get(key[1])
    return push.get(key)


def _fmt(v, integer: bool = False) -> str:
    if v is None:
        return "-"
    if integer:
        return str(int(v))
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def within_noise(without: float, with_: float) -> bool:
    return with_ <= without + max(NOISE_RATIO * without, NOISE_MS)


def targets(results: dict) -> list[dict]:
    """moss's push targets (absolute: they concern moss alone)."""
    p = results.get("moss", {}).get("push")
    out = []
    t = {"target": "push fan-out throughput", "goal": f"≥ {TARGET_PUSHES_PER_S:,} pushes/s"}
    if p and p.get("pushes_per_s"):
        v = p["pushes_per_s"]
        t.update(measured=f"{v:,.0f} pushes/s ({p['members']} members)", value=v, met=v >= TARGET_PUSHES_PER_S,
                 miss=f"{v:,.0f} pushes/s, needs ≥ {TARGET_PUSHES_PER_S:,}")
    elif p:
        t.update(measured=f"no complete fan-out ({p['pushes_delivered']} of {p['pushes_expected']} pushes)",
                 met=False, miss="no message reached all its pushers")
    else:
        t.update(measured="not measured", met=None)
    out.append(t)
    t = {"target": "every push delivered, once", "goal": "0 missing, duplicated, to the sender, for other events, malformed"}
    if p:
        bad = {"missing": p["missing"], "duplicated": p["duplicates"], "to the sender": p["to_sender"],
               "for other events": p["other_events"], "malformed": p["malformed"]}
        t.update(measured=", ".join(f"{v} {k}" for k, v in bad.items()), met=not any(bad.values()),
                 miss=", ".join(f"{v} {k}" for k, v in bad.items() if v))
    else:
        t.update(measured="not measured", met=None)
    out.append(t)
    t = {"target": "send latency with pushers",
         "goal": f"p50 within noise of the p50 without (≤ +{NOISE_RATIO:.0%} or +{NOISE_MS:g} ms)"}
    if p:
        a, b = p["send_without"]["p50_ms"], p["send_with"]["p50_ms"]
        t.update(measured=f"{b:.1f} ms with vs {a:.1f} ms without ({b / a:.2f}×)", met=within_noise(a, b),
                 miss=f"{b:.1f} ms with vs {a:.1f} ms without")
    else:
        t.update(measured="not measured", met=None)
    out.append(t)
    return out


def report(results: dict, meta: dict, titles: dict) -> list[str]:
    names = [n for n in titles if n in results and results[n].get("push")]
    if not names:
        return []
    pushes = {n: results[n]["push"] for n in names}
    lines = ["## Push (workload 8)", "",
             "One message into a room whose every member has an HTTP pusher to the bench's own push gateway "
             "(a separate process on 127.0.0.1). Fan-out: from the start of the send request to the arrival of "
             "the last of the N-1 pushes (the sender gets none). Send latency: sequential sends into the same room "
             f"before the pushers were set and after, {PAUSE_S:g} s apart.", "",
             "| | " + " | ".join(titles[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, scale in ROWS:
        if key is None and label.startswith("connections"):
            cells = [f"{p['connections']}, {p['connections_open_max']}" for p in pushes.values()]
        elif key is None:
            cells = [", ".join(str(p[k]) for k in ("late", "duplicates", "to_sender", "other_events", "malformed"))
                     for p in pushes.values()]
        else:
            cells = [_fmt(_get(p, key), integer=scale is None) for p in pushes.values()]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    cpu = next((p["receiver_cpu_per_push_us"] for p in pushes.values() if p.get("receiver_cpu_per_push_us")), None)
    if cpu:
        lines += ["", f"The receiver spends ≈ {cpu:.0f} µs of CPU per push (calibrated before the rows; one core "
                      f"would take ≈ {1e6 / cpu:,.0f} pushes/s), on the same two cores as the server."]
    for n in names:
        for note in pushes[n].get("notes", []):
            lines.append(f"\n{titles[n]}: {note}.")
        if pushes[n].get("problems"):
            lines.append(f"\n{titles[n]}: malformed pushes: " + "; ".join(pushes[n]["problems"]) + ".")
    lines.append("")
    ts = meta.get("push_targets", [])
    if ts:
        lines += ["### Push targets (moss)", "", "| target | goal | this run | |", "|---|---|---|---|"]
        for t in ts:
            verdict = "met" if t["met"] else "**missed**" if t["met"] is False else "not measured"
            lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {verdict} |")
        lines.append("")
        missed = [t for t in ts if t["met"] is False]
        if missed:
            lines.append(f"**moss misses {len(missed)} of {len(ts)} push targets in this run: "
                         + "; ".join(f"{t['target']} ({t['miss']})" for t in missed) + ".**")
        elif all(t["met"] for t in ts):
            lines.append(f"moss meets all {len(ts)} push targets in this run.")
        if meta.get("mode") == "quick":
            lines += ["", f"Quick mode has {QUICK['members']} members and {QUICK['messages']} messages, not "
                          f"{FULL['members']} and {FULL['messages']}: these numbers show that the harness works, not "
                          "whether moss meets the targets."]
        lines.append("")
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "receiver":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3])))
    else:
        raise SystemExit("usage: push.py receiver NOTIFY_PORT CONTROL_PORT   (the workload runs from bench/run.py)")
