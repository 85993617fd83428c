"""Workload 9, application services: what a bridge receives from the homeserver, and when.
bench/run.py runs it on each row after the other workloads of that row, on the same server process.

The bridge is the bench's own: this file run as `python bench/appservice.py receiver PORT
CONTROL_PORT HS_TOKEN` is an application service on 127.0.0.1, a process of its own so that the
bench's client does not share its event loop. `PUT /_matrix/app/v1/transactions/{txnId}` checks
`Authorization: Bearer <hs_token>` (or the legacy `?access_token=`), notes each event's arrival
(CLOCK_MONOTONIC, comparable across processes) once per transaction id, as a real service
deduplicates, and answers `{}`; `GET /_matrix/app/v1/users/…` and `/rooms/…` answer 404
`M_NOT_FOUND`, `POST /_matrix/app/v1/ping` `{}`. "Down" closes its listening socket, so the
server's requests are refused as for a stopped bridge; "up" opens it again. The control port
(`/_bench/*`) reads what arrived, switches down/up and resets.

Both servers load the same registration (written before any server starts): users `@bench_as_.*`
exclusive, `rate_limited: false`; moss from `[appservice] config_files` in its moss.toml (only if
`moss config check` accepts it), Synapse from `app_service_config_files`. Per row, one ordinary user creates a public room and the
service's own user joins it (so the service is interested in the room), then
  A. burst: BURST messages sent one after the other as fast as the server answers; per message
     the delivery latency = its arrival at the service − the moment its send was acknowledged
     (negative when the service had it before the client had its answer), p50/p95/p99/max, plus
     missing, duplicated (the same event under two transaction ids) and out-of-order counts, the
     number of transactions, events per transaction and retried transaction ids;
  B. outage: the service goes down; DOWN_MESSAGES are sent, spread over DOWN_S seconds; it comes
     back (without pinging: the server finds out by retrying); first arrival = from its return to
     the server's first retry that reached it, catch-up = to the arrival of the last of them;
     every one must arrive, in order, and none while it was down.
Nothing here is asserted: bench/run.py's report shows the numbers and the issue's targets (moss:
burst p99 < 50 ms, nothing lost or reordered).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp import web

# catch_up_limit_s: how long to wait after the return. moss backs off 1 s, 2 s … 5 min, Synapse 2 s,
# 4 s … 512 s, so after a down period of d seconds the next retry comes at most about d + 4 s later.
FULL = {"burst": 1000, "down_messages": 60, "down_s": 60.0, "catch_up_limit_s": 600}
QUICK = {"burst": 100, "down_messages": 5, "down_s": 5.0, "catch_up_limit_s": 60}
TARGET_P99_MS = 50.0
STALL_S = 30.0          # no new arrival for this long: stop waiting for the missing ones
SERVICE_ID = "bench"
AS_TOKEN = "bench-as-token-" + uuid.uuid4().hex
HS_TOKEN = "bench-hs-token-" + uuid.uuid4().hex
SENDER = "bench_as_bot"


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


# ---- the service: a process of its own ----

class Service:
    def __init__(self, port: int, hs_token: str):
        self.port, self.hs_token = port, hs_token
        self.inner_port = 0
        self.gate: asyncio.base_events.Server | None = None
        self.open: set[asyncio.StreamWriter] = set()
        self.reset()

    def reset(self) -> None:
        self.arrivals: dict[str, float] = {}   # event_id -> first arrival
        self.order: list[str] = []             # event bodies in arrival order
        self.txn_ids: set[str] = set()
        self.txns = 0
        self.sizes: list[int] = []             # events per transaction (first delivery of each id)
        self.retried = 0                       # a transaction id seen again (answered, ignored)
        self.duplicates = 0                    # an event seen again under another id
        self.bad_auth = 0
        self.refusals_since_down = 0

    async def transaction(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else request.query.get("access_token")
        if token != self.hs_token:
            self.bad_auth += 1
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        now = time.monotonic()
        txn = request.match_info["txn"]
        body = await request.json()
        if txn in self.txn_ids:
            self.retried += 1
            return web.json_response({})
        self.txn_ids.add(txn)
        self.txns += 1
        self.sizes.append(len(body.get("events", [])))
        for event in body.get("events", []):
            eid = event.get("event_id")
            if eid in self.arrivals:
                self.duplicates += 1
                continue
            self.arrivals[eid] = now
            text = (event.get("content") or {}).get("body")
            if isinstance(text, str) and text.startswith("bench-as "):
                self.order.append(text)
        return web.json_response({})

    async def unknown(self, request: web.Request) -> web.Response:
        return web.json_response({"errcode": "M_NOT_FOUND", "error": "no such thing"}, status=404)

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def up(self) -> None:
        if self.gate is None:
            self.gate = await asyncio.start_server(self._forward, "127.0.0.1", self.port, reuse_address=True)

    async def down(self) -> None:
        """A stopped bridge: no listener, and the connections the server keeps alive are cut."""
        if self.gate is not None:
            self.gate.close()
            await self.gate.wait_closed()
            self.gate = None
        for w in list(self.open):
            w.transport.abort()
        self.open.clear()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The service listens on an inner port; this forwarder on the registered port is what
        # goes down and up (aiohttp keeps serving kept-alive connections after its site stops).
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.inner_port)
        except OSError:
            writer.transport.abort()
            return
        self.open.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, RuntimeError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.open.discard(writer)
        self.open.discard(up_writer)


async def serve(port: int, control_port: int, hs_token: str) -> None:
    svc = Service(port, hs_token)
    app = web.Application(client_max_size=64 << 20)
    app.router.add_put("/_matrix/app/v1/transactions/{txn}", svc.transaction)
    app.router.add_put("/transactions/{txn}", svc.transaction)
    app.router.add_get("/_matrix/app/v1/users/{id}", svc.unknown)
    app.router.add_get("/_matrix/app/v1/rooms/{id}", svc.unknown)
    app.router.add_post("/_matrix/app/v1/ping", svc.ping)
    inner = web.AppRunner(app, access_log=None)
    await inner.setup()
    site = web.TCPSite(inner, "127.0.0.1", 0)
    await site.start()
    svc.inner_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    await svc.up()

    control = web.Application()

    async def state(request: web.Request) -> web.Response:
        return web.json_response({"arrivals": svc.arrivals, "order": svc.order, "txns": svc.txns, "sizes": svc.sizes,
                                  "retried": svc.retried, "duplicates": svc.duplicates, "bad_auth": svc.bad_auth,
                                  "up": svc.gate is not None})

    async def switch(request: web.Request) -> web.Response:
        await (svc.up() if request.match_info["how"] == "up" else svc.down())
        return web.json_response({"up": svc.gate is not None, "at": time.monotonic()})

    async def reset(request: web.Request) -> web.Response:
        svc.reset()
        return web.json_response({})

    control.router.add_get("/_bench/state", state)
    control.router.add_post("/_bench/{how:up|down}", switch)
    control.router.add_post("/_bench/reset", reset)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", control_port).start()
    await asyncio.Event().wait()


# ---- seen from the bench ----

class Receiver:
    def __init__(self, work: Path, port: int, control_port: int):
        self.work = work
        self.port, self.control = port, f"http://127.0.0.1:{control_port}"
        self.control_port = control_port
        self.proc: subprocess.Popen | None = None
        self.registration = work / "registration.yaml"

    async def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.registration.write_text(
            f"id: {SERVICE_ID}\nurl: http://127.0.0.1:{self.port}\nas_token: {AS_TOKEN}\nhs_token: {HS_TOKEN}\n"
            f"sender_localpart: {SENDER}\nrate_limited: false\n"
            "namespaces:\n  users:\n  - regex: '@bench_as_.*'\n    exclusive: true\n  aliases: []\n  rooms: []\n"
        )
        log = open(self.work / "service.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "receiver", str(self.port), str(self.control_port), HS_TOKEN],
            stdout=log, stderr=log,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(1000):
                try:
                    async with http.get(self.control + "/_bench/state") as r:
                        if r.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None:
                    raise SystemExit(f"application service exited; see {self.work / 'service.log'}")
                await asyncio.sleep(0.02)
        raise SystemExit("application service did not start")

    async def state(self, http) -> dict:
        async with http.get(self.control + "/_bench/state") as r:
            r.raise_for_status()
            return await r.json()

    async def post(self, http, what: str) -> dict:
        async with http.post(self.control + f"/_bench/{what}") as r:
            r.raise_for_status()
            return await r.json()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def configure_moss(binary: Path, work: Path, env: dict, receiver: Receiver) -> tuple[dict, str | None]:
    """Adds `[appservice] config_files = [registration]` to work/moss.toml (moss reads ./moss.toml;
    workload 8 may have written its [push] section there first) if this binary accepts it: `moss
    config check` rejects an unknown section and loads the registration. Not an environment
    variable: a binary without [appservice] skips unknown MOSS_ variables silently. Returns the
    extra environment (none) and None, or why not (the file is then as it was)."""
    path = work / "moss.toml"
    before = path.read_text() if path.exists() else None
    section = ("\n# Written by bench/appservice.py: the bench's application service (workload 9).\n"
               f"[appservice]\nconfig_files = [{json.dumps(str(receiver.registration))}]\n")
    path.write_text((before or "") + section)
    res = subprocess.run([str(binary), "config", "check"], cwd=work, env={**os.environ, **env},
                         capture_output=True, text=True)
    if res.returncode == 0:
        return {}, None
    if before is None:
        path.unlink()
    else:
        path.write_text(before)
    text = (res.stderr or res.stdout).strip()
    if "unknown field `appservice`" in text:
        return {}, "this moss binary has no [appservice] configuration (application services not built in)"
    problems = [line.removeprefix("problem: ") for line in text.splitlines() if line.startswith("problem: ")]
    why = "; ".join(problems) or (text.splitlines()[-1] if text else f"exit status {res.returncode}")
    return {}, f"moss config check refused the [appservice] section: {why}"


def configure_synapse(conf: dict, receiver: Receiver | None) -> None:
    if receiver is not None:
        conf["app_service_config_files"] = [str(receiver.registration)]


async def wait_for(receiver: Receiver, http, bodies: list[str], stall_s: float, limit_s: float) -> dict:
    """Polls until every body arrived, nothing new arrived for stall_s, or limit_s passed."""
    want = set(bodies)
    started = last_change = time.monotonic()
    seen = -1
    while True:
        st = await receiver.state(http)
        got = [b for b in st["order"] if b in want]
        if len(set(got)) >= len(want):
            return st
        if len(got) != seen:
            seen, last_change = len(got), time.monotonic()
        now = time.monotonic()
        if now - last_change > stall_s or now - started > limit_s:
            return st
        await asyncio.sleep(0.05)


def txn_sizes(sizes: list[int]) -> dict:
    """Events per transaction: how the server batches."""
    return {"events_per_txn_mean": sum(sizes) / len(sizes) if sizes else float("nan"),
            "events_per_txn_max": max(sizes, default=0)}


def order_errors(order: list[str], bodies: list[str]) -> int:
    """Events that arrived before one sent earlier than them."""
    rank = {b: i for i, b in enumerate(bodies)}
    seen = [rank[b] for b in order if b in rank]
    errors, high = 0, -1
    for r in seen:
        if r < high:
            errors += 1
        high = max(high, r)
    return errors


async def workload(server, quick: bool, receiver: Receiver, Client, notes: list[str] | None = None) -> dict:
    p = QUICK if quick else FULL
    out: dict = {"notes": list(notes or []), "params": p}
    started = time.monotonic()
    tag = uuid.uuid4().hex[:6]
    async with aiohttp.ClientSession() as http:
        sender = await Client(http, server.base).register(f"as_sender_{tag}")
        room = await sender.create_room()
        service = Client(http, server.base)
        service.token = AS_TOKEN
        try:  # Synapse creates the service's own user lazily; moss at start-up (M_USER_IN_USE)
            await service.call("POST", "/_matrix/client/v3/register",
                               {"type": "m.login.application_service", "username": SENDER, "inhibit_login": True})
        except RuntimeError as e:
            if "M_USER_IN_USE" not in str(e):
                raise
        await receiver.post(http, "reset")
        await service.join(room)
        for _ in range(100):  # the service's own join reaching it: delivery works; then start clean
            if (await receiver.state(http))["txns"]:
                break
            await asyncio.sleep(0.05)
        await receiver.post(http, "reset")

        # A. burst
        bodies = [f"bench-as burst {tag} {i}" for i in range(p["burst"])]
        acked: dict[str, float] = {}
        ids: dict[str, str] = {}
        t0 = time.monotonic()
        for b in bodies:
            eid = await sender.send(room, b)
            acked[eid] = time.monotonic()
            ids[eid] = b
        send_s = time.monotonic() - t0
        st = await wait_for(receiver, http, bodies, STALL_S, 120)
        lat = [(st["arrivals"][e] - t) * 1000 for e, t in acked.items() if e in st["arrivals"]]
        out["burst"] = {
            "sends_per_s": p["burst"] / send_s,
            "p50_ms": pct(lat, 50), "p95_ms": pct(lat, 95), "p99_ms": pct(lat, 99), "max_ms": max(lat, default=float("nan")),
            "missing": sum(1 for e in acked if e not in st["arrivals"]),
            "duplicates": st["duplicates"], "out_of_order": order_errors(st["order"], bodies),
            "transactions": st["txns"], "retried": st["retried"], "bad_auth": st["bad_auth"],
            **txn_sizes(st["sizes"]),
        }

        # B. outage
        await receiver.post(http, "reset")
        await receiver.post(http, "down")
        down = [f"bench-as outage {tag} {i}" for i in range(p["down_messages"])]
        gap = p["down_s"] / max(1, len(down))
        for b in down:
            await sender.send(room, b)
            await asyncio.sleep(gap)
        back = (await receiver.post(http, "up"))["at"]
        st = await wait_for(receiver, http, down, p["catch_up_limit_s"], p["catch_up_limit_s"])
        got = [b for b in st["order"] if b in set(down)]
        arrivals = [st["arrivals"][e] for e in st["arrivals"]]
        out["outage"] = {
            "catch_up_s": (max(arrivals) - back) if len(set(got)) == len(down) and arrivals else float("nan"),
            # the server's first retry that reached the service; the rest of catch_up_s is draining
            "first_arrival_s": (min(arrivals) - back) if arrivals else float("nan"),
            "before_return": sum(1 for t in arrivals if t < back),  # must be 0: the service was down
            "missing": len(down) - len(set(got)),
            "out_of_order": order_errors(st["order"], down),
            "duplicates": st["duplicates"], "transactions": st["txns"], "retried": st["retried"],
            "bad_auth": st["bad_auth"], **txn_sizes(st["sizes"]),
        }
    out["duration_s"] = round(time.monotonic() - started, 1)
    return out


# ---- the report ----

ROWS = [
    ("burst: sends/s", "burst", "sends_per_s", 0),
    ("burst: delivery p50 (ms)", "burst", "p50_ms", 1),
    ("burst: delivery p95 (ms)", "burst", "p95_ms", 1),
    ("burst: delivery p99 (ms)", "burst", "p99_ms", 1),
    ("burst: delivery max (ms)", "burst", "max_ms", 1),
    ("burst: missing, duplicated, out of order", "burst", None, None),
    ("burst: transactions", "burst", "transactions", 0),
    ("burst: events per transaction, mean / max", "burst", "sizes", None),
    ("burst: retried transaction ids", "burst", "retried", 0),
    ("outage: first arrival after the return (s)", "outage", "first_arrival_s", 1),
    ("outage: catch-up after the return (s)", "outage", "catch_up_s", 1),
    ("outage: missing, duplicated, out of order", "outage", None, None),
    ("outage: transactions after the return", "outage", "transactions", 0),
    ("outage: events per transaction, mean / max", "outage", "sizes", None),
    ("outage: retried transaction ids", "outage", "retried", 0),
    ("outage: events that arrived while it was down (must be 0)", "outage", "before_return", 0),
    ("workload time, set-up included (s)", None, "duration_s", 1),
]


def _fmt(v, digits) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    return f"{v:,.{digits}f}" if isinstance(v, float) else f"{v:,}"


def targets(results: dict) -> list[dict]:
    a = (results.get("moss") or {}).get("appservice")
    if not a or "burst" not in a:
        return []
    b, o = a["burst"], a["outage"]
    return [
        {"target": f"{a['params']['burst']:,}-message burst: p99 delivery", "goal": f"< {TARGET_P99_MS:g} ms",
         "measured": f"{b['p99_ms']:.1f} ms", "met": b["p99_ms"] < TARGET_P99_MS},
        {"target": "burst: every event, once, in order", "goal": "0 missing / duplicated / reordered",
         "measured": f"{b['missing']} / {b['duplicates']} / {b['out_of_order']}",
         "met": b["missing"] == b["duplicates"] == b["out_of_order"] == 0},
        {"target": f"bridge down {a['params']['down_s']:g} s: every event after its return, in order",
         "goal": "0 missing / reordered", "measured": f"{o['missing']} / {o['out_of_order']}",
         "met": o["missing"] == o["out_of_order"] == 0},
    ]


def _cell(x: dict, section: str | None, key: str | None, digits: int | None) -> str:
    if "burst" not in x:
        return "not run"
    if section is None:
        return _fmt(x.get(key), digits)
    if section not in x:
        return "not run"
    r = x[section]
    if key is None:
        return f"{r['missing']}, {r['duplicates']}, {r['out_of_order']}"
    if key == "sizes":
        return f"{_fmt(r.get('events_per_txn_mean'), 2)} / {_fmt(r.get('events_per_txn_max'), 0)}"
    return _fmt(r.get(key), digits)


def report(results: dict, meta: dict, titles: dict) -> list[str]:
    names = [n for n in titles if n in results and results[n].get("appservice")]
    if not names:
        return []
    a = {n: results[n]["appservice"] for n in names}
    ran = [x for x in a.values() if "burst" in x]
    lines = ["## Application services (workload 9)", ""]
    if ran:
        first = ran[0]["params"]
        lines += [
            f"The bench's own application service (a separate process on 127.0.0.1) is registered on every row; its "
            f"user is joined to a public room. Burst: {first['burst']:,} messages sent one after the other; delivery = "
            f"arrival at the service − acknowledgement of the send. Outage: the service's socket is closed while "
            f"{first['down_messages']} messages are sent over {first['down_s']:g} s, then opened again (no ping): "
            "catch-up runs from the return to the arrival of the last of them; the first arrival is the server's first "
            "retry that found the service back.", "",
            "| | " + " | ".join(titles[n] for n in names) + " |", "|---" * (len(names) + 1) + "|"]
        for label, section, key, digits in ROWS:
            lines.append("| " + " | ".join([label, *(_cell(x, section, key, digits) for x in a.values())]) + " |")
    for n in names:
        for note in a[n].get("notes", []):
            lines.append(f"\n{titles[n]}: {note}.")
    lines.append("")
    ts = meta.get("appservice_targets", [])
    if ts:
        lines += ["### Application-service targets (moss)", "", "| target | goal | this run | |", "|---|---|---|---|"]
        for t in ts:
            lines.append(f"| {t['target']} | {t['goal']} | {t['measured']} | {'met' if t['met'] else '**missed**'} |")
        lines.append("")
        if meta.get("mode") == "quick":
            lines += [f"Quick mode sends {QUICK['burst']} messages and keeps the service down {QUICK['down_s']:g} s, not "
                      f"{FULL['burst']} and {FULL['down_s']:g} s: the harness works; the targets are for the full run.", ""]
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "receiver":
        asyncio.run(serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
    else:
        raise SystemExit("usage: appservice.py receiver PORT CONTROL_PORT HS_TOKEN   (the workload runs from bench/run.py)")
