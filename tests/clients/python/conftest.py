"""Fixtures for running real Matrix clients (matrix-nio) against a live moss process.

One moss process serves the whole session: starting it is the expensive part, and
every test registers its own freshly named users and creates its own rooms, so tests
cannot see each other's data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nio
import pytest

from ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[3]
SERVER_NAME = "localhost"
STARTUP_TIMEOUT_S = 30.0
SHUTDOWN_GRACE_S = 10.0
LOG_TAIL_LINES = 80


@dataclass
class MossServer:
    base_url: str
    workdir: Path
    log_path: Path
    proc: subprocess.Popen

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as err:
            return f"<cannot read {self.log_path}: {err}>"
        return "\n".join(text.splitlines()[-lines:])

    def describe(self) -> str:
        """Human-readable state for failure reports: a dead server explains many failures at once."""
        code = self.proc.poll()
        state = "running" if code is None else f"EXITED with code {code}"
        return (
            f"moss {state}; base URL {self.base_url}; workdir {self.workdir}\n"
            f"--- last {LOG_TAIL_LINES} lines of {self.log_path} ---\n{self.log_tail()}"
        )


# The session's server, kept module-global so the report hook below can reach it
# without every test having to request it explicitly.
_SERVER: MossServer | None = None


def _moss_binary() -> Path:
    configured = os.environ.get("MOSS_BIN")
    path = Path(configured) if configured else REPO_ROOT / "target" / "debug" / "moss"
    # Resolve now: moss runs with a temp dir as cwd, so a relative path would break.
    return path.resolve()


def _versions_ok(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_matrix/client/versions", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=SHUTDOWN_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=SHUTDOWN_GRACE_S)


def start_moss(workdir: Path, extra_env: dict[str, str] | None = None) -> MossServer:
    """`moss serve` on a free loopback port in `workdir`, once /versions answers; `extra_env`
    adds settings (MOSS_… variables)."""
    binary = _moss_binary()
    if not binary.is_file():
        # Fail rather than skip: a client suite that silently skips when the server
        # is missing would report green on a broken build.
        pytest.fail(f"moss binary not found at {binary}: build it first or set MOSS_BIN")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = workdir / "moss.log"

    # moss reads every MOSS_* variable as configuration and rejects unknown keys, so the
    # suite's own MOSS_BIN (and any MOSS_* left in a developer's shell) must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
    env.update(
        {
            "MOSS_DATA_DIR": str(workdir / "data"),
            "MOSS_HTTP__BIND": f"127.0.0.1:{port}",
            "MOSS_SERVER_NAME": SERVER_NAME,
            "MOSS_REGISTRATION": "open",
            # The suite sends bursts (30 messages back to back); limits would turn that into
            # 429s that nio would otherwise silently sleep through.
            "MOSS_RATE_LIMITS__ENABLED": "false",
            "MOSS_LOG__LEVEL": "info",
            "RUST_BACKTRACE": "1",
            # The log goes to a file that failure reports quote: keep it free of ANSI colours.
            "NO_COLOR": "1",
        }
    )
    env.update(extra_env or {})

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(binary), "serve"],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    srv = MossServer(base_url=base_url, workdir=workdir, log_path=log_path, proc=proc)

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _versions_ok(base_url):
        if proc.poll() is not None:
            pytest.fail(f"moss exited during startup\n{srv.describe()}")
        if time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"moss did not answer /versions within {STARTUP_TIMEOUT_S}s\n{srv.describe()}")
        time.sleep(0.1)
    return srv


def stop_moss(srv: MossServer) -> None:
    _stop(srv.proc)
    if srv.proc.returncode not in (0, -signal.SIGTERM):
        # Not a test failure of its own (no test asserts shutdown behaviour), but worth
        # seeing in the output when someone investigates.
        print(f"\nmoss exited with code {srv.proc.returncode} after SIGTERM; log: {srv.log_path}")


def _create_postgres_database() -> str:
    """A new database on the test PostgreSQL (scripts/postgres-start.sh's MOSS_TEST_PG_*)."""
    env = os.environ
    name = f"moss_nio_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        [f"{env['MOSS_TEST_PG_BIN']}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", env["MOSS_TEST_PG_SOCKET_DIR"],
         "-p", env["MOSS_TEST_PG_PORT"], "-U", "postgres", "-d", "postgres", "-c",
         f"CREATE DATABASE {name} OWNER \"{env['MOSS_TEST_PG_USER']}\" TEMPLATE template0 ENCODING 'UTF8' "
         "LC_COLLATE 'C' LC_CTYPE 'C'"],
        check=True, capture_output=True,
    )
    return (f"postgres://{env['MOSS_TEST_PG_USER']}:{env['MOSS_TEST_PG_PASSWORD']}@127.0.0.1:"
            f"{env['MOSS_TEST_PG_PORT']}/{name}")


@dataclass
class Cluster:
    """Two moss processes on one PostgreSQL database and one data directory, behind nginx
    (round robin, nothing sticky): the deployment docs/scaling.md describes."""

    front: MossServer
    others: list[MossServer]
    nginx_dir: Path

    def stop(self) -> None:
        subprocess.run(["nginx", "-p", str(self.nginx_dir), "-c", str(self.nginx_dir / "nginx.conf"), "-s", "stop"],
                       capture_output=True)
        for srv in [self.front, *self.others]:
            stop_moss(srv)


def garage_or_skip() -> dict[str, str]:
    """The test bucket scripts/test makes in Garage (MOSS_TEST_S3_*): ENDPOINT, REGION, BUCKET,
    KEY_ID, SECRET. Skips without one, fails instead under MOSS_REQUIRE_S3."""
    s3 = {n: os.environ.get(f"MOSS_TEST_S3_{n}", "") for n in ("ENDPOINT", "REGION", "BUCKET", "KEY_ID", "SECRET")}
    if not all(s3.values()):
        if os.environ.get("MOSS_REQUIRE_S3"):
            pytest.fail("MOSS_REQUIRE_S3 is set but no MOSS_TEST_S3_* endpoint is configured")
        pytest.skip("no S3 endpoint (scripts/test starts Garage)")
    return s3


def s3_store_env(s3: dict[str, str], prefix: str) -> dict[str, str]:
    """moss's settings for that bucket, its objects under `prefix`."""
    return {
        "MOSS_MEDIA__STORE": "s3",
        "MOSS_MEDIA__S3__ENDPOINT": s3["ENDPOINT"],
        "MOSS_MEDIA__S3__REGION": s3["REGION"],
        "MOSS_MEDIA__S3__BUCKET": s3["BUCKET"],
        "MOSS_MEDIA__S3__ACCESS_KEY_ID": s3["KEY_ID"],
        "MOSS_MEDIA__S3__SECRET_ACCESS_KEY": s3["SECRET"],
        "MOSS_MEDIA__S3__PREFIX": f'"{prefix}"',
    }


def nginx_config(nginx_dir: Path, http: str) -> str:
    """An nginx.conf that keeps its pid, logs and temporary files in `nginx_dir`, with `http`
    (upstream and server blocks) inside its http block."""
    return f"""
worker_processes 1;
pid {nginx_dir}/nginx.pid;
error_log {nginx_dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {nginx_dir}/access.log;
    client_body_temp_path {nginx_dir}/body;
    proxy_temp_path {nginx_dir}/proxy;
{http}
}}
"""


def start_cluster(workdir: Path) -> Cluster:
    url = _create_postgres_database()
    shared = {"MOSS_DATABASE__URL": url, "MOSS_DATA_DIR": str(workdir / "data"),
              "MOSS_HTTP__TRUSTED_PROXIES": '["127.0.0.1/32"]'}
    (workdir / "a").mkdir()
    (workdir / "b").mkdir()
    a = start_moss(workdir / "a", shared)
    b = start_moss(workdir / "b", shared)
    port = free_port()
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    upstream = "\n".join(f"        server {srv.base_url.removeprefix('http://')};" for srv in (a, b))
    (nginx_dir / "nginx.conf").write_text(nginx_config(nginx_dir, f"""
    upstream moss {{
{upstream}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
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
"""))
    subprocess.run(["nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")], check=True)
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not _versions_ok(base_url):
        if time.monotonic() > deadline:
            pytest.fail(f"nginx in front of two moss processes did not answer\n{a.describe()}\n{b.describe()}")
        time.sleep(0.1)
    front = MossServer(base_url=base_url, workdir=a.workdir, log_path=a.log_path, proc=a.proc)
    return Cluster(front=front, others=[a, b], nginx_dir=nginx_dir)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MossServer]:
    """Start `moss serve` on a free loopback port and yield it once /versions answers.

    With MOSS_TEST_CLUSTER=postgres, two moss processes on one PostgreSQL database behind nginx
    (round robin) stand in for it: every client request may reach either process."""
    global _SERVER

    if os.environ.get("MOSS_TEST_CLUSTER") == "postgres":
        cluster = start_cluster(tmp_path_factory.mktemp("moss-cluster"))
        _SERVER = cluster.front
        try:
            yield cluster.front
        finally:
            _SERVER = None
            subprocess.run(["nginx", "-p", str(cluster.nginx_dir), "-c", str(cluster.nginx_dir / "nginx.conf"),
                            "-s", "stop"], capture_output=True)
            for srv in cluster.others:
                stop_moss(srv)
        return

    srv = start_moss(tmp_path_factory.mktemp("moss"))
    _SERVER = srv
    try:
        yield srv
    finally:
        _SERVER = None
        stop_moss(srv)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    # Attach the server's view to every failure of a server-backed test: most client-side
    # failures (timeouts, 500s, dropped connections) are only explained by the server log.
    if report.failed and _SERVER is not None and "server" in getattr(item, "fixturenames", ()):
        report.sections.append(("moss server", _SERVER.describe()))
    return report


def unique_localpart(prefix: str) -> str:
    """Usernames are unique per test so the shared server never sees a name twice."""
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


async def register_user(base_url: str, username: str, password: str) -> dict:
    """Register through the spec'd user-interactive auth flow, with plain HTTP.

    Per the spec the first request carries no `auth`; a server that wants UIA answers
    401 with `flows` and a `session`, and the client completes the m.login.dummy stage
    in that session. A server that registers straight away (200) is accepted too.
    """
    url = f"{base_url}/_matrix/client/v3/register"
    body = {"username": username, "password": password, "initial_device_display_name": "register"}
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        async with http.post(url, json=body) as resp:
            status, data = resp.status, await resp.json(content_type=None)

        if status == 401:
            flows = data.get("flows") or []
            assert any(flow.get("stages") == ["m.login.dummy"] for flow in flows), (
                f"open registration must offer a flow with only m.login.dummy, got 401 {data}"
            )
            auth = {"type": "m.login.dummy"}
            if "session" in data:
                auth["session"] = data["session"]
            async with http.post(url, json={**body, "auth": auth}) as resp:
                status, data = resp.status, await resp.json(content_type=None)

    assert status == 200, f"registering {username!r} failed: HTTP {status} {data}"
    assert data.get("user_id") == f"@{username}:{SERVER_NAME}", data
    assert data.get("access_token"), f"registration returned no access_token: {data}"
    return data


def _client_config() -> nio.AsyncClientConfig:
    return nio.AsyncClientConfig(
        # nio's defaults retry connection errors and 429s forever; a test must fail instead.
        max_timeouts=2,
        max_limit_exceeded=0,
        request_timeout=20,
        # This suite covers plain client-server chat; E2EE would add key uploads the
        # scenarios do not ask for.
        encryption_enabled=False,
        store_sync_tokens=False,
    )


ClientFactory = Callable[[str], Awaitable[nio.AsyncClient]]


@pytest.fixture
async def make_client(server: MossServer) -> AsyncIterator[ClientFactory]:
    """Factory: `await make_client("alice")` registers a fresh user and returns a
    nio.AsyncClient logged in with its password (so /login is exercised too)."""
    clients: list[nio.AsyncClient] = []

    async def factory(prefix: str) -> nio.AsyncClient:
        localpart = unique_localpart(prefix)
        password = f"pw-{uuid.uuid4().hex}"
        await register_user(server.base_url, localpart, password)

        client = nio.AsyncClient(server.base_url, user=localpart, config=_client_config())
        clients.append(client)
        resp = await client.login(password=password, device_name=f"nio-{prefix}")
        assert isinstance(resp, nio.LoginResponse), f"login as {localpart} failed: {resp}"
        assert resp.user_id == f"@{localpart}:{SERVER_NAME}", resp
        assert client.access_token and client.user_id == resp.user_id
        return client

    yield factory

    for client in clients:
        await client.close()
