"""moss pushing to a real push gateway: Sygnal (Element's, the one behind matrix.org's
/_matrix/push/v1/notify), not a test double of the Push Gateway API.

Sygnal cannot reach APNs or FCM here, so the app is a web app: Sygnal's `webpush` pushkin takes
the browser's push subscription from the pusher (pushkey = the subscription's P-256 public key
`p256dh`, `data.endpoint` and `data.auth`), encrypts the payload it builds from moss's
notification (RFC 8291, aes128gcm), signs a VAPID JWT and POSTs the message to `endpoint`. The
one test double is the browser push service behind that endpoint (nothing real can run here):
an HTTP server in this test that keeps what arrives, holds the subscription's private key and
decrypts it, the way a browser would.

    moss --Push Gateway API--> Sygnal --Web Push (encrypted)--> push service (this test)

What Sygnal documents for webpush (docs/applications.md, sygnal/webpushpushkin.py in 0.17.0),
and what is asserted here:
- the payload has the notification's `room_id`, `room_name`, `room_alias`, `membership`,
  `event_id`, `sender`, `sender_display_name`, `user_is_target`, `type` (those with truthy
  values), `counts` flattened (`unread`, `missed_calls`), `content` without `formatted_body`,
  and the pusher's `data.default_payload` merged in; `prio` becomes the `Urgency` header
  (`low` for prio low, else `normal`); the pusher's `format: event_id_only` is moss's business
  (Sygnal forwards what it gets);
- a badge-only notification (no event: moss's push after a read receipt) is forwarded as
  `{"unread": N}`, unless the pusher's data has `events_only: true`, when Sygnal drops it;
- an endpoint answering 404 or 410 makes Sygnal list the pushkey in `rejected`: moss must then
  delete the pusher.

Needs Sygnal in its own venv (scripts/setup-sygnal.sh) named by MOSS_TEST_SYGNAL_PYTHON;
without it the module is skipped, unless MOSS_REQUIRE_SYGNAL=1 (scripts/test), when it fails.
One moss (push allowed to loopback over http) and one Sygnal serve the module; every failure
shows both logs.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import http_ece
import pytest
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from conftest import SERVER_NAME, register_user, unique_localpart

REPO_ROOT = Path(__file__).resolve().parents[3]
APP_ID = "org.moss.test.web"
VAPID_CONTACT = "push-test@moss.invalid"
# Sygnal's default webpush TTL (seconds), sent as the TTL header.
SYGNAL_TTL = 15 * 60
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 10.0
# moss evaluates and pushes in the background; Sygnal answers after the push service did. Both
# are fast on loopback; the margin is for a debug build on a busy 2-core machine.
WAIT_S = 15.0
LOG_TAIL_LINES = 60
NOTIFY_LINE = re.compile(r'"POST /_matrix/push/v1/notify HTTP/1\.[01]" (\d{3}) ')
WARNING_LINE = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")


# --------------------------------------------------------------------------- processes


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SHUTDOWN_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=SHUTDOWN_GRACE_S)


def _read(path: Path, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError as err:
        return f"<cannot read {path}: {err}>"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


@dataclass
class Proc:
    name: str
    log_path: Path
    proc: subprocess.Popen
    # Where the current test's part of the log starts.
    offset: int = 0

    def log(self) -> str:
        """This test's part of the log."""
        return _read(self.log_path, self.offset)

    def describe(self, lines: int = LOG_TAIL_LINES) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"EXITED ({code})"
        tail = "\n".join(self.log().splitlines()[-lines:])
        return f"--- {self.name} ({state}): last {lines} lines of {self.log_path} since this test started ---\n{tail}"


@dataclass
class Stack:
    moss_url: str
    sygnal_url: str
    moss: Proc
    sygnal: Proc
    # Sygnal's stdout/stderr (Twisted start-up, tracebacks outside logging).
    sygnal_out: Path
    vapid_public: ec.EllipticCurvePublicKey

    @property
    def notify_url(self) -> str:
        return f"{self.sygnal_url}/_matrix/push/v1/notify"

    def logs(self) -> str:
        out = "\n".join(_read(self.sygnal_out).splitlines()[-20:])
        return (
            f"\n{self.sygnal.describe()}\n--- Sygnal stdout/stderr ({self.sygnal_out}) ---\n{out}"
            f"\n{self.moss.describe()}"
        )

    def explain(self, message: str) -> str:
        return f"{message}{LOGS_MARKER}{self.logs()}"

    def notify_statuses(self) -> list[int]:
        """HTTP status of every /notify request Sygnal answered in this test (its access log)."""
        return [int(m.group(1)) for m in NOTIFY_LINE.finditer(self.sygnal.log())]

    def sygnal_warnings(self) -> list[str]:
        return [line for line in self.sygnal.log().splitlines() if WARNING_LINE.search(line)]


LOGS_MARKER = "\n=== Sygnal and moss logs ==="


def _sygnal_python() -> Path:
    configured = os.environ.get("MOSS_TEST_SYGNAL_PYTHON")
    if not configured:
        reason = (
            "Sygnal not configured: run scripts/setup-sygnal.sh and set "
            "MOSS_TEST_SYGNAL_PYTHON=$PWD/.venv-sygnal/bin/python"
        )
        if os.environ.get("MOSS_REQUIRE_SYGNAL") == "1":
            pytest.fail(f"MOSS_REQUIRE_SYGNAL=1 but {reason}")
        pytest.skip(reason)
    # Not resolved: a venv's python is a symlink, and resolving it would lose the venv.
    path = Path(configured)
    if not os.access(path, os.X_OK):
        pytest.fail(f"MOSS_TEST_SYGNAL_PYTHON={configured} is not an executable (scripts/setup-sygnal.sh)")
    return path


def _start_sygnal(python: Path, workdir: Path, vapid_key: Path) -> tuple[Proc, str, Path]:
    port = _free_port()
    log_path, out_path = workdir / "sygnal.log", workdir / "sygnal.out"
    config = {
        "log": {
            "setup": {
                "version": 1,
                "formatters": {"normal": {"format": "%(asctime)s [%(process)d] %(levelname)-5s %(name)s %(message)s"}},
                "handlers": {
                    "file": {"class": "logging.FileHandler", "formatter": "normal", "filename": str(log_path)}
                },
                # One file for Sygnal, its access log (sygnal.access) and Twisted.
                "root": {"handlers": ["file"], "level": "INFO"},
                "disable_existing_loggers": False,
            },
            "access": {"x_forwarded_for": False},
        },
        "http": {"bind_addresses": ["127.0.0.1"], "port": port},
        "metrics": {
            "prometheus": {"enabled": False},
            "opentracing": {"enabled": False},
            "sentry": {"enabled": False},
        },
        "apps": {
            APP_ID: {
                "type": "webpush",
                "vapid_private_key": str(vapid_key),
                "vapid_contact_email": VAPID_CONTACT,
                # As an operator would restrict it to the browsers' push services; here the one
                # push service is this test's, on loopback (the glob is matched to host:port).
                "allowed_endpoints": ["127.0.0.1:*"],
            }
        },
    }
    conf_path = workdir / "sygnal.yaml"
    conf_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
    env["SYGNAL_CONF"] = str(conf_path)
    # Sygnal would send pushes through a proxy from the environment: there is none to reach here.
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        env.pop(var, None)
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "sygnal.sygnal"], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
            stdout=out, stderr=subprocess.STDOUT,
        )
    return Proc("Sygnal", log_path, proc), f"http://127.0.0.1:{port}", out_path


def _start_moss(workdir: Path) -> tuple[Proc, str]:
    configured = os.environ.get("MOSS_BIN")
    binary = (Path(configured) if configured else REPO_ROOT / "target" / "debug" / "moss").resolve()
    if not binary.is_file():
        pytest.fail(f"moss binary not found at {binary}: build it first or set MOSS_BIN")
    port = _free_port()
    log_path = workdir / "moss.log"
    # moss reads every MOSS_* variable as configuration: none of the suite's own may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
    env.update(
        {
            "MOSS_DATA_DIR": str(workdir / "data"),
            "MOSS_HTTP__BIND": f"127.0.0.1:{port}",
            "MOSS_SERVER_NAME": SERVER_NAME,
            "MOSS_REGISTRATION": "open",
            "MOSS_RATE_LIMITS__ENABLED": "false",
            # Sygnal listens on loopback, over plain http.
            "MOSS_PUSH__ALLOW_HTTP": "true",
            "MOSS_PUSH__IP_RANGE_ALLOWLIST": '["127.0.0.1"]',
            "MOSS_LOG__LEVEL": "info,moss_core::push=debug",
            "RUST_BACKTRACE": "1",
            "NO_COLOR": "1",
        }
    )
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve"], cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Proc("moss", log_path, proc), f"http://127.0.0.1:{port}"


def _wait_up(p: Proc, url: str, others: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _answers(url):
        if p.proc.poll() is not None:
            pytest.fail(f"{p.name} exited during startup{LOGS_MARKER}{others}")
        if time.monotonic() > deadline:
            pytest.fail(f"{p.name} did not answer {url} within {STARTUP_TIMEOUT_S}s{LOGS_MARKER}{others}")
        time.sleep(0.1)


class _ReportLogs:
    """Attaches both logs to any failure in this module whose message lacks them."""

    def __init__(self, stack: Stack):
        self.stack = stack

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if report.failed and "stack" in getattr(item, "fixturenames", ()):
            if LOGS_MARKER not in str(report.longrepr):
                report.sections.append(("Sygnal and moss logs", self.stack.logs()))
        return report


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Stack]:
    python = _sygnal_python()
    workdir = tmp_path_factory.mktemp("push-sygnal")
    # The gateway operator's VAPID key pair (`vapid --gen` makes the same PEM).
    vapid = ec.generate_private_key(ec.SECP256R1())
    vapid_key = workdir / "vapid_private.pem"
    vapid_key.write_bytes(
        vapid.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sygnal, sygnal_url, sygnal_out = _start_sygnal(python, workdir, vapid_key)
    moss: Proc | None = None
    try:
        moss, moss_url = _start_moss(workdir)
        st = Stack(moss_url, sygnal_url, moss, sygnal, sygnal_out, vapid.public_key())
        _wait_up(sygnal, f"{sygnal_url}/health", st.logs())
        _wait_up(moss, f"{moss_url}/_matrix/client/versions", st.logs())
        plugin = _ReportLogs(st)
        pytestconfig.pluginmanager.register(plugin, "push-sygnal-logs")
        try:
            yield st
        finally:
            pytestconfig.pluginmanager.unregister(plugin)
    finally:
        _stop(moss.proc if moss else None)
        _stop(sygnal.proc)


@pytest.fixture(autouse=True)
def _mark_logs(stack: Stack) -> None:
    for p in (stack.moss, stack.sygnal):
        p.offset = _size(p.log_path)


# --------------------------------------------------------------------------- the push service


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    """A browser's push subscription (PushManager.subscribe): the endpoint and the keys."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def p256dh(self) -> str:
        point = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(point)

    def decrypt(self, message: dict[str, Any]) -> dict[str, Any]:
        plain = http_ece.decrypt(
            message["body"], private_key=self.private_key, auth_secret=self.auth, version="aes128gcm"
        )
        return json.loads(plain)


class PushService:
    """The browser push service: answers 201 Created, or 410 Gone for endpoints under /gone/."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.subscriptions: dict[str, Subscription] = {}
        self.arrived = asyncio.Event()
        self.runner: web.AppRunner | None = None

    def subscribe(self, gone: bool = False) -> Subscription:
        name = uuid.uuid4().hex
        path = f"/{'gone' if gone else 'push'}/{name}"
        sub = Subscription(f"http://127.0.0.1:{self.port}{path}", ec.generate_private_key(ec.SECP256R1()),
                           secrets.token_bytes(16))
        self.subscriptions[path] = sub
        return sub

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        sub = self.subscriptions.get(request.path)
        if sub is None:
            return web.Response(status=404, text="no such subscription")
        sub.messages.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        self.arrived.set()
        if request.path.startswith("/gone/"):
            return web.Response(status=410, text="push subscription has unsubscribed or expired")
        return web.Response(status=201, headers={"TTL": request.headers.get("TTL", "0")})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{kind}/{name}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def wait_messages(self, sub: Subscription, count: int, stack: Stack, what: str) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        end = loop.time() + WAIT_S
        while len(sub.messages) < count:
            remaining = end - loop.time()
            if remaining <= 0:
                pytest.fail(stack.explain(
                    f"{what}: the push service got {len(sub.messages)} message(s) at {sub.endpoint}, "
                    f"want {count}, within {WAIT_S}s; Sygnal answered /notify with {stack.notify_statuses()}"
                ))
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout=remaining)
            except asyncio.TimeoutError:
                pass
        return sub.messages


@pytest.fixture
async def push_service() -> Iterator[PushService]:
    service = PushService()
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def check_vapid(stack: Stack, sub: Subscription, headers: dict[str, str]) -> None:
    """What a push service checks before it accepts a message (RFC 8292): the JWT in
    `Authorization: vapid t=..., k=...` is signed (ES256) by the key `k`, which is the gateway's
    VAPID key, for this origin, not expired, with the operator's contact."""
    auth = headers.get("authorization", "")
    m = re.fullmatch(r"vapid t=([^,\s]+),\s*k=([^,\s]+)", auth)
    assert m, stack.explain(f"VAPID Authorization header: {auth!r}")
    token, k = m.groups()
    want_k = stack.vapid_public.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert unb64url(k) == want_k, stack.explain("VAPID k= is not the gateway's VAPID public key")
    head, claims, sig = token.split(".")
    raw = unb64url(sig)
    assert len(raw) == 64, stack.explain(f"ES256 signature of {len(raw)} bytes")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    try:
        stack.vapid_public.verify(der, f"{head}.{claims}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        pytest.fail(stack.explain("the VAPID JWT's signature does not verify"))
    assert json.loads(unb64url(head)).get("alg") == "ES256"
    c = json.loads(unb64url(claims))
    origin = sub.endpoint.split("/", 3)
    assert c.get("aud") == f"{origin[0]}//{origin[2]}", stack.explain(f"VAPID claims {c}")
    assert c.get("sub") == f"mailto:{VAPID_CONTACT}", stack.explain(f"VAPID claims {c}")
    assert c.get("exp", 0) > time.time(), stack.explain(f"VAPID claims {c}")


# --------------------------------------------------------------------------- Matrix


async def api(stack: Stack, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        async with session.request(
            method, f"{stack.moss_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            return resp.status, await resp.json(content_type=None)


async def ok(stack: Stack, method: str, path: str, token: str, body: Any = None) -> Any:
    status, data = await api(stack, method, path, token, body)
    assert status == 200, stack.explain(f"{method} {path}: HTTP {status} {data}")
    return data


@dataclass
class User:
    user_id: str
    token: str


async def new_user(stack: Stack, prefix: str, displayname: str) -> User:
    data = await register_user(stack.moss_url, unique_localpart(prefix), f"pw-{uuid.uuid4().hex}")
    user = User(data["user_id"], data["access_token"])
    await ok(stack, "PUT", f"/_matrix/client/v3/profile/{quote(user.user_id)}/displayname", user.token,
             {"displayname": displayname})
    return user


async def direct_chat(stack: Stack, alice: User, bob: User, name: str | None = None) -> str:
    """A DM from alice to bob (two members: `.m.rule.room_one_to_one` notifies with a sound)."""
    body: dict[str, Any] = {"preset": "trusted_private_chat", "invite": [bob.user_id], "is_direct": True}
    if name:
        body["name"] = name
    room_id = (await ok(stack, "POST", "/_matrix/client/v3/createRoom", alice.token, body))["room_id"]
    await ok(stack, "POST", f"/_matrix/client/v3/join/{quote(room_id)}", bob.token, {})
    return room_id


async def set_pusher(stack: Stack, user: User, sub: Subscription, **data: Any) -> dict[str, Any]:
    pusher = {
        "kind": "http",
        "app_id": APP_ID,
        "pushkey": sub.p256dh,
        "app_display_name": "moss web test",
        "device_display_name": "headless browser",
        "lang": "en",
        # Sygnal's webpush pushkin: the subscription's endpoint and auth secret ride in `data`.
        "data": {"url": stack.notify_url, "endpoint": sub.endpoint, "auth": b64url(sub.auth), **data},
        "append": True,
    }
    await ok(stack, "POST", "/_matrix/client/v3/pushers/set", user.token, pusher)
    return pusher


async def pushers(stack: Stack, user: User) -> list[dict[str, Any]]:
    return (await ok(stack, "GET", "/_matrix/client/v3/pushers", user.token))["pushers"]


async def send_text(stack: Stack, user: User, room_id: str, body: str) -> str:
    path = f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/{uuid.uuid4().hex}"
    return (await ok(stack, "PUT", path, user.token, {"msgtype": "m.text", "body": body}))["event_id"]


async def wait_notify_count(stack: Stack, count: int, what: str) -> list[int]:
    """Sygnal writes an access-log line when it answers /notify, i.e. once it has dispatched."""
    deadline = time.monotonic() + WAIT_S
    while len(statuses := stack.notify_statuses()) < count:
        if time.monotonic() > deadline:
            pytest.fail(stack.explain(f"{what}: Sygnal answered {len(statuses)} /notify requests, want {count}"))
        await asyncio.sleep(0.1)
    return statuses


# --------------------------------------------------------------------------- tests


async def test_message_and_badge_reach_the_browser_through_sygnal(stack: Stack, push_service: PushService):
    alice = await new_user(stack, "alice", "Alice Sygnal")
    bob = await new_user(stack, "bob", "Bob Sygnal")
    room_id = await direct_chat(stack, alice, bob, name="Web push check")

    # Two subscriptions of bob's: the full format, and an app that fetches events itself
    # (event_id_only) and wants no badge-only pushes (Sygnal's `events_only`) but its own
    # account marker in every message (Sygnal's `default_payload`).
    full = push_service.subscribe()
    await set_pusher(stack, bob, full)
    lean = push_service.subscribe()
    await set_pusher(stack, bob, lean, format="event_id_only", events_only=True,
                     default_payload={"account": bob.user_id})
    assert {p["pushkey"] for p in await pushers(stack, bob)} == {full.p256dh, lean.p256dh}

    event_id = await send_text(stack, alice, room_id, "hello")

    got = (await push_service.wait_messages(full, 1, stack, "alice's message, full format"))[0]
    payload = full.decrypt(got)
    print(f"\nSygnal -> browser (full format): {json.dumps(payload, sort_keys=True)}\n  headers: "
          + json.dumps({k: v for k, v in got["headers"].items() if k in ("content-encoding", "ttl", "urgency")}))
    assert payload == {
        "event_id": event_id,
        "room_id": room_id,
        "room_name": "Web push check",
        "type": "m.room.message",
        "sender": alice.user_id,
        "sender_display_name": "Alice Sygnal",
        "content": {"msgtype": "m.text", "body": "hello"},
        # counts.unread: the one room with an unread notification.
        "unread": 1,
    }, stack.explain(f"what Sygnal made of moss's push: {payload}")
    headers = got["headers"]
    assert headers.get("content-encoding") == "aes128gcm", stack.explain(f"headers {headers}")
    assert headers.get("ttl") == str(SYGNAL_TTL), stack.explain(f"headers {headers}")
    # A one-to-one message rings (sound tweak): moss says prio high, which Sygnal sends as
    # Urgency normal (low only for prio low).
    assert headers.get("urgency") == "normal", stack.explain(f"headers {headers}")
    check_vapid(stack, full, headers)

    got_lean = (await push_service.wait_messages(lean, 1, stack, "alice's message, event_id_only"))[0]
    lean_payload = lean.decrypt(got_lean)
    print(f"Sygnal -> browser (event_id_only, events_only, default_payload): {json.dumps(lean_payload, sort_keys=True)}")
    assert lean_payload == {"account": bob.user_id, "event_id": event_id, "room_id": room_id, "unread": 1}, (
        stack.explain(f"event_id_only: {lean_payload}")
    )
    assert got_lean["headers"].get("urgency") == "normal"
    check_vapid(stack, lean, got_lean["headers"])
    assert await wait_notify_count(stack, 2, "the message's two pushes") == [200, 200]

    # Bob reads it: moss sends a badge-only push (counts only, unread 0) to both pushers.
    await ok(stack, "POST", f"/_matrix/client/v3/rooms/{quote(room_id)}/receipt/m.read/{quote(event_id)}",
             bob.token, {})
    badge_msg = (await push_service.wait_messages(full, 2, stack, "the badge update after bob's receipt"))[1]
    badge = full.decrypt(badge_msg)
    print(f"Sygnal -> browser (badge-only push after the receipt): {json.dumps(badge)}; "
          f"Urgency {badge_msg['headers'].get('urgency')}")
    assert badge == {"unread": 0}, stack.explain(f"badge-only push as Sygnal forwards it: {badge}")
    assert badge_msg["headers"].get("urgency") == "normal"
    check_vapid(stack, full, badge_msg["headers"])
    # Both badge pushes answered (Sygnal answers once it has dispatched), and the events_only
    # subscription got nothing more: Sygnal dropped its badge-only push, as documented.
    assert await wait_notify_count(stack, 4, "the two badge pushes") == [200, 200, 200, 200], stack.explain("")
    assert len(lean.messages) == 1, stack.explain(f"events_only got {len(lean.messages)} messages")

    # moss's bodies went through without a complaint from Sygnal.
    assert stack.sygnal_warnings() == [], stack.explain("Sygnal logged warnings or errors")
    assert {p["pushkey"] for p in await pushers(stack, bob)} == {full.p256dh, lean.p256dh}


async def test_priority_becomes_the_web_push_urgency(stack: Stack, push_service: PushService):
    """In a group room a plain message notifies without a sound: moss says prio low, which Sygnal
    sends as `Urgency: low`; an encrypted event is prio high (as Synapse does), so `normal`."""
    alice = await new_user(stack, "alice", "Alice Group")
    bob = await new_user(stack, "bob", "Bob Group")
    carol = await new_user(stack, "carol", "Carol Group")
    body = {"preset": "private_chat", "name": "Three of us", "invite": [bob.user_id, carol.user_id]}
    room_id = (await ok(stack, "POST", "/_matrix/client/v3/createRoom", alice.token, body))["room_id"]
    for user in (bob, carol):
        await ok(stack, "POST", f"/_matrix/client/v3/join/{quote(room_id)}", user.token, {})
    sub = push_service.subscribe()
    await set_pusher(stack, bob, sub)

    plain_id = await send_text(stack, alice, room_id, "lunch?")
    encrypted = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg2yyOwAtHaZTwyNg37afzg8f3r9IsN9r4RNFg7MaZencUJe4qvELiDiopUjy5wYVDAtqdBzer5bWRD9ldxp1FLgbQvBcjkkywYjCsmsq6+hArLd9oAQZnGKn/qLxK2sK/t1ot/yZ7Tq9uyEFF8LMTjiCaQuFX69MBg0U",
        "device_id": "RJYKSTBOIE",
        "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
        "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
    }
    path = f"/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.encrypted/{uuid.uuid4().hex}"
    encrypted_id = (await ok(stack, "PUT", path, alice.token, encrypted))["event_id"]

    plain, secret = await push_service.wait_messages(sub, 2, stack, "a plain and an encrypted message")
    payloads = [sub.decrypt(plain), sub.decrypt(secret)]
    print(f"\nSygnal -> browser (group room, plain): {json.dumps(payloads[0], sort_keys=True)}; "
          f"Urgency {plain['headers'].get('urgency')}")
    print(f"Sygnal -> browser (group room, encrypted): {json.dumps(payloads[1], sort_keys=True)}; "
          f"Urgency {secret['headers'].get('urgency')}")
    common = {"room_id": room_id, "room_name": "Three of us", "sender": alice.user_id,
              "sender_display_name": "Alice Group", "unread": 1}
    assert payloads[0] == {**common, "event_id": plain_id, "type": "m.room.message",
                           "content": {"msgtype": "m.text", "body": "lunch?"}}, stack.explain(f"{payloads[0]}")
    assert plain["headers"].get("urgency") == "low", stack.explain(f"{plain['headers']}")
    # The ciphertext reaches the app (Sygnal drops only ciphertexts over 2000 characters).
    assert payloads[1] == {**common, "event_id": encrypted_id, "type": "m.room.encrypted",
                           "content": encrypted}, stack.explain(f"{payloads[1]}")
    assert secret["headers"].get("urgency") == "normal", stack.explain(f"{secret['headers']}")
    assert await wait_notify_count(stack, 2, "two pushes") == [200, 200]
    assert stack.sygnal_warnings() == [], stack.explain("Sygnal logged warnings or errors")


async def test_pushkey_that_sygnal_rejects_loses_its_pusher(stack: Stack, push_service: PushService):
    alice = await new_user(stack, "alice", "Alice Gone")
    bob = await new_user(stack, "bob", "Bob Gone")
    room_id = await direct_chat(stack, alice, bob)

    # The browser dropped this subscription: its push service answers 410 Gone, which Sygnal
    # turns into `rejected: [pushkey]`.
    gone = push_service.subscribe(gone=True)
    await set_pusher(stack, bob, gone)
    assert [p["pushkey"] for p in await pushers(stack, bob)] == [gone.p256dh]

    event_id = await send_text(stack, alice, room_id, "anyone there?")
    attempt = (await push_service.wait_messages(gone, 1, stack, "the push to a gone subscription"))[0]
    # Sygnal did build the message (it got as far as the push service).
    assert gone.decrypt(attempt)["event_id"] == event_id
    assert await wait_notify_count(stack, 1, "the push to a gone subscription") == [200]

    deadline = time.monotonic() + 10
    while (left := await pushers(stack, bob)):
        if time.monotonic() > deadline:
            pytest.fail(stack.explain(f"moss kept the pusher Sygnal rejected: {left}"))
        await asyncio.sleep(0.2)

    sygnal_log = stack.sygnal.log()
    assert f"Rejecting pushkey {gone.p256dh}; subscription is invalid" in sygnal_log, stack.explain("")
    assert "rejected a pushkey; pusher removed" in stack.moss.log(), stack.explain("")
    # The rejection's own warning is the only one.
    others = [w for w in stack.sygnal_warnings() if "Rejecting pushkey" not in w]
    assert others == [], stack.explain("Sygnal logged other warnings or errors")
    print("\nSygnal's log for the rejection:\n" + "\n".join(
        line for line in sygnal_log.splitlines() if "ejected" in line or "Rejecting" in line))
