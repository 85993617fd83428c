"""moss as the media repository of a real Synapse (`moss media-repo`, docs/media-repo.md).

The deployment the seed's users would make: nginx in front of Synapse sends the media paths
(`/_matrix/media/*`, `/_matrix/client/v1/media/*`, and on the federation port
`/_matrix/federation/v1/media/*`) to moss and everything else to Synapse. moss keeps the media
encrypted in Garage, asks Synapse whose each access token is, signs its requests for other
servers' media with Synapse's key, and imports media Synapse stored before it took over the
first time that media is asked for. A second homeserver (a whole moss) federates with the pair,
so media crosses servers both ways.

Needs Garage (scripts/test starts it: MOSS_TEST_S3_*). Runs once: the cluster pass
(MOSS_TEST_CLUSTER) has nothing to add here.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import io
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nio
import pytest

from conftest import garage_or_skip, nginx_config, s3_store_env
from fed_harness import (
    STARTUP_TIMEOUT_S,
    Homeserver,
    _stop,
    _tail,
    http,
    moss_binary,
    new_account,
    self_signed,
    start_moss,
    start_synapse,
)
from pngs import png, png_size
from ports import free_port


@dataclass
class Stack:
    synapse: Homeserver  # as the world sees it: client_port and fed_port are nginx's
    other: Homeserver  # a whole moss homeserver federating with it
    repo_port: int
    repo_log: Path
    s3: dict[str, str]
    prefix: str

    def logs(self) -> str:
        return (f"\n--- moss media-repo ---\n{_tail(self.repo_log, 60)}\n{self.synapse.describe()}\n"
                f"{self.other.describe()}")


# --------------------------------------------------------------------------- raw S3 (SigV4)


def _s3_get(s3: dict[str, str], path: str, query: dict[str, str] | None = None) -> bytes:
    """One signed GET to the store, path style: what any S3 tool would see in the bucket."""
    query = query or {}
    endpoint = urllib.parse.urlsplit(s3["ENDPOINT"])
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    empty = hashlib.sha256(b"").hexdigest()
    quote = lambda v: urllib.parse.quote(v, safe="-_.~")  # noqa: E731
    canonical_query = "&".join(f"{quote(k)}={quote(v)}" for k, v in sorted(query.items()))
    headers = f"host:{endpoint.netloc}\nx-amz-content-sha256:{empty}\nx-amz-date:{amz_date}\n"
    signed = "host;x-amz-content-sha256;x-amz-date"
    request = "\n".join(["GET", urllib.parse.quote(path, safe="/-_.~"), canonical_query, headers, signed, empty])
    scope = f"{day}/{s3['REGION']}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(request.encode()).hexdigest()])
    key = ("AWS4" + s3["SECRET"]).encode()
    for part in (day, s3["REGION"], "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    url = f"{s3['ENDPOINT']}{path}" + (f"?{canonical_query}" if canonical_query else "")
    req = urllib.request.Request(url, headers={
        "x-amz-date": amz_date, "x-amz-content-sha256": empty,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={s3['KEY_ID']}/{scope}, SignedHeaders={signed}, "
                         f"Signature={signature}",
    })
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.read()


def stored_objects(s3: dict[str, str], prefix: str) -> dict[str, bytes]:
    """Every object under `prefix` in the test bucket, by key."""
    listing = _s3_get(s3, f"/{s3['BUCKET']}", {"list-type": "2", "prefix": prefix})
    ns = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}
    keys = [k.text for k in ET.fromstring(listing).iterfind(".//s3:Contents/s3:Key", ns)]
    return {k: _s3_get(s3, f"/{s3['BUCKET']}/{k}") for k in keys}


# --------------------------------------------------------------------------- the stack


def _start_proxy(workdir: Path, synapse: Homeserver, repo_port: int) -> list[str]:
    """nginx on Synapse's public ports: media paths to moss, the rest to Synapse."""
    cert, key = self_signed(workdir, "ec")
    nginx_dir = workdir / "nginx"
    nginx_dir.mkdir()
    proxy = """proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;"""
    (nginx_dir / "nginx.conf").write_text(nginx_config(nginx_dir, f"""
    client_max_body_size 110m;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 120s;
    server {{
        listen 127.0.0.1:{synapse.client_port};
        location ~ ^/_matrix/(media|client/v1/media)/ {{ proxy_pass http://127.0.0.1:{repo_port}; {proxy} }}
        location / {{ proxy_pass http://127.0.0.1:{synapse.internal_client_port}; {proxy} }}
    }}
    server {{
        listen 127.0.0.1:{synapse.fed_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location /_matrix/federation/v1/media/ {{ proxy_pass http://127.0.0.1:{repo_port}; {proxy} }}
        location / {{ proxy_pass http://127.0.0.1:{synapse.internal_fed_port}; {proxy} }}
    }}
"""))
    conf = ["nginx", "-p", str(nginx_dir), "-c", str(nginx_dir / "nginx.conf")]
    subprocess.run(conf, check=True)
    return conf


def _start_media_repo(workdir: Path, synapse: Homeserver, port: int, s3: dict[str, str], prefix: str,
                      synapse_url: str | None = None):
    workdir.mkdir(parents=True, exist_ok=True)
    (signing_key,) = synapse.workdir.glob("*.signing.key")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
    env.update({
        "MOSS_SERVER_NAME": synapse.server_name,
        "MOSS_DATA_DIR": str(workdir / "data"),
        "MOSS_HTTP__BIND": f"127.0.0.1:{port}",
        "MOSS_HTTP__TRUSTED_PROXIES": '["127.0.0.1/32"]',
        "MOSS_DATABASE__SYNCHRONOUS": "normal",
        "MOSS_MEDIA_REPO__SYNAPSE_URL": synapse_url or f"http://127.0.0.1:{synapse.internal_client_port}",
        "MOSS_MEDIA_REPO__SIGNING_KEY_PATH": str(signing_key),
        "MOSS_MEDIA_REPO__SYNAPSE_MEDIA_STORE": str(synapse.workdir / "media_store"),
        "MOSS_MEDIA_REPO__SYNAPSE_DATABASE": str(synapse.workdir / "homeserver.db"),
        # Short, so that a logout on Synapse shows here within the test.
        "MOSS_MEDIA_REPO__TOKEN_CACHE_SECS": "2",
        "MOSS_FEDERATION__VERIFY_CERTIFICATES": "false",
        "MOSS_FEDERATION__IP_RANGE_ALLOWLIST": '["127.0.0.1/32", "::1/128"]',
        "MOSS_RATE_LIMITS__ENABLED": "false",
        **s3_store_env(s3, prefix),
        "MOSS_MEDIA__ENCRYPTION__ENABLED": "true",
        "MOSS_LOG__LEVEL": "info",
        "NO_COLOR": "1",
    })
    log_path = workdir / "moss-media-repo.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(moss_binary()), "media-repo"], cwd=workdir, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"moss media-repo did not start:\n{_tail(log_path, 60)}")
        time.sleep(0.1)
    return proc, log_path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if os.environ.get("MOSS_TEST_CLUSTER"):
        pytest.skip("the media repository runs once, in the single-process pass")
    s3 = garage_or_skip()
    root = tmp_path_factory.mktemp("media-repo")
    synapse = start_synapse(root / "synapse", behind_proxy=True)
    other = start_moss(root / "other")
    repo_port = free_port()
    conf = _start_proxy(root, synapse, repo_port)
    repo = None
    try:
        synapse.wait_ready()
        other.wait_ready()
        prefix = f"repo-{uuid.uuid4().hex[:8]}-"
        repo, repo_log = _start_media_repo(root / "repo", synapse, repo_port, s3, prefix)
        yield Stack(synapse, other, repo_port, repo_log, s3, prefix)
    finally:
        if repo is not None:
            _stop(repo)
        subprocess.run([*conf, "-s", "stop"], capture_output=True)
        other.stop()
        synapse.stop()


def nio_client(hs: Homeserver, user_id: str, token: str, device_id: str) -> nio.AsyncClient:
    client = nio.AsyncClient(hs.base_url, user_id, device_id=device_id)
    client.restore_login(user_id, device_id, token)
    return client


# --------------------------------------------------------------------------- tests


async def test_uploads_through_the_proxy_land_encrypted_in_the_store_and_come_back(stack: Stack):
    alice = await new_account(stack.synapse, "repo-alice")
    client = nio_client(stack.synapse, alice.user_id, alice.access_token, alice.device_id)
    try:
        picture = png(320, 200)
        blob = os.urandom(300_000)
        uris = {}
        for name, ctype, data in [("photo.png", "image/png", picture), ("notes.bin", "application/octet-stream", blob)]:
            resp, _ = await client.upload(io.BytesIO(data), content_type=ctype, filename=name, filesize=len(data))
            assert isinstance(resp, nio.UploadResponse), f"upload of {name}: {resp}{stack.logs()}"
            assert resp.content_uri.startswith(f"mxc://{stack.synapse.server_name}/"), resp.content_uri
            uris[name] = resp.content_uri

        # moss holds them, not Synapse: Synapse's own media repository has never heard of them.
        media_path = f"/_matrix/client/v1/media/download/{uris['notes.bin'].removeprefix('mxc://')}"
        internal = Homeserver("synapse", stack.synapse.workdir, 0, stack.synapse.internal_client_port, Path("/dev/null"))
        status, _, _ = await http(internal, "GET", media_path, alice.access_token)
        assert status == 404, f"Synapse itself answered {status} for media moss stored"

        # In the bucket, only ciphertext: no stretch of either file appears in any object.
        objects = stored_objects(stack.s3, stack.prefix)
        assert objects, f"nothing under {stack.prefix} in the bucket{stack.logs()}"
        for data in (picture, blob):
            probe = data[1000:1064]
            assert not any(probe in body for body in objects.values()), "plaintext found in the store"
        assert any(len(body) >= len(blob) for body in objects.values()), "no object large enough to hold the file"

        got = await client.download(mxc=uris["notes.bin"])
        assert isinstance(got, nio.MemoryDownloadResponse), f"download: {got}{stack.logs()}"
        assert got.body == blob and got.filename == "notes.bin"
        server_name, media_id = uris["photo.png"].removeprefix("mxc://").split("/")
        thumb = await client.thumbnail(server_name, media_id, 64, 64, method=nio.ResizingMethod.scale)
        assert isinstance(thumb, nio.ThumbnailResponse), f"thumbnail: {thumb}{stack.logs()}"
        assert thumb.content_type == "image/png", thumb.content_type
        width, height = png_size(thumb.body)
        assert width <= 320 and height <= 200, (width, height)

        # The upload limit moss announces is its own.
        status, body, _ = await http(stack.synapse, "GET", "/_matrix/client/v1/media/config", alice.access_token)
        assert status == 200 and body.get("m.upload.size", 0) > 0, body
    finally:
        await client.close()


async def test_media_synapse_stored_before_the_switch_is_served_under_its_uri(stack: Stack):
    bob = await new_account(stack.synapse, "repo-bob")
    # Uploaded to Synapse itself, past the proxy: media from before moss took over.
    internal = Homeserver("synapse", stack.synapse.workdir, 0, stack.synapse.internal_client_port, Path("/dev/null"))
    picture = png(256, 160)
    status, body, _ = await http(internal, "POST", "/_matrix/media/v3/upload", bob.access_token, data=picture,
                                 headers={"Content-Type": "image/png"}, params={"filename": "old.png"})
    assert status == 200, f"upload to Synapse: {status} {body}"
    mxc = body["content_uri"]

    path = f"/_matrix/client/v1/media/download/{mxc.removeprefix('mxc://')}"
    for attempt in ("first (imported now)", "second (already here)"):
        status, got, headers = await http(stack.synapse, "GET", path, bob.access_token)
        assert status == 200, f"{attempt}: HTTP {status} {got!r:.300}{stack.logs()}"
        assert got == picture, f"{attempt}: {len(got)} bytes"
        assert headers["content-type"].startswith("image/png"), headers
        assert "old.png" in headers.get("content-disposition", ""), headers
    status, thumb, headers = await http(stack.synapse, "GET", path.replace("/download/", "/thumbnail/"),
                                        bob.access_token, params={"width": "32", "height": "32", "method": "crop"})
    assert status == 200 and headers["content-type"].startswith("image/"), f"{status} {headers}{stack.logs()}"
    assert "imported on first use" in _tail(stack.repo_log, 400)

    # A media id neither has: 404, also when asked again (then from the remembered miss).
    missing = f"/_matrix/client/v1/media/download/{stack.synapse.server_name}/{'Q' * 24}"
    for _ in range(2):
        status, body, _ = await http(stack.synapse, "GET", missing, bob.access_token)
        assert status == 404, f"{status} {body}"


async def test_tokens_are_checked_with_synapse(stack: Stack):
    carol = await new_account(stack.synapse, "repo-carol")
    path = "/_matrix/client/v1/media/config"
    status, body, _ = await http(stack.synapse, "GET", path)
    assert status == 401 and body["errcode"] == "M_MISSING_TOKEN", body
    status, body, _ = await http(stack.synapse, "GET", path, "not-a-token")
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    status, body, _ = await http(stack.synapse, "POST", "/_matrix/media/v3/upload", "not-a-token", data=b"x",
                                 headers={"Content-Type": "text/plain"})
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
    status, _, _ = await http(stack.synapse, "GET", path, carol.access_token)
    assert status == 200

    # Logged out on Synapse: refused here once the cached answer (2 s in this test) is stale.
    status, _, _ = await http(stack.synapse, "POST", "/_matrix/client/v3/logout", carol.access_token, json_body={})
    assert status == 200
    await asyncio.sleep(2.5)
    status, body, _ = await http(stack.synapse, "GET", path, carol.access_token)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", f"{status} {body}"


async def test_media_crosses_to_and_from_another_homeserver(stack: Stack):
    local = await new_account(stack.synapse, "repo-dave")
    remote = await new_account(stack.other, "repo-erin")
    mine, theirs = os.urandom(150_000), os.urandom(120_000)
    status, body, _ = await http(stack.synapse, "POST", "/_matrix/media/v3/upload", local.access_token, data=mine,
                                 headers={"Content-Type": "application/octet-stream"}, params={"filename": "a.bin"})
    assert status == 200, body
    mine_uri = body["content_uri"]
    status, body, _ = await http(stack.other, "POST", "/_matrix/media/v3/upload", remote.access_token, data=theirs,
                                 headers={"Content-Type": "application/octet-stream"}, params={"filename": "b.bin"})
    assert status == 200, body
    theirs_uri = body["content_uri"]

    # The other server fetches ours over federation: its signed request reaches moss, which
    # checks it against the other server's keys.
    status, got, _ = await http(stack.other, "GET", f"/_matrix/client/v1/media/download/{mine_uri[6:]}",
                                remote.access_token)
    assert status == 200 and got == mine, f"{status} {got!r:.300}{stack.logs()}"
    assert "serving media over federation" in _tail(stack.repo_log, 400)

    # Ours fetches theirs: moss signs as the homeserver with Synapse's key, which the other
    # server checks against the keys Synapse publishes.
    status, got, _ = await http(stack.synapse, "GET", f"/_matrix/client/v1/media/download/{theirs_uri[6:]}",
                                local.access_token)
    assert status == 200 and got == theirs, f"{status} {got!r:.300}{stack.logs()}"


class _HostileSynapse(BaseHTTPRequestHandler):
    """A whoami endpoint that answers as badly as it can, chosen by the token."""

    def do_GET(self):  # noqa: N802 (the standard library's name)
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        try:
            if token == "huge":  # announces 256 MiB and sends it
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(256 << 20))
                self.end_headers()
                for _ in range(256):
                    self.wfile.write(b"[" * (1 << 20))
            elif token == "endless":  # chunked, never ends
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(4096):
                    self.wfile.write(b"10000\r\n" + b"{" * 0x10000 + b"\r\n")
            elif token == "deep":  # small, but nested past any parser's depth
                body = b"[" * 60_000
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif token == "slow":  # says nothing for longer than moss waits
                time.sleep(15)
            else:  # a user on another server
                body = json.dumps({"user_id": "@mallory:elsewhere.example"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


async def test_a_hostile_homeserver_answer_is_bounded(stack: Stack, tmp_path: Path):
    """Synapse is the operator's, but its answers are still parsed with a budget: a huge, endless,
    deeply nested or silent whoami answer fails the request (503) without moss holding it."""
    hostile = ThreadingHTTPServer(("127.0.0.1", free_port()), _HostileSynapse)
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    port = free_port()
    proc, log = _start_media_repo(tmp_path / "repo", stack.synapse, port, stack.s3, stack.prefix,
                                  synapse_url=f"http://127.0.0.1:{hostile.server_address[1]}")
    base = Homeserver("moss", tmp_path, 0, port, log)
    try:
        for token in ("huge", "endless", "deep", "slow"):
            started = time.monotonic()
            status, body, _ = await http(base, "GET", "/_matrix/client/v1/media/config", token)
            took = time.monotonic() - started
            assert status == 503, f"{token}: {status} {body!r:.200}\n{_tail(log, 30)}"
            assert took < 14, f"{token}: answered after {took:.1f} s"
        # A user of another server (a synapse_url pointing at the wrong homeserver) is refused.
        status, body, _ = await http(base, "GET", "/_matrix/client/v1/media/config", "someone")
        assert status == 403 and body["errcode"] == "M_FORBIDDEN", body
        rss = int(next(l for l in open(f"/proc/{proc.pid}/status") if l.startswith("VmHWM:")).split()[1]) // 1024
        assert rss < 200, f"moss peaked at {rss} MiB"
    finally:
        _stop(proc)
        hostile.shutdown()
