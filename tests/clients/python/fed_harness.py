"""A moss and a real Synapse federating with each other on loopback, for interop tests.

Both servers are named `localhost:PORT`, PORT being their federation (TLS) port, so each finds
the other with no discovery (explicit port: no .well-known, no SRV). Each has a self-signed
certificate and accepts the other's (`federation.verify_certificates = false` in moss,
`federation_verify_certificates: false` in Synapse), and each lets federation reach loopback,
which both block by default.

The `fed` fixture starts one pair per test module; tests register freshly named users on it.
This module starts its own moss, independent of conftest's session server.

Synapse comes from PyPI in its own virtualenv: `MOSS_TEST_SYNAPSE_PYTHON` names its Python
(default: `.venv-synapse/bin/python` at the repository root). The Synapse part follows
tests/fixtures/synapse_media.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import nio
import pytest

from ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
STARTUP_TIMEOUT_S = 60.0
SHUTDOWN_GRACE_S = 15.0
LOG_TAIL_LINES = 60
# How long one "wait until the other server shows X" may take. Federation on loopback is
# normally sub-second; Synapse's retry back-off (capped at 5 s below) and a debug build of moss
# on a busy 2-core machine need the margin.
WAIT_S = 30.0
SYNC_POLL_MS = 1000
HTTP_TIMEOUT_S = 30.0
SHARED_SECRET = "fed-harness-secret"
T = TypeVar("T")



def self_signed(dir: Path, kind: str) -> tuple[Path, Path]:
    """A self-signed certificate for `localhost` / 127.0.0.1 (the openssl CLI)."""
    cert, key = dir / "fed.crt", dir / "fed.key"
    key_args = (
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"] if kind == "ec" else ["-newkey", "rsa:2048"]
    )
    out = subprocess.run(
        ["openssl", "req", "-x509", *key_args, "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, f"openssl failed: {out.stderr}"
    return cert, key


def _tail(path: Path, lines: int, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError as err:
        return f"<cannot read {path}: {err}>"
    return "\n".join(text.splitlines()[-lines:])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _versions_ok(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_matrix/client/versions", timeout=2) as resp:
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


# --------------------------------------------------------------------------- servers


@dataclass
class Homeserver:
    """What tests need of either server: names, URLs, the log, the process."""

    kind: str  # "moss" or "synapse"
    workdir: Path
    fed_port: int
    client_port: int
    log_path: Path
    proc: subprocess.Popen | None = None
    # Where the current test's part of the log starts (see `mark_logs`).
    log_offset: int = 0
    # What else stopping it stops (a cluster's second process and its proxy).
    also_stop: list[Callable[[], None]] = field(default_factory=list)
    # Behind a reverse proxy (start_synapse(behind_proxy=True)): where Synapse itself listens,
    # plain HTTP, while the proxy holds client_port and the TLS fed_port.
    internal_client_port: int = 0
    internal_fed_port: int = 0

    @property
    def server_name(self) -> str:
        return f"localhost:{self.fed_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def user_id(self, localpart: str) -> str:
        return f"@{localpart}:{self.server_name}"

    def describe(self, lines: int = LOG_TAIL_LINES) -> str:
        code = self.proc.poll() if self.proc else "never started"
        state = "running" if code is None else f"EXITED ({code})"
        return (
            f"--- {self.kind} {self.server_name} ({state}; client API {self.base_url}; {self.workdir}) "
            f"last {lines} lines of {self.log_path} since this test started ---\n"
            f"{_tail(self.log_path, lines, self.log_offset)}"
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _versions_ok(self.base_url):
            if self.proc.poll() is not None:
                pytest.fail(f"{self.kind} exited during startup\n{self.describe()}")
            if time.monotonic() > deadline:
                _stop(self.proc)
                pytest.fail(f"{self.kind} did not answer /versions within {STARTUP_TIMEOUT_S}s\n{self.describe()}")
            time.sleep(0.2)

    def stop(self) -> None:
        for stop in self.also_stop:
            stop()
        _stop(self.proc)


def moss_binary() -> Path:
    configured = os.environ.get("MOSS_BIN")
    path = Path(configured) if configured else REPO_ROOT / "target" / "debug" / "moss"
    return path.resolve()


def synapse_python() -> Path:
    configured = os.environ.get("MOSS_TEST_SYNAPSE_PYTHON")
    # Not resolved: a venv's python is a symlink, and resolving it would lose the venv.
    return Path(configured) if configured else REPO_ROOT / ".venv-synapse" / "bin" / "python"


def start_moss(workdir: Path) -> Homeserver:
    binary = moss_binary()
    if not binary.is_file():
        pytest.fail(f"moss binary not found at {binary}: build it first or set MOSS_BIN")
    workdir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("MOSS_TEST_CLUSTER") == "postgres":
        return start_moss_cluster(binary, workdir)
    cert, key = self_signed(workdir, "ec")
    hs = Homeserver("moss", workdir, free_port(), free_port(), workdir / "moss.log")
    # moss reads every MOSS_* variable as configuration and rejects unknown keys: none of the
    # suite's own (MOSS_BIN, MOSS_TEST_*) may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
    env.update(
        {
            "MOSS_DATA_DIR": str(workdir / "data"),
            "MOSS_HTTP__BIND": f"127.0.0.1:{hs.client_port}",
            "MOSS_SERVER_NAME": hs.server_name,
            "MOSS_REGISTRATION": "open",
            "MOSS_RATE_LIMITS__ENABLED": "false",
            "MOSS_DATABASE__SYNCHRONOUS": "normal",
            "MOSS_FEDERATION__ENABLED": "true",
            "MOSS_FEDERATION__BIND": f"127.0.0.1:{hs.fed_port}",
            "MOSS_FEDERATION__TLS_CERTIFICATE": str(cert),
            "MOSS_FEDERATION__TLS_PRIVATE_KEY": str(key),
            "MOSS_FEDERATION__VERIFY_CERTIFICATES": "false",
            "MOSS_FEDERATION__IP_RANGE_ALLOWLIST": '["127.0.0.1/32", "::1/128"]',
            "MOSS_LOG__LEVEL": os.environ.get("MOSS_TEST_FED_LOG", "info"),
            "RUST_BACKTRACE": "1",
            "NO_COLOR": "1",
        }
    )
    with open(hs.log_path, "wb") as log:
        hs.proc = subprocess.Popen(
            [str(binary), "serve"], cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
    return hs


def start_moss_cluster(binary: Path, workdir: Path) -> Homeserver:
    """MOSS_TEST_CLUSTER=postgres: two moss processes on one PostgreSQL database behind nginx,
    which terminates federation's TLS (as the Ansible role's site does) and passes client and
    federation requests to either process in turn. Synapse sees one server."""
    from conftest import _create_postgres_database, nginx_config

    cert, key = self_signed(workdir, "ec")
    hs = Homeserver("moss", workdir, free_port(), free_port(), workdir / "moss.log")
    members = [(free_port(), free_port()) for _ in range(2)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
    env.update({
        "MOSS_DATA_DIR": str(workdir / "data"),
        "MOSS_DATABASE__URL": _create_postgres_database(),
        "MOSS_HTTP__TRUSTED_PROXIES": '["127.0.0.1/32"]',
        "MOSS_PUBLIC_BASEURL": hs.base_url,
        "MOSS_SERVER_NAME": hs.server_name,
        "MOSS_REGISTRATION": "open",
        "MOSS_RATE_LIMITS__ENABLED": "false",
        "MOSS_FEDERATION__ENABLED": "true",
        "MOSS_FEDERATION__VERIFY_CERTIFICATES": "false",
        "MOSS_FEDERATION__IP_RANGE_ALLOWLIST": '["127.0.0.1/32", "::1/128"]',
        "MOSS_LOG__LEVEL": os.environ.get("MOSS_TEST_FED_LOG", "info"),
        "RUST_BACKTRACE": "1",
        "NO_COLOR": "1",
    })
    procs = []
    for i, (client_port, fed_port) in enumerate(members):
        log_path = hs.log_path if i == 0 else workdir / "moss-b.log"
        member_env = {**env, "MOSS_HTTP__BIND": f"127.0.0.1:{client_port}",
                      "MOSS_FEDERATION__BIND": f"127.0.0.1:{fed_port}"}
        with open(log_path, "wb") as log:
            procs.append(subprocess.Popen([str(binary), "serve"], cwd=workdir, env=member_env,
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT))
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    upstream = lambda ports: "\n".join(f"        server 127.0.0.1:{p};" for p in ports)  # noqa: E731
    proxy = """proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;"""
    (nginx_dir / "nginx.conf").write_text(nginx_config(nginx_dir, f"""
    client_max_body_size 110m;
    # Bodies streamed, never spooled (nginx's workers cannot write into pytest's directories).
    proxy_request_buffering off;
    proxy_read_timeout 120s;
    upstream moss_client {{
{upstream(c for c, _ in members)}
        keepalive 16;
    }}
    upstream moss_federation {{
{upstream(f for _, f in members)}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{hs.client_port};
        location / {{ proxy_pass http://moss_client; {proxy} }}
    }}
    server {{
        listen 127.0.0.1:{hs.fed_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{ proxy_pass http://moss_federation; {proxy} }}
    }}
"""))
    conf = ["nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")]
    subprocess.run(conf, check=True)
    hs.proc = procs[0]
    hs.also_stop = [lambda: subprocess.run([*conf, "-s", "stop"], capture_output=True), lambda: _stop(procs[1])]
    return hs


def start_synapse(workdir: Path, behind_proxy: bool = False) -> Homeserver:
    """A Synapse on SQLite. With `behind_proxy`, it listens on two internal plain-HTTP ports
    (client, federation) and the caller puts a proxy on `client_port` and, with TLS, `fed_port`."""
    python = synapse_python()
    if not python.exists():
        pytest.fail(
            f"Synapse's python not found at {python}: `python3 -m venv .venv-synapse && "
            f".venv-synapse/bin/pip install 'matrix-synapse==1.163.*'`, or set MOSS_TEST_SYNAPSE_PYTHON"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    hs = Homeserver("synapse", workdir, free_port(), free_port(), workdir / "synapse.log")
    generated = workdir / "homeserver.yaml"
    subprocess.run(
        [str(python), "-m", "synapse.app.homeserver", "--server-name", hs.server_name, "--config-path",
         str(generated), "--data-directory", str(workdir), "--generate-config", "--report-stats=no"],
        check=True, cwd=workdir, stdout=subprocess.DEVNULL,
    )
    cert, key = self_signed(workdir, "rsa")

    # The generated log config buffers INFO lines for up to 5 s: failure reports would quote a
    # stale log. Log straight to a file instead.
    log_config = workdir / "log.yaml"
    log_config.write_text(json.dumps({
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                                             "%(request)s - %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": str(hs.log_path), "encoding": "utf8"}},
        "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }))

    # Synapse merges the top-level keys of every `-c` file, later files winning: the generated
    # file keeps its secrets and signing key, this one (JSON is YAML) sets up the test server.
    rate = {"per_second": 1000, "burst_count": 1000}
    listeners = [
        {"port": hs.client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "x_forwarded": False,
         "resources": [{"names": ["client"], "compress": False}]},
        {"port": hs.fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": True,
         "x_forwarded": False, "resources": [{"names": ["federation"], "compress": False}]},
    ]
    if behind_proxy:
        hs.internal_client_port, hs.internal_fed_port = free_port(), free_port()
        listeners = [
            {"port": hs.internal_client_port, "bind_addresses": ["127.0.0.1"], "type": "http", "x_forwarded": True,
             "resources": [{"names": ["client"], "compress": False}]},
            {"port": hs.internal_fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "x_forwarded": True,
             "resources": [{"names": ["federation"], "compress": False}]},
        ]
    overrides: dict[str, Any] = {
        "listeners": listeners,
        "log_config": str(log_config),
        "tls_certificate_path": str(cert),
        "tls_private_key_path": str(key),
        "federation_verify_certificates": False,
        # Synapse's default blocklist covers loopback; moss listens there.
        "ip_range_whitelist": ["127.0.0.1", "::1"],
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        # After a failed delivery Synapse backs off 4 s, 16 s, 60 s...: keep retries short.
        "federation": {"max_long_retry_delay": "5s"},
        "registration_shared_secret": SHARED_SECRET,
        "enable_registration": False,
        "presence": {"enabled": False},
        "remote_media_download_per_second": "1000M",
        "rc_login": {"address": rate, "account": rate, "failed_attempts": rate},
        "rc_federation": {"window_size": 1000, "sleep_limit": 1000, "sleep_delay": 1, "reject_limit": 1000,
                          "concurrent": 100},
        "rc_joins": {"local": rate, "remote": rate},
    }
    if behind_proxy:
        overrides["public_baseurl"] = f"{hs.base_url}/"
    for name in ["rc_message", "rc_registration", "rc_media_create", "rc_joins_per_room", "rc_room_creation",
                 "rc_admin_redaction"]:
        overrides[name] = rate
    overrides["rc_invites"] = {"per_room": rate, "per_user": rate, "per_issuer": rate}
    overrides["rc_presence"] = {"per_user": rate}
    extra = workdir / "test-overrides.yaml"
    extra.write_text(json.dumps(overrides, indent=1))

    env = dict(os.environ)
    with open(workdir / "synapse.stdout", "wb") as out:
        hs.proc = subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "-c", str(generated), "-c", str(extra)],
            cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    return hs


@dataclass
class Federation:
    """The pair under test."""

    moss: Homeserver
    synapse: Homeserver

    def logs(self, lines: int = LOG_TAIL_LINES) -> str:
        return f"\n{self.moss.describe(lines)}\n{self.synapse.describe(lines)}"

    def explain(self, message: str) -> str:
        """An assertion message with both servers' log tails appended."""
        return f"{message}{LOGS_MARKER}{self.logs()}"

    def fail(self, message: str):
        pytest.fail(self.explain(message), pytrace=True)


LOGS_MARKER = "\n=== server logs ==="


class _ReportLogs:
    """Attaches both servers' log tails to any failure of a test using `fed` whose message does
    not already carry them (an unexpected exception, a plain assert)."""

    def __init__(self, fed: Federation):
        self.fed = fed

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if report.failed and "fed" in getattr(item, "fixturenames", ()):
            if LOGS_MARKER not in str(report.longrepr):
                report.sections.append(("moss and synapse logs", self.fed.logs()))
        return report


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[Federation]:
    """One moss and one Synapse, federating, for the whole module."""
    root = tmp_path_factory.mktemp("fed")
    synapse = start_synapse(root / "synapse")
    moss = start_moss(root / "moss")
    pair = Federation(moss, synapse)
    plugin = _ReportLogs(pair)
    pytestconfig.pluginmanager.register(plugin, "fed-harness-logs")
    try:
        moss.wait_ready()
        synapse.wait_ready()
        yield pair
    finally:
        pytestconfig.pluginmanager.unregister(plugin)
        moss.stop()
        synapse.stop()


@pytest.fixture(autouse=True)
def mark_logs(fed: Federation) -> None:
    """Failure reports quote each server's log from the start of the failing test on, not the
    startup noise or earlier tests."""
    for hs in (fed.moss, fed.synapse):
        hs.log_offset = _size(hs.log_path)


# --------------------------------------------------------------------------- users and HTTP


def unique_localpart(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@dataclass
class Account:
    """A registered user on one of the two servers."""

    hs: Homeserver
    localpart: str
    password: str
    access_token: str
    device_id: str

    @property
    def user_id(self) -> str:
        return self.hs.user_id(self.localpart)


async def http(
    hs: Homeserver,
    method: str,
    path: str,
    token: str | None = None,
    json_body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any, dict[str, str]]:
    """One request to a server's client API: (status, JSON body or raw bytes, headers)."""
    hdrs = dict(headers or {})
    if token:
        hdrs["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)) as session:
        async with session.request(
            method, f"{hs.base_url}{path}", json=json_body, data=data, headers=hdrs, params=params
        ) as resp:
            raw = await resp.read()
            resp_headers = {k.lower(): v for k, v in resp.headers.items()}
            body: Any = raw
            if resp_headers.get("content-type", "").startswith("application/json"):
                try:
                    body = json.loads(raw)
                except ValueError:
                    pass
            return resp.status, body, resp_headers


async def register_moss(hs: Homeserver, localpart: str, password: str) -> dict:
    """Open registration, through the spec'd user-interactive flow (m.login.dummy)."""
    body: dict[str, Any] = {"username": localpart, "password": password, "initial_device_display_name": "register"}
    status, data, _ = await http(hs, "POST", "/_matrix/client/v3/register", json_body=body)
    if status == 401:
        auth = {"type": "m.login.dummy"}
        if "session" in data:
            auth["session"] = data["session"]
        status, data, _ = await http(hs, "POST", "/_matrix/client/v3/register", json_body={**body, "auth": auth})
    assert status == 200, f"registering {localpart!r} on moss failed: HTTP {status} {data}"
    return data


async def register_synapse(hs: Homeserver, localpart: str, password: str) -> dict:
    """Synapse's shared-secret admin registration (nonce + HMAC-SHA1)."""
    status, data, _ = await http(hs, "GET", "/_synapse/admin/v1/register")
    assert status == 200, f"synapse register nonce: HTTP {status} {data}"
    nonce = data["nonce"]
    mac = hmac.new(
        SHARED_SECRET.encode(), f"{nonce}\0{localpart}\0{password}\0notadmin".encode(), hashlib.sha1
    ).hexdigest()
    body = {"nonce": nonce, "username": localpart, "password": password, "admin": False, "mac": mac}
    status, data, _ = await http(hs, "POST", "/_synapse/admin/v1/register", json_body=body)
    assert status == 200, f"registering {localpart!r} on synapse failed: HTTP {status} {data}"
    return data


async def new_account(hs: Homeserver, prefix: str) -> Account:
    localpart = unique_localpart(prefix)
    password = f"pw-{uuid.uuid4().hex}"
    register = register_moss if hs.kind == "moss" else register_synapse
    data = await register(hs, localpart, password)
    assert data.get("user_id") == hs.user_id(localpart), data
    assert data.get("access_token"), data
    return Account(hs, localpart, password, data["access_token"], data.get("device_id", ""))


# --------------------------------------------------------------------------- nio clients


def client_config(encryption: bool) -> nio.AsyncClientConfig:
    return nio.AsyncClientConfig(
        # nio's defaults retry connection errors and 429s forever; a test must fail instead.
        max_timeouts=2,
        max_limit_exceeded=0,
        request_timeout=HTTP_TIMEOUT_S,
        encryption_enabled=encryption,
        store_sync_tokens=encryption,
    )


@dataclass
class Clients:
    """Factory for logged-in nio clients; closes them all at the end of the test."""

    fed: Federation
    tmp_path: Path
    made: list[nio.AsyncClient] = field(default_factory=list)

    async def login(self, account: Account, encryption: bool = False) -> nio.AsyncClient:
        store = None
        if encryption:
            store = self.tmp_path / f"store-{account.localpart}-{uuid.uuid4().hex[:8]}"
            store.mkdir()
        client = nio.AsyncClient(
            account.hs.base_url, user=account.localpart, store_path=str(store) if store else "",
            config=client_config(encryption),
        )
        self.made.append(client)
        resp = await client.login(password=account.password, device_name=f"nio-{account.localpart}")
        assert isinstance(resp, nio.LoginResponse), self.fed.explain(f"login as {account.user_id} failed: {resp}")
        assert resp.user_id == account.user_id, resp
        if encryption:
            assert client.olm is not None, "nio did not load its crypto store after login"
        return client

    async def user(self, hs: Homeserver, prefix: str, encryption: bool = False) -> tuple[Account, nio.AsyncClient]:
        account = await new_account(hs, prefix)
        return account, await self.login(account, encryption)

    async def close(self) -> None:
        for client in self.made:
            await client.close()


@pytest.fixture
async def clients(fed: Federation, tmp_path: Path):
    factory = Clients(fed, tmp_path)
    yield factory
    await factory.close()


def expect(fed: Federation, resp: Any, cls: type, what: str) -> Any:
    assert isinstance(resp, cls), fed.explain(f"{what} failed: {resp!r}")
    return resp


async def housekeeping(fed: Federation, client: nio.AsyncClient) -> None:
    """What nio's sync_forever does between syncs (key upload, query, claim, to-device),
    with every answer checked."""
    for resp in await client.send_to_device_messages():
        expect(fed, resp, nio.ToDeviceResponse, f"{client.user_id}: sendToDevice")
    if client.should_upload_keys:
        expect(fed, await client.keys_upload(), nio.KeysUploadResponse, f"{client.user_id}: keys/upload")
    if client.should_query_keys:
        expect(fed, await client.keys_query(), nio.KeysQueryResponse, f"{client.user_id}: keys/query")
    if client.should_claim_keys:
        users = client.get_users_for_key_claiming()
        expect(fed, await client.keys_claim(users), nio.KeysClaimResponse, f"{client.user_id}: keys/claim")


def _short(text: str, limit: int = 3000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... <{len(text) - limit} more chars>"


async def sync_until(
    fed: Federation,
    client: nio.AsyncClient,
    predicate: Callable[[nio.SyncResponse], T | None],
    what: str,
    deadline_s: float = WAIT_S,
) -> T:
    """Sync incrementally until `predicate` returns something truthy; fail after `deadline_s`
    with the last /sync body and both servers' logs. Encrypting clients do their key
    housekeeping between syncs."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last_body = "<no /sync completed>"
    while (remaining := end - loop.time()) > 0:
        poll_ms = max(100, int(min(SYNC_POLL_MS, remaining * 1000)))
        try:
            resp = await asyncio.wait_for(client.sync(timeout=poll_ms), timeout=remaining + 5)
        except asyncio.TimeoutError:
            break
        assert isinstance(resp, nio.SyncResponse), fed.explain(f"{client.user_id}: /sync failed: {resp}")
        try:
            last_body = _short(await resp.transport_response.text())
        except Exception as err:  # diagnostics only
            last_body = f"<unavailable: {err!r}>"
        if client.olm is not None:
            await housekeeping(fed, client)
        found = predicate(resp)
        if found:
            return found
        await asyncio.sleep(0.05)
    fed.fail(f"{client.user_id}: no {what} within {deadline_s}s; last /sync body: {last_body}")


async def initial_sync(fed: Federation, client: nio.AsyncClient) -> None:
    resp = await asyncio.wait_for(client.sync(timeout=0), timeout=WAIT_S)
    assert isinstance(resp, nio.SyncResponse), fed.explain(f"{client.user_id}: initial /sync failed: {resp}")
    if client.olm is not None:
        await housekeeping(fed, client)


async def poll_until(
    fed: Federation, attempt: Callable[[], Any], what: str, deadline_s: float = WAIT_S, every_s: float = 0.5
) -> Any:
    """Call the coroutine function `attempt` until it returns (value, True); fail with the last
    value after the deadline. For waits that are not /sync (e.g. /messages and backfill)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last: Any = None
    while loop.time() < end:
        last, ok = await attempt()
        if ok:
            return last
        await asyncio.sleep(every_s)
    fed.fail(f"no {what} within {deadline_s}s; last result: {_short(repr(last))}")


# --------------------------------------------------------------------------- sync predicates


def room_events(resp: nio.SyncResponse, room_id: str, section: str = "join") -> list[Any]:
    info = getattr(resp.rooms, section).get(room_id)
    if info is None:
        return []
    return list(info.state) + list(info.timeline.events)


def membership_of(user_id: str, membership: str, room_id: str, section: str = "join"):
    def predicate(resp: nio.SyncResponse) -> nio.RoomMemberEvent | None:
        found = [
            e
            for e in room_events(resp, room_id, section)
            if isinstance(e, nio.RoomMemberEvent) and e.state_key == user_id and e.membership == membership
        ]
        return found[-1] if found else None

    return predicate


def event_with_id(event_id: str, room_id: str):
    def predicate(resp: nio.SyncResponse) -> Any | None:
        info = resp.rooms.join.get(room_id)
        if info is None:
            return None
        return next((e for e in info.timeline.events if getattr(e, "event_id", None) == event_id), None)

    return predicate


def ephemeral(resp: nio.SyncResponse, room_id: str) -> list[Any]:
    info = resp.rooms.join.get(room_id)
    return list(info.ephemeral) if info else []


def typing_user(user_id: str, room_id: str):
    def predicate(resp: nio.SyncResponse) -> Any | None:
        return next(
            (e for e in ephemeral(resp, room_id) if isinstance(e, nio.TypingNoticeEvent) and user_id in e.users),
            None,
        )

    return predicate


def receipt_of(user_id: str, event_id: str, room_id: str):
    def predicate(resp: nio.SyncResponse) -> Any | None:
        for e in ephemeral(resp, room_id):
            if isinstance(e, nio.ReceiptEvent):
                for r in e.receipts:
                    if r.user_id == user_id and r.event_id == event_id and r.receipt_type == "m.read":
                        return r
        return None

    return predicate


async def send_text(fed: Federation, client: nio.AsyncClient, room_id: str, body: str, **kwargs: Any) -> str:
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body}, **kwargs)
    assert isinstance(resp, nio.RoomSendResponse), fed.explain(f"{client.user_id}: send {body!r} failed: {resp}")
    return resp.event_id


async def expect_text(
    fed: Federation, reader: nio.AsyncClient, room_id: str, event_id: str, sender: str, body: str
) -> None:
    event = await sync_until(fed, reader, event_with_id(event_id, room_id), f"message {event_id} from {sender}")
    assert isinstance(event, nio.RoomMessageText), fed.explain(f"expected m.text, got {event!r}")
    assert (event.sender, event.body) == (sender, body), fed.explain(f"wrong message: {event.source}")
