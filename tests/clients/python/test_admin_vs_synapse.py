"""moss's admin API (`/_synapse/admin/...`) answered side by side with a real Synapse's.

One Synapse (from PyPI, SQLite) and one moss are started for the module, and the same world is
seeded on each: a server admin (shared-secret registration), alice, bob and mallory (open
registration), bob's room with a name, an alias and messages that alice joined and reported,
bob's uploads and pusher, a room of mallory's to delete, and a user to deactivate.

Every check makes the same call on both servers and compares:
- the status code (and the `errcode` of an error);
- the fields synapse-admin reads (docs/notes/admin-research.md): present on both, with the same
  JSON type. Values may differ (ids, timestamps, server names), except where a check names a
  value that the identical worlds make equal (`same`): those are compared after server names
  and the world's ids are replaced by symbols.

Field paths: `a.b`, `a[]` (every element), `a[0]`, `""` (the empty key, as in whois). A path
ending in `?` may be null on either side (types are compared when both are non-null); `~` may be
absent on Synapse (if Synapse has it, moss must too); `#` at the end is a list's length.

A difference fails the test with the call and both answers. Differences already known and
recorded in KNOWN_DIFFERENCES turn into xfails instead; when moss stops differing there, the
check fails until its entry is removed (so the list stays true).

Needs Synapse in its own venv (scripts/setup-synapse.sh), named by MOSS_TEST_SYNAPSE_PYTHON
(default .venv-synapse/bin/python); without it the module is skipped, unless
MOSS_REQUIRE_SYNAPSE=1 (scripts/test), when it fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from ports import free_port

from fed_harness import moss_binary, synapse_python

SHARED_SECRET = "admin-compare-secret"
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 15.0
HTTP_TIMEOUT_S = 30.0
SETTLE_S = 20.0
USER_AGENT = "moss-admin-compare/1.0"
PASSWORD = "correct horse battery staple"
ADMIN = "boss"
SEEDED_USERS = ("alice", "bob", "mallory", "victim")
# The world's ids that differ between the servers by more than the server name.
OPAQUE_IDS = {"room", "doomed", "event1", "event2", "media1", "media2", "mallory_device2"}

# Checks where moss is known to answer differently from Synapse: check name -> what differs.
# A check listed here xfails while the difference lasts and fails once it is gone.
KNOWN_DIFFERENCES: dict[str, str] = {
    # none known: each difference found was fixed in moss
}


# --------------------------------------------------------------------------- processes


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"<cannot read {path}: {err}>"
    return "\n".join(text.splitlines()[-lines:])


def _answers(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_matrix/client/versions", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@dataclass
class Server:
    kind: str  # "moss" or "synapse"
    server_name: str
    port: int
    log_path: Path
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def describe(self, lines: int = 40) -> str:
        code = self.proc.poll() if self.proc else "never started"
        state = "running" if code is None else f"EXITED ({code})"
        return f"--- {self.kind} ({state}, {self.base_url}) last {lines} lines of {self.log_path} ---\n" + _tail(
            self.log_path, lines
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _answers(self.base_url):
            if self.proc is None or self.proc.poll() is not None:
                pytest.fail(f"{self.kind} exited during startup\n{self.describe()}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self.kind} did not answer /versions within {STARTUP_TIMEOUT_S}s\n{self.describe()}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=SHUTDOWN_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=SHUTDOWN_GRACE_S)


def _synapse_python_or_skip() -> Path:
    python = synapse_python()
    if python.exists():
        return python
    reason = (
        f"Synapse's python not found at {python}: run scripts/setup-synapse.sh or set MOSS_TEST_SYNAPSE_PYTHON"
    )
    if os.environ.get("MOSS_REQUIRE_SYNAPSE") == "1":
        pytest.fail(f"MOSS_REQUIRE_SYNAPSE=1 but {reason}")
    pytest.skip(reason)


def start_synapse(python: Path, workdir: Path) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    hs = Server("synapse", "synapse.test", free_port(), workdir / "synapse.log")
    generated = workdir / "homeserver.yaml"
    subprocess.run(
        [str(python), "-m", "synapse.app.homeserver", "--server-name", hs.server_name, "--config-path",
         str(generated), "--data-directory", str(workdir), "--generate-config", "--report-stats=no"],
        check=True, cwd=workdir, stdout=subprocess.DEVNULL,
    )
    # The generated log config buffers lines; failure reports want the log as it is.
    log_config = workdir / "log.yaml"
    log_config.write_text(json.dumps({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                                             "%(request)s - %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": str(hs.log_path), "encoding": "utf8"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }))
    rate = {"per_second": 1000, "burst_count": 1000}
    # Later `-c` files win per top-level key (JSON is YAML). SQLite stays (the generated default).
    overrides: dict[str, Any] = {
        "listeners": [
            {"port": hs.port, "bind_addresses": ["127.0.0.1"], "type": "http", "x_forwarded": False,
             "resources": [{"names": ["client"], "compress": False}]},
        ],
        "log_config": str(log_config),
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "registration_shared_secret": SHARED_SECRET,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "presence": {"enabled": False},
        "server_notices": {"system_mxid_localpart": "notices", "room_name": "Server Notices"},
        "rc_login": {"address": rate, "account": rate, "failed_attempts": rate},
        "rc_joins": {"local": rate, "remote": rate},
        "rc_invites": {"per_room": rate, "per_user": rate, "per_issuer": rate},
        "rc_presence": {"per_user": rate},
    }
    for name in ["rc_message", "rc_registration", "rc_media_create", "rc_joins_per_room", "rc_room_creation",
                 "rc_admin_redaction", "rc_3pid_validation", "rc_delayed_event_mgmt", "rc_reports"]:
        overrides[name] = rate
    extra = workdir / "test-overrides.yaml"
    extra.write_text(json.dumps(overrides, indent=1))
    with open(workdir / "synapse.stdout", "wb") as out:
        hs.proc = subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(generated), "-c", str(extra)],
            cwd=workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    return hs


def start_moss(workdir: Path) -> Server:
    binary = moss_binary()
    if not binary.is_file():
        pytest.fail(f"moss binary not found at {binary}: build it first or set MOSS_BIN")
    workdir.mkdir(parents=True, exist_ok=True)
    hs = Server("moss", "moss.test", free_port(), workdir / "moss.log")
    # moss reads every MOSS_* variable as configuration and rejects unknown ones.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
    env.update({
        "MOSS_DATA_DIR": str(workdir / "data"),
        "MOSS_HTTP__BIND": f"127.0.0.1:{hs.port}",
        "MOSS_SERVER_NAME": hs.server_name,
        "MOSS_REGISTRATION": "open",
        "MOSS_REGISTRATION_SHARED_SECRET": SHARED_SECRET,
        "MOSS_RATE_LIMITS__ENABLED": "false",
        "MOSS_SERVER_NOTICES__SYSTEM_MXID_LOCALPART": "notices",
        "MOSS_LOG__LEVEL": "info",
        "RUST_BACKTRACE": "1",
        "NO_COLOR": "1",
    })
    with open(hs.log_path, "wb") as log:
        hs.proc = subprocess.Popen(
            [str(binary), "serve"], cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
    return hs


# --------------------------------------------------------------------------- HTTP


@dataclass
class Answer:
    status: int
    body: Any  # parsed JSON, or the raw text when it is not JSON

    def errcode(self) -> Any:
        return self.body.get("errcode") if isinstance(self.body, dict) else None

    def short(self, limit: int = 1500) -> str:
        text = json.dumps(self.body, sort_keys=True) if not isinstance(self.body, str) else self.body
        if len(text) > limit:
            text = text[:limit] + f"... <{len(text) - limit} more chars>"
        return f"HTTP {self.status} {text}"


NO_BODY = object()


def http(base_url: str, method: str, path: str, token: str | None = None, body: Any = NO_BODY,
         raw: bytes | None = None, content_type: str | None = None, query: dict[str, Any] | None = None) -> Answer:
    url = base_url + path
    if query:
        url += "?" + urlencode(query)
    headers = {"User-Agent": USER_AGENT}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not NO_BODY:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    elif raw is not None:
        data = raw
        headers["Content-Type"] = content_type or "application/octet-stream"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, payload = err.code, err.read()
    text = payload.decode(errors="replace")
    try:
        return Answer(status, json.loads(text))
    except ValueError:
        return Answer(status, text)


# --------------------------------------------------------------------------- the seeded world


@dataclass
class Side:
    """One server and the ids of the world seeded on it."""

    hs: Server
    tokens: dict[str, str] = field(default_factory=dict)  # "admin", "alice", ...
    ids: dict[str, str] = field(default_factory=dict)  # symbol -> this server's value

    @property
    def name(self) -> str:
        return self.hs.kind

    def mxid(self, localpart: str) -> str:
        return f"@{localpart}:{self.hs.server_name}"

    def call(self, method: str, path: str, token: str | None = "admin", **kw: Any) -> Answer:
        return http(self.hs.base_url, method, path, self.tokens[token] if token else None, **kw)

    def ok(self, what: str, answer: Answer, *statuses: int) -> Any:
        if answer.status not in (statuses or (200,)):
            pytest.fail(f"seeding {self.name}: {what} failed: {answer.short()}\n{self.hs.describe()}")
        return answer.body

    def vars(self) -> dict[str, str]:
        """What check paths may name: `{bob}` (raw id), `{bob_q}` (percent-encoded), `{server}`..."""
        out = {"server": self.hs.server_name}
        for sym, value in self.ids.items():
            out[sym] = value
            out[f"{sym}_q"] = quote(value, safe="")
        return out

    def normalize(self, value: Any) -> Any:
        """Server names and this world's ids replaced by symbols, for comparing values."""
        # User ids and aliases only differ by server name; report ids are small numbers that
        # must not be confused with counts.
        reverse = {v: f"<{k}>" for k, v in self.ids.items() if k in OPAQUE_IDS or k.endswith("_device")}
        if isinstance(value, dict):
            return {k: self.normalize(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.normalize(v) for v in value]
        if isinstance(value, str):
            if value in reverse:
                return reverse[value]
            return value.replace(self.hs.server_name, "SERVER")
        return value


def register_admin(side: Side) -> None:
    nonce = side.ok("shared-secret nonce", http(side.hs.base_url, "GET", "/_synapse/admin/v1/register"))["nonce"]
    mac = hmac.new(
        SHARED_SECRET.encode(), f"{nonce}\0{ADMIN}\0{PASSWORD}\0admin".encode(), hashlib.sha1
    ).hexdigest()
    body = {"nonce": nonce, "username": ADMIN, "password": PASSWORD, "admin": True, "mac": mac}
    data = side.ok("shared-secret register", http(side.hs.base_url, "POST", "/_synapse/admin/v1/register", body=body))
    side.tokens["admin"] = data["access_token"]
    side.ids["admin"] = data["user_id"]


def register_user(side: Side, localpart: str) -> None:
    body: dict[str, Any] = {"username": localpart, "password": PASSWORD, "initial_device_display_name": "seed"}
    ans = http(side.hs.base_url, "POST", "/_matrix/client/v3/register", body=body)
    if ans.status == 401:
        auth = {"type": "m.login.dummy"}
        if isinstance(ans.body, dict) and "session" in ans.body:
            auth["session"] = ans.body["session"]
        ans = http(side.hs.base_url, "POST", "/_matrix/client/v3/register", body={**body, "auth": auth})
    data = side.ok(f"register {localpart}", ans)
    side.tokens[localpart] = data["access_token"]
    side.ids[localpart] = data["user_id"]
    side.ids[f"{localpart}_device"] = data["device_id"]


def login(side: Side, localpart: str, device_id: str | None = None) -> dict:
    body: dict[str, Any] = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": localpart},
                            "password": PASSWORD}
    if device_id:
        body["device_id"] = device_id
    return side.ok(f"login {localpart}", http(side.hs.base_url, "POST", "/_matrix/client/v3/login", body=body))


def seed(side: Side) -> None:
    register_admin(side)
    for user in SEEDED_USERS:
        register_user(side, user)
    # A second device for mallory, to delete through the admin API.
    side.ids["mallory_device2"] = login(side, "mallory", "SECONDDEVICE")["device_id"]

    room = side.ok("bob creates the room", side.call("POST", "/_matrix/client/v3/createRoom", "bob", body={
        "name": "Compare Lounge", "room_alias_name": "lounge", "preset": "public_chat", "topic": "side by side",
    }))["room_id"]
    side.ids["room"] = room
    side.ids["alias"] = f"#lounge:{side.hs.server_name}"
    rq = quote(room, safe="")
    for n, text in ((1, "hello from bob"), (2, "second message")):
        side.ids[f"event{n}"] = side.ok(f"bob sends message {n}", side.call(
            "PUT", f"/_matrix/client/v3/rooms/{rq}/send/m.room.message/seed{n}", "bob",
            body={"msgtype": "m.text", "body": text}))["event_id"]
    side.ok("alice joins", side.call("POST", f"/_matrix/client/v3/join/{rq}", "alice", body={}))
    for n in (1, 2):
        time.sleep(0.01)  # distinct received_ts: the reports list sorts by it
        eq = quote(side.ids[f"event{n}"], safe="")
        side.ok(f"alice reports event {n}", side.call(
            "POST", f"/_matrix/client/v3/rooms/{rq}/report/{eq}", "alice",
            body={"reason": f"spam {n}", "score": -100}))

    for n, name in ((1, "hello.txt"), (2, "bye.txt")):
        time.sleep(0.01)  # distinct created_ts: the media lists sort by it
        content = f"file {n} of {side.name}: {name}\n".encode()
        uri = side.ok(f"bob uploads {name}", side.call(
            "POST", "/_matrix/media/v3/upload", "bob", raw=content, content_type="text/plain",
            query={"filename": name}))["content_uri"]
        side.ids[f"media{n}"] = uri.rsplit("/", 1)[1]

    side.ok("bob sets a pusher", side.call("POST", "/_matrix/client/v3/pushers/set", "bob", body={
        "kind": "http", "app_id": "org.moss.compare", "app_display_name": "Compare",
        "device_display_name": "bob's phone", "pushkey": "bob-pushkey", "lang": "en", "profile_tag": "tag",
        "data": {"url": "https://push.invalid/_matrix/push/v1/notify", "format": "event_id_only"},
    }))

    doomed = side.ok("mallory creates the room to delete", side.call(
        "POST", "/_matrix/client/v3/createRoom", "mallory",
        body={"name": "Doomed Room", "room_alias_name": "doomed", "preset": "private_chat"}))["room_id"]
    side.ids["doomed"] = doomed
    side.ok("mallory speaks in it", side.call(
        "PUT", f"/_matrix/client/v3/rooms/{quote(doomed, safe='')}/send/m.room.message/d1", "mallory",
        body={"msgtype": "m.text", "body": "soon gone"}))

    # Report ids, in the order the reports were made.
    reports = side.ok("list reports", side.call("GET", "/_synapse/admin/v1/event_reports", query={"dir": "f"}))
    by_event = {r["event_id"]: r["id"] for r in reports["event_reports"]}
    for n in (1, 2):
        side.ids[f"report{n}"] = str(by_event[side.ids[f"event{n}"]])
    side.ids["preblocked"] = f"!preblocked:{side.hs.server_name}"
    side.ids["remote"] = "@someone:elsewhere.example"
    side.ids["nobody"] = f"@nobody:{side.hs.server_name}"
    side.ids["carol"] = f"@carol:{side.hs.server_name}"


def settle(side: Side) -> None:
    """Synapse updates room statistics in the background: wait until the admin room list shows
    both rooms with their members, so the comparisons see the same world."""
    deadline = time.monotonic() + SETTLE_S
    last: Answer | None = None
    while time.monotonic() < deadline:
        last = side.call("GET", "/_synapse/admin/v1/rooms", query={"limit": 100})
        if last.status == 200:
            rooms = {r["room_id"]: r for r in last.body.get("rooms", [])}
            main, doomed = rooms.get(side.ids["room"]), rooms.get(side.ids["doomed"])
            if (main and doomed and main.get("joined_members") == 2 and main.get("name") == "Compare Lounge"
                    and main.get("canonical_alias") and doomed.get("joined_members") == 1):
                return
        time.sleep(0.2)
    pytest.fail(f"{side.name}: the rooms list did not show the seeded rooms within {SETTLE_S}s: "
                f"{last.short() if last else None}")


@dataclass
class Pair:
    synapse: Side
    moss: Side

    def sides(self) -> tuple[Side, Side]:
        return self.synapse, self.moss


class _AttachLogs:
    def __init__(self, pair: Pair):
        self.pair = pair

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if report.failed and "pair" in getattr(item, "fixturenames", ()):
            report.sections.append(("server logs", "\n".join(s.hs.describe(25) for s in self.pair.sides())))
        return report


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Pair]:
    python = _synapse_python_or_skip()
    root = tmp_path_factory.mktemp("admin-compare")
    moss = start_moss(root / "moss")
    synapse: Server | None = None
    try:
        synapse = start_synapse(python, root / "synapse")
        moss.wait_ready()
        synapse.wait_ready()
        p = Pair(Side(synapse), Side(moss))
        for side in p.sides():
            seed(side)
        for side in p.sides():
            settle(side)
        plugin = _AttachLogs(p)
        pytestconfig.pluginmanager.register(plugin, "admin-compare-logs")
        try:
            yield p
        finally:
            pytestconfig.pluginmanager.unregister(plugin)
    finally:
        moss.stop()
        if synapse is not None:
            synapse.stop()


# --------------------------------------------------------------------------- comparing


class _Missing:
    def __repr__(self) -> str:
        return "<absent>"


MISSING = _Missing()


def _jtype(v: Any) -> str:
    if v is MISSING:
        return "absent"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "str"
    if isinstance(v, list):
        return "list"
    return "object"


_SEGMENT = re.compile(r'^(""|[A-Za-z0-9_.$#-]*?)(\[\]|\[\d+\])?$')


def resolve(value: Any, path: str) -> list[Any]:
    """Every value at `path` (a list when `[]` fans out), MISSING where a key is absent.
    Raises ValueError for an empty list at a `[]` (nothing to compare)."""
    if path.endswith("#"):
        return [len(v) if isinstance(v, list) else MISSING for v in resolve(value, path[:-1].rstrip("."))]
    current = [value]
    for seg in path.split("."):
        m = _SEGMENT.match(seg)
        assert m, f"bad path segment {seg!r} in {path!r}"
        key, index = m.group(1), m.group(2)
        key = "" if key == '""' else key
        nxt: list[Any] = []
        for v in current:
            if key or seg.startswith('""'):
                v = v.get(key, MISSING) if isinstance(v, dict) else MISSING
            if index is None or v is MISSING:
                nxt.append(v)
            elif not isinstance(v, list):
                nxt.append(MISSING)
            elif index == "[]":
                if not v:
                    raise ValueError(f"empty list before {seg!r}")
                nxt.extend(v)
            else:
                i = int(index[1:-1])
                nxt.append(v[i] if i < len(v) else MISSING)
        current = nxt
    return current


def field_problems(spec: str, s_body: Any, m_body: Any) -> list[str]:
    nullable = spec.endswith("?")
    optional = spec.endswith("~")
    path = spec.rstrip("?~")
    try:
        s_vals = resolve(s_body, path)
    except ValueError as err:
        return [f"{path}: Synapse's answer has nothing to compare ({err}); the test world is wrong"]
    try:
        m_vals = resolve(m_body, path)
    except ValueError as err:
        return [f"{path}: moss's list is empty ({err}) where Synapse's is not"]
    s_types = {_jtype(v) for v in s_vals}
    m_types = {_jtype(v) for v in m_vals}
    if "absent" in s_types:
        if optional:
            return []
        return [f"{path}: absent on Synapse too: the field list is wrong"]
    if "absent" in m_types:
        return [f"{path}: missing on moss (Synapse: {sorted(s_types)})"]
    if nullable:
        s_types.discard("null")
        m_types.discard("null")
        if not s_types or not m_types:
            return []
    if s_types != m_types:
        return [f"{path}: type {sorted(m_types)} on moss, {sorted(s_types)} on Synapse"]
    return []


Same = str | tuple[str, Callable[[Any], Any]]


@dataclass
class Call:
    """One admin call made on both servers."""

    name: str
    method: str
    path: str  # with {symbols} from Side.vars()
    token: str | None = "admin"
    body: Any = NO_BODY  # a value, or a function of the Side giving it
    query: dict[str, Any] | None = None
    fields: tuple[str, ...] = ()
    same: tuple[Same, ...] = ()


class Comparison:
    """Runs calls on both sides and gathers differences, reported at the end of the test."""

    def __init__(self, pair: Pair):
        self.pair = pair
        self.failures: list[str] = []
        self.known: list[str] = []
        self.fixed: list[str] = []

    def run(self, c: Call) -> tuple[Answer, Answer]:
        answers = []
        for side in self.pair.sides():
            body = c.body(side) if callable(c.body) else c.body
            answers.append(side.call(c.method, c.path.format(**side.vars()), c.token, body=body, query=c.query))
        s, m = answers
        problems = self.problems(c, s, m)
        self.record(c.name, f"{c.method} {c.path}" + (f"?{urlencode(c.query)}" if c.query else ""), problems, s, m)
        return s, m

    def problems(self, c: Call, s: Answer, m: Answer) -> list[str]:
        if s.status != m.status:
            return [f"status {m.status} on moss, {s.status} on Synapse"]
        if s.status >= 400:
            if s.errcode() != m.errcode():
                return [f"errcode {m.errcode()!r} on moss, {s.errcode()!r} on Synapse"]
            return []
        out: list[str] = []
        for spec in c.fields:
            out += field_problems(spec, s.body, m.body)
        for same in c.same:
            label, get = (same, None) if isinstance(same, str) else same
            try:
                if get is None:
                    s_val = [self.pair.synapse.normalize(v) for v in resolve(s.body, label)]
                    m_val = [self.pair.moss.normalize(v) for v in resolve(m.body, label)]
                else:
                    s_val, m_val = get(self.pair.synapse.normalize(s.body)), get(self.pair.moss.normalize(m.body))
            except (ValueError, KeyError, TypeError, IndexError) as err:
                out.append(f"value {label}: cannot compare ({err!r})")
                continue
            if s_val != m_val:
                out.append(f"value {label}: {m_val!r} on moss, {s_val!r} on Synapse")
        return out

    def record(self, name: str, call: str, problems: list[str], s: Answer, m: Answer) -> None:
        known = KNOWN_DIFFERENCES.get(name)
        if problems:
            text = (f"[{name}] {call}\n  - " + "\n  - ".join(problems)
                    + f"\n  Synapse: {s.short()}\n  moss:    {m.short()}")
            (self.known if known else self.failures).append(text + (f"\n  (known: {known})" if known else ""))
        elif known:
            self.fixed.append(f"[{name}] now matches Synapse: remove it from KNOWN_DIFFERENCES ({known})")

    def note(self, name: str, problem: str | None, s: Answer, m: Answer, call: str) -> None:
        """A check the test computed itself (not a field/value of one call)."""
        self.record(name, call, [problem] if problem else [], s, m)

    def done(self) -> None:
        if self.failures or self.fixed:
            pytest.fail("moss differs from Synapse:\n" + "\n".join(self.failures + self.fixed), pytrace=False)
        if self.known:
            pytest.xfail("known differences:\n" + "\n".join(self.known))


@pytest.fixture
def cmp(pair: Pair) -> Comparison:
    return Comparison(pair)


# --------------------------------------------------------------------------- field lists (from synapse-admin)

USER_LISTED = ("name", "displayname?", "avatar_url?", "is_guest", "admin", "deactivated", "locked", "erased",
               "creation_ts", "user_type?", "shadow_banned", "approved~", "last_seen_ts?")
USERS_LIST = tuple(f"users[].{f}" for f in USER_LISTED) + ("total",)
USER_DETAILS = ("name", "displayname?", "avatar_url?", "user_type?", "admin", "locked", "deactivated", "erased",
                "creation_ts", "consent_version?", "threepids", "external_ids", "is_guest", "shadow_banned",
                "suspended", "appservice_id?", "consent_server_notice_sent?", "consent_ts?", "last_seen_ts?")
DEVICE = ("device_id", "display_name?", "last_seen_ip?", "last_seen_ts?", "user_id", "last_seen_user_agent?")
MEDIA = ("media_id", "created_ts", "last_access_ts?", "media_length", "media_type", "upload_name",
         "quarantined_by?", "safe_from_quarantine")
ROOM_LISTED = ("room_id", "name?", "canonical_alias?", "joined_members", "joined_local_members", "encryption?",
               "federatable", "public", "state_events", "version", "creator", "join_rules?", "guest_access?",
               "history_visibility?", "room_type?")
REPORT_LISTED = ("id", "received_ts", "user_id", "score?", "name?", "reason?", "room_id", "event_id", "sender",
                 "canonical_alias?")
TOKEN = ("token", "uses_allowed?", "pending", "completed", "expiry_time?")
WHOIS = ("user_id", 'devices."".sessions[0].connections[].ip', 'devices."".sessions[0].connections[].last_seen',
         'devices."".sessions[0].connections[].user_agent')


def _names(body: Any) -> list[str]:
    return [u["name"] for u in body["users"]]


def _seeded_order(body: Any) -> list[str]:
    seeded = {f"@{u}:SERVER" for u in SEEDED_USERS}
    return [n for n in _names(body) if n in seeded]


def _newest_first(body: Any) -> bool:
    # Synapse keeps creation times in seconds (the list multiplies by 1000), so users made in the
    # same second tie there and not in moss: compare the ordering property, not the order.
    ts = [u["creation_ts"] for u in body["users"]]
    return ts == sorted(ts, reverse=True)


# --------------------------------------------------------------------------- read-only calls

READ_ONLY = [
    Call("server_version", "GET", "/_synapse/admin/v1/server_version", token=None, fields=("server_version",)),
    Call("users list (synapse-admin default)", "GET", "/_synapse/admin/v2/users",
         query={"from": 0, "limit": 10, "guests": "true", "deactivated": "false", "locked": "false",
                "order_by": "name", "dir": "f"},
         fields=USERS_LIST, same=(("seeded users in order", _seeded_order),)),
    Call("users list name=alice", "GET", "/_synapse/admin/v2/users",
         query={"from": 0, "limit": 10, "guests": "true", "deactivated": "false", "name": "alice"},
         fields=USERS_LIST, same=("total", "users[].name", "users[].admin")),
    Call("users list from/limit next_token", "GET", "/_synapse/admin/v2/users", query={"from": 0, "limit": 2},
         fields=(*USERS_LIST, "next_token"), same=("users#", "next_token")),
    Call("users list order_by=creation_ts dir=b", "GET", "/_synapse/admin/v2/users",
         query={"order_by": "creation_ts", "dir": "b", "limit": 50},
         fields=USERS_LIST, same=(("sorted newest first", _newest_first),
                                  ("seeded users", lambda b: sorted(_seeded_order(b))))),
    Call("users list bad dir", "GET", "/_synapse/admin/v2/users", query={"dir": "x"}),
    Call("users list bad order_by", "GET", "/_synapse/admin/v2/users", query={"order_by": "id"}),
    Call("users list negative from", "GET", "/_synapse/admin/v2/users", query={"from": -1}),
    Call("users list as non-admin", "GET", "/_synapse/admin/v2/users", token="alice"),
    Call("users list without token", "GET", "/_synapse/admin/v2/users", token=None),
    Call("user get", "GET", "/_synapse/admin/v2/users/{bob_q}", fields=USER_DETAILS,
         same=("name", "admin", "deactivated", ("creation_ts is seconds", lambda b: b["creation_ts"] < 10**11))),
    Call("user get admin", "GET", "/_synapse/admin/v2/users/{admin_q}", fields=USER_DETAILS, same=("admin",)),
    Call("user get unknown", "GET", "/_synapse/admin/v2/users/{nobody_q}"),
    Call("user get remote", "GET", "/_synapse/admin/v2/users/{remote_q}"),
    Call("user get as non-admin", "GET", "/_synapse/admin/v2/users/{bob_q}", token="alice"),
    Call("whois", "GET", "/_synapse/admin/v1/whois/{bob_q}", fields=WHOIS,
         same=("user_id", 'devices."".sessions[0].connections[].user_agent')),
    Call("whois remote", "GET", "/_synapse/admin/v1/whois/{remote_q}"),
    Call("whois self as non-admin", "GET", "/_synapse/admin/v1/whois/{bob_q}", token="bob", fields=WHOIS),
    Call("whois other as non-admin", "GET", "/_synapse/admin/v1/whois/{bob_q}", token="alice"),
    Call("client-server whois (v3)", "GET", "/_matrix/client/v3/admin/whois/{bob_q}", fields=WHOIS,
         same=("user_id",)),
    Call("client-server whois (v3) self", "GET", "/_matrix/client/v3/admin/whois/{bob_q}", token="bob",
         fields=WHOIS),
    Call("client-server whois (v3) other as non-admin", "GET", "/_matrix/client/v3/admin/whois/{bob_q}",
         token="alice"),
    Call("devices list", "GET", "/_synapse/admin/v2/users/{bob_q}/devices",
         fields=(*(f"devices[].{f}" for f in DEVICE), "total"),
         same=("total", "devices[].device_id", "devices[].display_name", "devices[].user_id")),
    Call("device get", "GET", "/_synapse/admin/v2/users/{bob_q}/devices/{bob_device_q}", fields=DEVICE,
         same=("device_id", "display_name", "user_id")),
    Call("device get unknown", "GET", "/_synapse/admin/v2/users/{bob_q}/devices/NOSUCHDEVICE"),
    Call("devices of unknown user", "GET", "/_synapse/admin/v2/users/{nobody_q}/devices"),
    Call("joined_rooms", "GET", "/_synapse/admin/v1/users/{alice_q}/joined_rooms",
         fields=("joined_rooms", "total"), same=("total", ("rooms", lambda b: sorted(b["joined_rooms"])))),
    Call("user media (synapse-admin tab)", "GET", "/_synapse/admin/v1/users/{bob_q}/media",
         query={"from": 0, "limit": 50, "order_by": "created_ts", "dir": "b"},
         fields=(*(f"media[].{f}" for f in MEDIA), "total"),
         same=("total", "media[].media_id", "media[].upload_name", "media[].media_type",
               "media[].safe_from_quarantine", "media[].quarantined_by")),
    Call("user media default order + next_token", "GET", "/_synapse/admin/v1/users/{bob_q}/media",
         query={"limit": 1}, fields=(*(f"media[].{f}" for f in MEDIA), "total", "next_token"),
         same=("media[].media_id", "next_token")),
    Call("user media of unknown user", "GET", "/_synapse/admin/v1/users/{nobody_q}/media"),
    Call("user media of remote user", "GET", "/_synapse/admin/v1/users/{remote_q}/media"),
    Call("pushers", "GET", "/_synapse/admin/v1/users/{bob_q}/pushers",
         fields=("pushers[].kind", "pushers[].app_display_name", "pushers[].app_id", "pushers[].data.url",
                 "pushers[].device_display_name", "pushers[].lang", "pushers[].profile_tag?", "pushers[].pushkey",
                 "total"),
         same=("total", "pushers[].kind", "pushers[].app_id", "pushers[].pushkey", "pushers[].data.url",
               "pushers[].app_display_name", "pushers[].device_display_name", "pushers[].lang",
               "pushers[].profile_tag")),
    Call("pushers of unknown user", "GET", "/_synapse/admin/v1/users/{nobody_q}/pushers"),
    Call("rooms list (synapse-admin default)", "GET", "/_synapse/admin/v1/rooms",
         query={"from": 0, "limit": 10, "order_by": "name", "dir": "f"},
         fields=(*(f"rooms[].{f}" for f in ROOM_LISTED), "total_rooms", "offset"),
         same=("total_rooms", "rooms[].name", "rooms[].canonical_alias", "rooms[].joined_members",
               "rooms[].joined_local_members", "rooms[].public", "rooms[].version", "rooms[].join_rules")),
    Call("rooms list search_term", "GET", "/_synapse/admin/v1/rooms",
         query={"from": 0, "limit": 10, "order_by": "name", "dir": "f", "search_term": "lounge"},
         fields=(*(f"rooms[].{f}" for f in ROOM_LISTED), "total_rooms"),
         same=("total_rooms", "rooms[].room_id", "rooms[].name", "rooms[].creator")),
    Call("rooms list search_term by alias localpart", "GET", "/_synapse/admin/v1/rooms",
         query={"search_term": "doomed"}, fields=("total_rooms", "rooms[].room_id"),
         same=("total_rooms", "rooms[].room_id")),
    Call("rooms list order_by=joined_members (default descending)", "GET", "/_synapse/admin/v1/rooms",
         query={"order_by": "joined_members"}, fields=("total_rooms", "rooms[].room_id"),
         same=(("seeded rooms in order", lambda b: [r["room_id"] for r in b["rooms"]
                                                    if r["room_id"] in ("<room>", "<doomed>")]),)),
    Call("rooms list from/limit next_batch", "GET", "/_synapse/admin/v1/rooms", query={"from": 0, "limit": 1},
         fields=("total_rooms", "next_batch", "offset"), same=("next_batch", "offset", "rooms#")),
    Call("rooms list empty search_term", "GET", "/_synapse/admin/v1/rooms", query={"search_term": ""}),
    Call("rooms list bad order_by", "GET", "/_synapse/admin/v1/rooms", query={"order_by": "nope"}),
    Call("room get", "GET", "/_synapse/admin/v1/rooms/{room_q}",
         fields=(*ROOM_LISTED, "topic?", "avatar?", "joined_local_devices", "forgotten"),
         same=("room_id", "name", "canonical_alias", "topic", "joined_members", "public", "creator", "version")),
    Call("room get unknown", "GET", "/_synapse/admin/v1/rooms/!nosuchroom:{server}"),
    Call("room members", "GET", "/_synapse/admin/v1/rooms/{room}/members", fields=("members", "total"),
         same=("total", ("members", lambda b: sorted(b["members"])))),
    Call("room state", "GET", "/_synapse/admin/v1/rooms/{room}/state",
         fields=("state[].type", "state[].state_key", "state[].content", "state[].sender", "state[].event_id",
                 "state[].origin_server_ts", "state[].room_id")),
    Call("room state (same state keys)", "GET", "/_synapse/admin/v1/rooms/{room}/state",
         same=(("state keys", lambda b: sorted((e["type"], e["state_key"]) for e in b["state"])),)),
    Call("room forward_extremities", "GET", "/_synapse/admin/v1/rooms/{room}/forward_extremities",
         fields=("count", "results[].event_id", "results[].state_group?", "results[].depth",
                 "results[].received_ts"),
         same=("count",)),
    Call("room block get (not blocked)", "GET", "/_synapse/admin/v1/rooms/{room_q}/block", fields=("block",),
         same=("block", ("keys", lambda b: sorted(b)))),
    Call("event_reports list (synapse-admin default)", "GET", "/_synapse/admin/v1/event_reports",
         query={"from": 0, "limit": 10, "order_by": "received_ts", "dir": "b"},
         fields=(*(f"event_reports[].{f}" for f in REPORT_LISTED), "total"),
         same=("total", "event_reports[].event_id", "event_reports[].reason", "event_reports[].score",
               "event_reports[].name", "event_reports[].canonical_alias", "event_reports[].user_id",
               "event_reports[].sender", "event_reports[].room_id")),
    Call("event_reports list from/limit next_token", "GET", "/_synapse/admin/v1/event_reports",
         query={"limit": 1}, fields=("total", "next_token", "event_reports[].id"),
         same=("next_token", "event_reports[].event_id")),
    Call("event_report get", "GET", "/_synapse/admin/v1/event_reports/{report1}",
         fields=(*REPORT_LISTED, "event_json.origin_server_ts", "event_json.origin~", "event_json.type",
                 "event_json.content.msgtype", "event_json.content.body", "event_json.sender",
                 "event_json.room_id", "event_json.auth_events", "event_json.prev_events", "event_json.depth",
                 "event_json.hashes", "event_json.signatures"),
         same=("event_id", "reason", "score", "event_json.type", "event_json.content", "event_json.sender",
               "name", "canonical_alias")),
    Call("event_report get bad id", "GET", "/_synapse/admin/v1/event_reports/abc"),
    Call("event_report get unknown", "GET", "/_synapse/admin/v1/event_reports/987654"),
    Call("user media statistics (synapse-admin default)", "GET", "/_synapse/admin/v1/statistics/users/media",
         query={"from": 0, "limit": 10, "order_by": "media_length", "dir": "b"},
         fields=("users[].user_id", "users[].displayname?", "users[].media_count", "users[].media_length", "total"),
         same=("total", "users[].user_id", "users[].displayname", "users[].media_count")),
    Call("user media statistics search_term", "GET", "/_synapse/admin/v1/statistics/users/media",
         query={"search_term": "bob"}, fields=("users[].user_id", "users[].media_count", "total"),
         same=("total", "users[].user_id")),
    Call("user media statistics empty search_term", "GET", "/_synapse/admin/v1/statistics/users/media",
         query={"search_term": ""}),
    Call("registration tokens list (empty)", "GET", "/_synapse/admin/v1/registration_tokens",
         fields=("registration_tokens",), same=("registration_tokens",)),
    Call("registration token unknown", "GET", "/_synapse/admin/v1/registration_tokens/nosuchtoken"),
]


@pytest.mark.parametrize("call", READ_ONLY, ids=[c.name for c in READ_ONLY])
def test_read_only(cmp: Comparison, call: Call) -> None:
    cmp.run(call)
    cmp.done()


# --------------------------------------------------------------------------- changes


def test_user_create_and_update(cmp: Comparison) -> None:
    # synapse-admin's create: the id raw in the path, the form's record as body.
    s, m = cmp.run(Call(
        "user create (PUT, 201)", "PUT", "/_synapse/admin/v2/users/{carol}",
        body={"id": "carol", "displayname": "Carol", "password": "carol's password", "admin": False,
              "threepids": [], "external_ids": []},
        fields=USER_DETAILS, same=("name", "displayname", "admin", "deactivated", "threepids", "external_ids")))

    keys = ("name", "user_type", "is_guest", "admin", "deactivated", "shadow_banned", "displayname", "creation_ts",
            "approved", "erased", "last_seen_ts", "locked", "threepids", "external_ids", "suspended")

    def full_record(side: Side) -> dict:
        # What synapse-admin's edit form sends back: the record it read, nulls stripped except
        # user_type, plus its own `id` and `creation_ts_ms`, with the display name edited.
        got = side.call("GET", f"/_synapse/admin/v2/users/{quote(side.ids['carol'], safe='')}")
        record = {k: v for k, v in got.body.items() if k in keys and (v is not None or k == "user_type")}
        record.update({"id": side.ids["carol"], "creation_ts_ms": got.body.get("creation_ts", 0) * 1000,
                       "displayname": "Carol Edited"})
        return record

    cmp.run(Call("user update (PUT full record, 200)", "PUT", "/_synapse/admin/v2/users/{carol_q}", body=full_record,
                 fields=USER_DETAILS, same=("name", "displayname", "admin", "deactivated", "locked")))
    cmp.run(Call("user update: admin=true", "PUT", "/_synapse/admin/v2/users/{carol_q}", body={"admin": True},
                 fields=USER_DETAILS, same=("admin",)))
    cmp.run(Call("user update: deactivated+locked", "PUT", "/_synapse/admin/v2/users/{carol_q}",
                 body={"deactivated": True, "locked": True}))
    cmp.run(Call("user update: admin not a bool", "PUT", "/_synapse/admin/v2/users/{carol_q}",
                 body={"admin": "yes"}))
    cmp.run(Call("user create: remote user", "PUT", "/_synapse/admin/v2/users/{remote_q}",
                 body={"displayname": "x"}))
    cmp.run(Call("user get after update", "GET", "/_synapse/admin/v2/users/{carol_q}", fields=USER_DETAILS,
                 same=("displayname", "admin")))
    cmp.done()


def test_deactivate_with_erase(cmp: Comparison) -> None:
    cmp.run(Call("deactivate erase", "POST", "/_synapse/admin/v1/deactivate/{victim_q}", body={"erase": True},
                 fields=("id_server_unbind_result",)))
    cmp.run(Call("user get after deactivate", "GET", "/_synapse/admin/v2/users/{victim_q}", fields=USER_DETAILS,
                 same=("deactivated", "erased", "displayname", "avatar_url")))
    cmp.run(Call("users list hides deactivated", "GET", "/_synapse/admin/v2/users",
                 query={"deactivated": "false", "name": "victim"}, fields=("total",), same=("total",)))
    cmp.run(Call("users list deactivated=true", "GET", "/_synapse/admin/v2/users",
                 query={"deactivated": "true", "name": "victim"}, fields=USERS_LIST,
                 same=("total", "users[].deactivated", "users[].erased")))
    cmp.run(Call("deactivate unknown user", "POST", "/_synapse/admin/v1/deactivate/{nobody_q}",
                 body={"erase": True}))
    cmp.run(Call("deactivate: erase not a bool", "POST", "/_synapse/admin/v1/deactivate/{victim_q}",
                 body={"erase": "yes"}))
    cmp.done()


def test_reset_password(cmp: Comparison, pair: Pair) -> None:
    cmp.run(Call("reset_password", "POST", "/_synapse/admin/v1/reset_password/{mallory_q}",
                 body={"new_password": "a new password", "logout_devices": False}, same=(("body", lambda b: b),)))
    # The new password works on both.
    answers = [http(side.hs.base_url, "POST", "/_matrix/client/v3/login", body={
        "type": "m.login.password", "identifier": {"type": "m.id.user", "user": "mallory"},
        "password": "a new password"}) for side in pair.sides()]
    cmp.note("login with the reset password", None if answers[0].status == answers[1].status == 200 else
             "login with the new password did not succeed on both", *answers, "POST /_matrix/client/v3/login")
    cmp.run(Call("reset_password unknown user", "POST", "/_synapse/admin/v1/reset_password/{nobody_q}",
                 body={"new_password": "x"}))
    cmp.run(Call("reset_password without new_password", "POST", "/_synapse/admin/v1/reset_password/{mallory_q}",
                 body={}))
    cmp.done()


def test_device_delete(cmp: Comparison) -> None:
    cmp.run(Call("device delete", "DELETE", "/_synapse/admin/v2/users/{mallory_q}/devices/{mallory_device2}",
                 same=(("body", lambda b: b),)))
    cmp.run(Call("device get after delete", "GET",
                 "/_synapse/admin/v2/users/{mallory_q}/devices/{mallory_device2}"))
    cmp.run(Call("device delete again (idempotent)", "DELETE",
                 "/_synapse/admin/v2/users/{mallory_q}/devices/{mallory_device2}"))
    cmp.run(Call("devices list after delete", "GET", "/_synapse/admin/v2/users/{mallory_q}/devices",
                 fields=("total", "devices[].device_id"), same=("total",)))
    cmp.done()


def test_room_block(cmp: Comparison) -> None:
    cmp.run(Call("room block put (unknown room, pre-emptive)", "PUT", "/_synapse/admin/v1/rooms/{preblocked}/block",
                 body={"block": True}, fields=("block",), same=("block", ("keys", lambda b: sorted(b)))))
    cmp.run(Call("room block get (blocked)", "GET", "/_synapse/admin/v1/rooms/{preblocked}/block",
                 fields=("block", "user_id"), same=("block", "user_id")))
    cmp.run(Call("room block put not a bool", "PUT", "/_synapse/admin/v1/rooms/{preblocked}/block",
                 body={"block": "yes"}))
    cmp.run(Call("room block put false", "PUT", "/_synapse/admin/v1/rooms/{preblocked}/block",
                 body={"block": False}, fields=("block",), same=("block",)))
    cmp.run(Call("room block get bad room id", "GET", "/_synapse/admin/v1/rooms/notaroom/block"))
    cmp.done()


def test_event_report_delete(cmp: Comparison) -> None:
    # synapse-admin sends the whole record as the DELETE body.
    def record(side: Side) -> Any:
        return side.call("GET", f"/_synapse/admin/v1/event_reports/{side.ids['report2']}").body

    cmp.run(Call("event_report delete", "DELETE", "/_synapse/admin/v1/event_reports/{report2}", body=record,
                 same=(("body", lambda b: b),)))
    cmp.run(Call("event_report get after delete", "GET", "/_synapse/admin/v1/event_reports/{report2}"))
    cmp.run(Call("event_report delete unknown", "DELETE", "/_synapse/admin/v1/event_reports/{report2}"))
    cmp.run(Call("event_reports list after delete", "GET", "/_synapse/admin/v1/event_reports",
                 fields=("total",), same=("total", "event_reports[].event_id")))
    cmp.done()


def test_media_protect_quarantine_delete(cmp: Comparison) -> None:
    media_of_bob = Call("", "GET", "/_synapse/admin/v1/users/{bob_q}/media",
                        query={"order_by": "created_ts", "dir": "f"})

    def listing(name: str, *same: Same) -> Call:
        return Call(name, media_of_bob.method, media_of_bob.path, query=media_of_bob.query,
                    fields=tuple(f"media[].{f}" for f in MEDIA), same=same)

    cmp.run(Call("media protect", "POST", "/_synapse/admin/v1/media/protect/{media1}", same=(("body", lambda b: b),)))
    cmp.run(listing("user media after protect", "media[].safe_from_quarantine"))
    cmp.run(Call("media unprotect", "POST", "/_synapse/admin/v1/media/unprotect/{media1}",
                 same=(("body", lambda b: b),)))
    cmp.run(Call("media quarantine", "POST", "/_synapse/admin/v1/media/quarantine/{server}/{media1}",
                 same=(("body", lambda b: b),)))
    cmp.run(Call("user media after quarantine", "GET", media_of_bob.path, query=media_of_bob.query,
                 fields=("media[0].quarantined_by", "media[1].quarantined_by?"),
                 same=(("quarantined", lambda b: [m["quarantined_by"] is not None for m in b["media"]]),)))
    cmp.run(Call("media unquarantine", "POST", "/_synapse/admin/v1/media/unquarantine/{server}/{media1}",
                 same=(("body", lambda b: b),)))
    cmp.run(listing("user media after unquarantine", "media[].quarantined_by"))
    cmp.run(Call("media delete", "DELETE", "/_synapse/admin/v1/media/{server}/{media2}",
                 fields=("deleted_media", "total"), same=("deleted_media", "total")))
    cmp.run(Call("media delete again (unknown)", "DELETE", "/_synapse/admin/v1/media/{server}/{media2}"))
    cmp.run(Call("media delete remote", "DELETE", "/_synapse/admin/v1/media/elsewhere.example/abcdef"))
    cmp.run(listing("user media after delete", "media[].media_id"))
    cmp.done()


def test_registration_tokens(cmp: Comparison) -> None:
    cmp.run(Call("registration token new (named)", "POST", "/_synapse/admin/v1/registration_tokens/new",
                 body={"token": "compare-1", "uses_allowed": 5}, fields=TOKEN,
                 same=("token", "uses_allowed", "pending", "completed", "expiry_time")))
    cmp.run(Call("registration token new (random, empty body)", "POST",
                 "/_synapse/admin/v1/registration_tokens/new", body={}, fields=TOKEN,
                 same=(("token length", lambda b: len(b["token"])), "uses_allowed", "expiry_time")))
    cmp.run(Call("registration token new (length 8)", "POST", "/_synapse/admin/v1/registration_tokens/new",
                 body={"length": 8}, same=(("token length", lambda b: len(b["token"])),)))
    cmp.run(Call("registration token new duplicate", "POST", "/_synapse/admin/v1/registration_tokens/new",
                 body={"token": "compare-1"}))
    cmp.run(Call("registration token new bad chars", "POST", "/_synapse/admin/v1/registration_tokens/new",
                 body={"token": "no spaces allowed"}))
    cmp.run(Call("registration token new expiry in the past", "POST", "/_synapse/admin/v1/registration_tokens/new",
                 body={"expiry_time": 1000}))
    cmp.run(Call("registration tokens list", "GET", "/_synapse/admin/v1/registration_tokens",
                 query={"valid": "true", "from": 0, "limit": 500, "order_by": "id", "dir": "f"},
                 fields=tuple(f"registration_tokens[].{f}" for f in TOKEN),
                 same=(("count", lambda b: len(b["registration_tokens"])),)))
    cmp.run(Call("registration token get", "GET", "/_synapse/admin/v1/registration_tokens/compare-1",
                 fields=TOKEN, same=("token", "uses_allowed")))
    # synapse-admin's edit sends the whole record.
    cmp.run(Call("registration token put (full record)", "PUT", "/_synapse/admin/v1/registration_tokens/compare-1",
                 body={"token": "compare-1", "uses_allowed": 10, "pending": 0, "completed": 0, "expiry_time": None},
                 fields=TOKEN, same=("token", "uses_allowed", "expiry_time")))
    cmp.run(Call("registration token put unknown", "PUT", "/_synapse/admin/v1/registration_tokens/nosuchtoken",
                 body={"uses_allowed": 1}))
    cmp.run(Call("registration token delete", "DELETE", "/_synapse/admin/v1/registration_tokens/compare-1",
                 same=(("body", lambda b: b),)))
    cmp.run(Call("registration token get after delete", "GET", "/_synapse/admin/v1/registration_tokens/compare-1"))
    cmp.run(Call("registration token delete unknown", "DELETE",
                 "/_synapse/admin/v1/registration_tokens/compare-1"))
    cmp.done()


def test_send_server_notice(cmp: Comparison) -> None:
    notice = {"content": {"msgtype": "m.text", "body": "maintenance tonight"}}

    def body_for(side: Side) -> dict:
        return {**notice, "user_id": side.ids["alice"]}

    cmp.run(Call("send_server_notice", "POST", "/_synapse/admin/v1/send_server_notice", body=body_for,
                 fields=("event_id",)))
    cmp.run(Call("send_server_notice again", "POST", "/_synapse/admin/v1/send_server_notice", body=body_for,
                 fields=("event_id",)))
    cmp.run(Call("send_server_notice unknown user", "POST", "/_synapse/admin/v1/send_server_notice",
                 body=lambda side: {**notice, "user_id": side.ids["nobody"]}))
    cmp.run(Call("send_server_notice remote user", "POST", "/_synapse/admin/v1/send_server_notice",
                 body=lambda side: {**notice, "user_id": side.ids["remote"]}))
    cmp.run(Call("send_server_notice without user_id", "POST", "/_synapse/admin/v1/send_server_notice",
                 body=notice))
    cmp.run(Call("send_server_notice without content", "POST", "/_synapse/admin/v1/send_server_notice",
                 body=lambda side: {"user_id": side.ids["alice"]}))
    cmp.run(Call("send_server_notice as non-admin", "POST", "/_synapse/admin/v1/send_server_notice",
                 token="alice", body=body_for))
    cmp.done()


def _wait_deleted(side: Side, delete_id: str) -> Answer:
    """Synapse deletes in the background: poll the task until it is no longer running."""
    deadline = time.monotonic() + 30
    while True:
        ans = side.call("GET", f"/_synapse/admin/v2/rooms/delete_status/{quote(delete_id, safe='')}")
        status = ans.body.get("status") if isinstance(ans.body, dict) else None
        if ans.status != 200 or status in ("complete", "failed") or time.monotonic() > deadline:
            return ans
        time.sleep(0.2)


def test_room_delete_v2(cmp: Comparison, pair: Pair) -> None:
    s, m = cmp.run(Call("room delete v2", "DELETE", "/_synapse/admin/v2/rooms/{doomed}", body={"block": False},
                        fields=("delete_id",)))
    if s.status != 200 or m.status != 200:
        cmp.done()
        return
    s_task, m_task = (_wait_deleted(side, ans.body["delete_id"]) for side, ans in zip(pair.sides(), (s, m)))
    task_fields = ("delete_id", "room_id", "status", "shutdown_room.kicked_users", "shutdown_room.failed_to_kick_users",
                   "shutdown_room.local_aliases", "shutdown_room.new_room_id?")
    problems = []
    if s_task.status != m_task.status:
        problems.append(f"status {m_task.status} on moss, {s_task.status} on Synapse")
    else:
        for spec in task_fields:
            problems += field_problems(spec, s_task.body, m_task.body)
        for path in ("status", "room_id", "shutdown_room.kicked_users", "shutdown_room.local_aliases",
                     "shutdown_room.failed_to_kick_users"):
            try:
                sv = pair.synapse.normalize(resolve(s_task.body, path))
                mv = pair.moss.normalize(resolve(m_task.body, path))
            except ValueError:
                continue
            if sv != mv:
                problems.append(f"value {path}: {mv!r} on moss, {sv!r} on Synapse")
    cmp.record("room delete_status by delete_id", "GET /_synapse/admin/v2/rooms/delete_status/{delete_id}",
               problems, s_task, m_task)

    cmp.run(Call("room delete_status by room", "GET", "/_synapse/admin/v2/rooms/{doomed}/delete_status",
                 fields=tuple(f"results[].{f}" for f in task_fields),
                 same=("results[].status", "results[].room_id", "results#")))
    cmp.run(Call("room get after delete", "GET", "/_synapse/admin/v1/rooms/{doomed_q}"))
    cmp.run(Call("rooms list after delete", "GET", "/_synapse/admin/v1/rooms", query={"search_term": "doomed"},
                 fields=("total_rooms",), same=("total_rooms",)))
    cmp.run(Call("mallory's joined_rooms after delete", "GET", "/_synapse/admin/v1/users/{mallory_q}/joined_rooms",
                 fields=("joined_rooms", "total"), same=("total",)))
    cmp.run(Call("room delete_status unknown room", "GET", "/_synapse/admin/v2/rooms/!nosuchroom:{server}/delete_status"))
    cmp.run(Call("room delete_status unknown id", "GET", "/_synapse/admin/v2/rooms/delete_status/nosuchid"))
    cmp.run(Call("room delete v2 without body", "DELETE", "/_synapse/admin/v2/rooms/!ghost:{server}"))
    # Synapse does not check that the room exists: the task completes with nothing to do.
    cmp.run(Call("room delete v2 unknown room", "DELETE", "/_synapse/admin/v2/rooms/!ghost:{server}", body={},
                 fields=("delete_id",)))
    cmp.run(Call("room delete v2 bad room id", "DELETE", "/_synapse/admin/v2/rooms/notaroom", body={}))
    cmp.done()


@pytest.mark.parametrize("kind", ["suspend", "lock"])
def test_client_server_account_moderation(cmp: Comparison, pair: Pair, kind: str) -> None:
    path = f"/_matrix/client/v1/admin/{kind}/{{alice_q}}"
    probe = pair.synapse.call("GET", path.format(**pair.synapse.vars()))
    if probe.status in (404, 405) or probe.errcode() == "M_UNRECOGNIZED":
        pytest.skip(f"Synapse {pair.synapse.call('GET', '/_synapse/admin/v1/server_version', None).body} does not "
                    f"have GET /_matrix/client/v1/admin/{kind}/{{userId}} ({probe.short()}): nothing to compare")
    key = "suspended" if kind == "suspend" else "locked"
    cmp.run(Call(f"{kind} get", "GET", path, fields=(key,), same=(key,)))
    cmp.run(Call(f"{kind} put", "PUT", path, body={key: True}, fields=(key,), same=(key,)))
    cmp.run(Call(f"{kind} get after put", "GET", path, fields=(key,), same=(key,)))
    cmp.run(Call(f"{kind} put false", "PUT", path, body={key: False}, fields=(key,), same=(key,)))
    cmp.run(Call(f"{kind} as non-admin", "GET", path, token="bob"))
    cmp.run(Call(f"{kind} remote user", "GET", f"/_matrix/client/v1/admin/{kind}/{{remote_q}}"))
    cmp.done()


def test_synapse_suspend(cmp: Comparison) -> None:
    """Synapse's own `PUT /_synapse/admin/v1/suspend/{userId}` (it has no client-server one yet)."""

    def keys(b: Any) -> dict:
        return {re.sub(r"^user_@(\w+):.*_suspended$", r"user_@\1:SERVER_suspended", k): v for k, v in b.items()}

    cmp.run(Call("synapse suspend put", "PUT", "/_synapse/admin/v1/suspend/{mallory_q}", body={"suspend": True},
                 same=(("body", keys),)))
    cmp.run(Call("user get while suspended", "GET", "/_synapse/admin/v2/users/{mallory_q}", fields=USER_DETAILS,
                 same=("suspended",)))
    cmp.run(Call("synapse suspend put false", "PUT", "/_synapse/admin/v1/suspend/{mallory_q}",
                 body={"suspend": False}, same=(("body", keys),)))
    cmp.run(Call("synapse suspend not a bool", "PUT", "/_synapse/admin/v1/suspend/{mallory_q}",
                 body={"suspend": "yes"}))
    cmp.run(Call("synapse suspend remote user", "PUT", "/_synapse/admin/v1/suspend/{remote_q}",
                 body={"suspend": True}))
    cmp.done()
