"""Processes and helpers for tests/clients/python/test_bridge_heisenbridge.py: moss, ngircd and
heisenbridge on loopback, a plain IRC client on a socket, and a gate between moss and the bridge.

The gate is a small HTTP proxy on the port the registration's `url` names (the bridge itself
listens on another port behind it). It records every request moss makes to the bridge — the
transaction id and the event ids it carries — and can be switched between:
- "open": forwards to the bridge (what a bridge that is up looks like);
- "down": answers 502 without forwarding (a reverse proxy in front of a bridge that is down);
- "hold": keeps the request open and never answers (a transaction in flight, never acknowledged).

This module starts its own moss (not conftest's session server): the test needs an appservice
registration, and it kills and restarts moss.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nio
import pytest
from aiohttp import web
from fed_harness import free_port  # noqa: F401  (re-exported for the test)

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVER_NAME = "localhost"
STARTUP_TIMEOUT_S = 30.0
# One "wait until X shows up": normally well under a second on loopback; a debug build of moss
# on a busy 2-core machine needs the margin.
WAIT_S = 45.0
LOG_TAIL_LINES = 60
# moss's binary may be relinked by a concurrent `cargo build` ("text file busy"): wait for it.
EXEC_RETRY_S = 120.0


def bridge_tools() -> tuple[Path, Path]:
    """heisenbridge and ngircd: skipped when missing, failed when MOSS_REQUIRE_BRIDGES=1."""
    hb = Path(os.environ.get("MOSS_TEST_HEISENBRIDGE") or REPO_ROOT / ".venv-bridges" / "bin" / "heisenbridge")
    ngircd = (
        os.environ.get("MOSS_TEST_NGIRCD")
        or shutil.which("ngircd")
        or shutil.which("ngircd", path="/usr/sbin:/usr/local/sbin")
    )
    missing = []
    if not (hb.is_file() and os.access(hb, os.X_OK)):
        missing.append(f"heisenbridge ({hb})")
    if not (ngircd and os.path.isfile(ngircd) and os.access(ngircd, os.X_OK)):
        missing.append(f"ngircd ({ngircd or 'not on PATH'})")
    if missing:
        reason = f"{' and '.join(missing)} not installed: run scripts/setup-bridges.sh"
        if os.environ.get("MOSS_REQUIRE_BRIDGES") == "1":
            pytest.fail(f"MOSS_REQUIRE_BRIDGES=1 but {reason}")
        pytest.skip(reason)
    return hb, Path(str(ngircd))


def moss_binary() -> Path:
    configured = os.environ.get("MOSS_BIN")
    path = (Path(configured) if configured else REPO_ROOT / "target" / "debug" / "moss").resolve()
    if not path.is_file():
        pytest.fail(f"moss binary not found at {path}: build it first or set MOSS_BIN")
    return path


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Proc:
    """A child process whose output goes to a log file that failure messages quote."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    cwd: Path | None = None
    proc: subprocess.Popen | None = None
    starts: int = 0

    def start(self) -> None:
        deadline = time.monotonic() + EXEC_RETRY_S
        while True:
            try:
                with open(self.log_path, "ab") as log:
                    log.write(f"===== {self.name} start #{self.starts + 1} at {time.strftime('%H:%M:%S')} =====\n".encode())
                    log.flush()
                    self.proc = subprocess.Popen(
                        self.argv, cwd=self.cwd, env=self.env,
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    )
                self.starts += 1
                return
            except OSError as err:
                # ETXTBSY: the binary is being rewritten right now; ENOENT: between unlink and rename.
                if err.errno not in (errno.ETXTBSY, errno.ENOENT) or time.monotonic() > deadline:
                    raise
                time.sleep(2)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
        if not self.running():
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=grace)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        if self.proc is None:
            state = "not started"
        elif self.proc.poll() is None:
            state = f"running, pid {self.proc.pid}"
        else:
            state = f"EXITED with code {self.proc.returncode}"
        tail = "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])
        return f"--- {self.name} ({state}), last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{tail}"


def write_ngircd_conf(path: Path, port: int) -> None:
    """A minimal ngircd config (docs/notes/appservice-research.md §5). ngircd started as root
    drops to nobody: everything it reads must be world-readable, its pid file writable by it."""
    conf_dir = path.parent / "ngircd.conf.d"
    conf_dir.mkdir(exist_ok=True)
    path.write_text(
        f"""[Global]
\tName = irc.test
\tInfo = moss bridge test
\tAdminInfo1 = test
\tAdminInfo2 = test
\tAdminEMail = test@irc.test
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdPhrase = "moss bridge test"
\tPidFile = /tmp/ngircd-moss-test-{port}.pid
\tHelpFile = /dev/null
[Limits]
\tMaxConnectionsIP = 0
\tMaxJoins = 0
\tMaxNickLength = 30
\tPingTimeout = 300
\tPongTimeout = 60
[Options]
\tDNS = no
\tIdent = no
\tPAM = no
\tRequireAuthPing = no
\tIncludeDir = {conf_dir}
"""
    )
    for p in (path.parent, conf_dir):
        p.chmod(0o755)
    path.chmod(0o644)


@dataclass
class GateRecord:
    """One request moss made to the bridge, as the gate saw it."""

    at: float
    method: str
    path: str
    mode: str
    txn_id: str | None
    event_ids: list[str]
    status: int | None = None  # None: held, never answered

    def __str__(self) -> str:
        shown = self.status if self.status is not None else "held"
        return f"{self.method} {self.path} [{self.mode}] -> {shown}; events {self.event_ids}"


_TXN_PATH = re.compile(r"^/_matrix/app/v1/transactions/([^/?]+)")


class Gate:
    """An HTTP proxy on the registration's port, in front of the bridge (see the module doc)."""

    def __init__(self, port: int, target_port: int):
        self.port, self.target_port = port, target_port
        self.mode = "open"
        self.records: list[GateRecord] = []
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._release = asyncio.Event()

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))

    async def stop(self) -> None:
        self._release.set()
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def set_mode(self, mode: str) -> None:
        assert mode in ("open", "down", "hold"), mode
        if self.mode == "hold" and mode != "hold":
            # Held requests are answered (503) only now; their client is normally gone by then.
            self._release.set()
        if mode == "hold":
            self._release = asyncio.Event()
        self.mode = mode

    def transactions(self) -> list[GateRecord]:
        return [r for r in self.records if r.txn_id is not None]

    def carrying(self, event_id: str) -> list[GateRecord]:
        return [r for r in self.transactions() if event_id in r.event_ids]

    def describe(self, last: int = 25) -> str:
        lines = "\n".join(str(r) for r in self.records[-last:])
        return f"--- gate (mode {self.mode}), last {last} of {len(self.records)} requests from moss ---\n{lines}"

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        # Looked up per request, so a test can replace _handle (e.g. to prove it detects loss).
        return await self._handle(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        match = _TXN_PATH.match(request.path)
        event_ids: list[str] = []
        if match and body:
            try:
                event_ids = [e.get("event_id", "?") for e in json.loads(body).get("events", [])]
            except (ValueError, AttributeError):
                event_ids = ["<unparseable body>"]
        record = GateRecord(
            at=time.monotonic(), method=request.method, path=request.path_qs, mode=self.mode,
            txn_id=match.group(1) if match else None, event_ids=event_ids,
        )
        self.records.append(record)
        if self.mode == "down":
            record.status = 502
            return web.Response(status=502, text="bridge unavailable (test gate)")
        if self.mode == "hold":
            await self._release.wait()
            return web.Response(status=503, text="held by the test gate")
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        try:
            async with self._http.request(
                request.method, f"http://127.0.0.1:{self.target_port}{request.path_qs}", headers=headers, data=body
            ) as resp:
                data = await resp.read()
                record.status = resp.status
                return web.Response(
                    status=resp.status, body=data,
                    headers={"Content-Type": resp.headers.get("Content-Type", "application/json")},
                )
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            # The bridge itself is not listening (e.g. still starting): moss sees a 502.
            record.status = 502
            return web.Response(status=502, text=f"bridge unreachable through the test gate: {err}")


class IrcClient:
    """A plain IRC client on a socket (bob); answers PING, keeps every line it read."""

    def __init__(self, nick: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.nick = nick
        self.reader, self.writer = reader, writer
        self.lines: list[str] = []

    @classmethod
    async def connect(cls, port: int, nick: str, world: BridgeWorld) -> IrcClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(nick, reader, writer)
        await client.send(f"NICK {nick}")
        await client.send(f"USER {nick} 0 * :{nick} on plain IRC")
        await client.wait_for(lambda line: f" 001 {nick} " in line, "the IRC server's welcome (001)", world)
        return client

    async def send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def read_some(self, timeout: float) -> None:
        """Waits up to `timeout` for a line, then takes whatever else is already there."""
        wait = timeout
        while True:
            try:
                raw = await asyncio.wait_for(self.reader.readline(), wait)
            except asyncio.TimeoutError:
                return
            if not raw:
                raise AssertionError(
                    f"the IRC server closed {self.nick}'s connection; last lines:\n" + "\n".join(self.lines[-20:])
                )
            line = raw.decode(errors="replace").rstrip("\r\n")
            if line.startswith("PING"):
                await self.send("PONG" + line[4:])
            self.lines.append(line)
            wait = 0.05

    async def wait_for(
        self, pred: Callable[[str], bool], what: str, world: BridgeWorld, timeout: float = WAIT_S, since: int = 0
    ) -> str:
        """The first line (from index `since`) that satisfies `pred`; keeps alice syncing meanwhile."""
        return await self.until(
            f"{what} on IRC", lambda: next((line for line in self.lines[since:] if pred(line)), None), world, timeout
        )

    async def until(self, what: str, pred: Callable[[], Any], world: BridgeWorld, timeout: float = WAIT_S) -> Any:
        """Polls `pred()` while reading IRC and syncing alice, until it returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            found = pred()
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(world.explain(
                    f"timed out after {timeout:.0f}s waiting for {what}; {self.nick} read (last 30 lines):\n"
                    + "\n".join(self.lines[-30:])
                ))
            if world.client is not None:
                await asyncio.gather(self.read_some(0.5), world.sync_once(timeout_ms=300))
            else:
                await self.read_some(0.5)

    def privmsgs(self, target: str) -> list[tuple[str, str]]:
        """(sender nick, text) of every PRIVMSG to `target` read so far, in order."""
        out = []
        for line in self.lines:
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1] == "PRIVMSG" and parts[2] == target:
                nick = parts[0].lstrip(":").split("!", 1)[0]
                out.append((nick, parts[3][1:] if parts[3].startswith(":") else parts[3]))
        return out

    async def close(self) -> None:
        try:
            await self.send("QUIT :bye")
        except OSError:
            pass
        self.writer.close()


def nio_config() -> nio.AsyncClientConfig:
    return nio.AsyncClientConfig(
        # nio's defaults retry connection errors forever; the test retries itself (moss restarts).
        max_timeouts=1,
        max_limit_exceeded=0,
        request_timeout=20,
        encryption_enabled=False,
        store_sync_tokens=False,
    )


@dataclass
class BridgeWorld:
    """moss, ngircd, heisenbridge and the gate, and everything alice's /sync returned."""

    moss: Proc
    bridge: Proc
    ircd: Proc
    gate: Gate
    moss_url: str
    irc_port: int
    registration: Path
    client: nio.AsyncClient | None = None
    # (room_id, event) of every timeline event alice's /sync returned, in order.
    events: list[tuple[str, Any]] = field(default_factory=list)
    invites: list[str] = field(default_factory=list)
    sync_errors: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def explain(self, message: str) -> str:
        parts = [message, "=== logs ==="]
        parts += [p.describe() for p in (self.moss, self.bridge, self.ircd)]
        parts.append(self.gate.describe())
        if self.sync_errors:
            parts.append("--- alice's last sync errors ---\n" + "\n".join(self.sync_errors[-5:]))
        return "\n".join(parts)

    async def wait_moss_up(self) -> None:
        """Polls /versions without blocking the event loop (the gate and bob's socket live on it)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not await asyncio.to_thread(http_ok, f"{self.moss_url}/_matrix/client/versions"):
            assert self.moss.running(), self.explain("moss exited during start-up")
            assert time.monotonic() < deadline, self.explain(f"moss did not answer /versions within {STARTUP_TIMEOUT_S}s")
            await asyncio.sleep(0.05)

    def wait_ircd_up(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not tcp_open(self.irc_port):
            assert self.ircd.running(), self.explain("ngircd exited during start-up")
            assert time.monotonic() < deadline, self.explain(f"ngircd did not listen within {STARTUP_TIMEOUT_S}s")
            time.sleep(0.05)

    async def sync_once(self, timeout_ms: int = 500) -> None:
        assert self.client is not None
        try:
            resp = await self.client.sync(timeout=timeout_ms)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            # moss is restarting: the next round tries again (the test's deadlines still apply).
            self.sync_errors.append(repr(err))
            await asyncio.sleep(0.2)
            return
        if not isinstance(resp, nio.SyncResponse):
            self.sync_errors.append(str(resp))
            await asyncio.sleep(0.2)
            return
        for room_id in resp.rooms.invite:
            if room_id not in self.invites:
                self.invites.append(room_id)
        for room_id, info in resp.rooms.join.items():
            for event in info.timeline.events:
                self.events.append((room_id, event))

    async def until(self, what: str, pred: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """Syncs alice until `pred()` returns something truthy."""
        deadline = time.monotonic() + timeout
        while True:
            found = pred()
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(self.explain(f"timed out after {timeout:.0f}s waiting for {what}"))
            await self.sync_once()

    def room_events(self, room_id: str, since: int = 0) -> list[Any]:
        return [e for r, e in self.events[since:] if r == room_id]

    def notices(self, room_id: str, since: int = 0) -> list[str]:
        return [e.body for e in self.room_events(room_id, since) if isinstance(e, nio.RoomMessageNotice)]

    async def send(self, room_id: str, body: str) -> str:
        """Sends an m.text as alice; returns its event id once moss has acknowledged it."""
        assert self.client is not None
        resp = await self.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
        assert isinstance(resp, nio.RoomSendResponse), self.explain(f"sending {body!r}: {resp}")
        return resp.event_id

    async def accept_invite(self, index: int, what: str) -> str:
        """Joins the `index`-th room alice was invited to (waiting for that invite)."""
        assert self.client is not None
        await self.until(what, lambda: len(self.invites) > index)
        room_id = self.invites[index]
        resp = await self.client.join(room_id)
        assert isinstance(resp, nio.JoinResponse), self.explain(f"joining {what} ({room_id}): {resp}")
        return room_id

    async def gate_quiet(self, quiet_s: float = 1.0, timeout: float = WAIT_S) -> None:
        """Waits until moss has sent the bridge nothing for `quiet_s` and nothing is unanswered."""
        deadline = time.monotonic() + timeout
        while True:
            recs = self.gate.records
            busy = any(r.status is None and r.mode == "open" for r in recs)
            if not busy and (not recs or time.monotonic() - recs[-1].at >= quiet_s):
                return
            if time.monotonic() > deadline:
                pytest.fail(self.explain("moss kept sending to the bridge: no quiet second"))
            await self.sync_once(timeout_ms=200)
