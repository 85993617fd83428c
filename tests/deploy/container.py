#!/usr/bin/env python3
"""deploy/Containerfile and deploy/compose/, built and run with podman.

No registry but Debian's and PyPI's is reachable here, so the base images the Containerfile
names by default are made locally: Debian bookworm by debootstrap (minbase, as the official
slim image is made) and, for the compose test, Garage's image from the Garage binary
scripts/setup-garage.sh built (the same release the compose file names). The moss binary under
test stands in for the Containerfile's build stage (a release build of the whole tree, 10+
minutes on two cores): the test swaps exactly that stage, checked word for word, for an image
holding the binary; everything else in the file runs as written: apt installs CA certificates,
the account, /data, HEALTHCHECK, the entrypoint.

Then: the image's user, volume, ports and health check; a container with its ports published
serves /versions, reports healthy through `podman healthcheck run`, runs as a non-root user,
keeps a user and 1 MiB of media across a stop (which is graceful: exit code 0) and a start; and
the compose example brings up Garage and moss, moss's media goes to Garage encrypted, and a
download after `compose down` / `up` gives the same bytes.

Usage: tests/deploy/container.py --moss target/debug/moss   (after scripts/setup-deploy.sh)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "clients" / "python"))
from ports import free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
BASE_IMAGE = "localhost/moss-test/debian:bookworm-minbase"
CACHE = REPO / ".container-test"
TAG = f"{os.getpid()}"
# The Containerfile's build stage, replaced here by an image holding the binary under test.
BUILD_STAGE = """FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# The release profile keeps debug info for profiling; the image does not need it (256 → 56 MB).
RUN CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \\
    cargo build --release --locked --bin moss \\
    && install -m 0755 target/release/moss /moss
"""


def log(msg: str) -> None:
    print(f"[container] {msg}", flush=True)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)
    log(f"ok: {what}")


ENV = dict(os.environ, CONTAINERS_CONF=str(HERE / "containers.conf"))


def podman(*args: str, check_rc: bool = True, input_bytes: bytes | None = None, timeout: float = 600) -> str:
    r = subprocess.run(["podman", *args], env=ENV, capture_output=True, input=input_bytes, timeout=timeout)
    if check_rc and r.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} failed ({r.returncode}): "
                             f"{r.stderr.decode(errors='replace')[-3000:]}")
    return r.stdout.decode(errors="replace")


def ensure_base_image() -> None:
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=ENV).returncode == 0:
        return
    rootfs = CACHE / "rootfs-bookworm"
    if not (rootfs / "usr" / "bin" / "apt-get").exists():
        shutil.rmtree(rootfs, ignore_errors=True)
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        log("making a Debian bookworm base image with debootstrap (minbase, ~30 s)")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(rootfs), "http://deb.debian.org/debian"],
                       check=True, capture_output=True)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(["podman", "import", "--change", 'CMD ["/bin/bash"]', "-", BASE_IMAGE], env=ENV,
                   stdin=tar.stdout, check=True, capture_output=True)
    tar.wait()


def import_single_file(path: Path, name_in_image: str, image: str) -> None:
    """An image holding one executable at /<name_in_image> (FROM scratch with a binary)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tar.gettarinfo(str(path), arcname=name_in_image)
        info.mode, info.uid, info.gid, info.uname, info.gname = 0o755, 0, 0, "root", "root"
        with open(path, "rb") as f:
            tar.addfile(info, f)
    podman("import", "-", image, input_bytes=buf.getvalue())


def http(url: str, method: str = "GET", body: bytes | None = None, token: str | None = None,
         content_type: str = "application/json") -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_versions(base: str, what: str, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    last: object = None
    while time.monotonic() < end:
        try:
            status, _ = http(f"{base}/_matrix/client/versions")
            if status == 200:
                return
            last = status
        except OSError as e:
            last = e
        time.sleep(0.25)
    raise AssertionError(f"{what} did not serve /versions within {deadline_s} s: {last}")


def login(base: str, user: str, password: str) -> str:
    status, body = http(f"{base}/_matrix/client/v3/login", "POST", json.dumps(
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}).encode())
    check(status == 200, f"{user} logs in ({status})")
    return json.loads(body)["access_token"]


def upload(base: str, token: str, blob: bytes) -> str:
    status, body = http(f"{base}/_matrix/media/v3/upload?filename=blob.bin", "POST", blob, token,
                        "application/octet-stream")
    check(status == 200, f"{len(blob)} bytes uploaded ({status} {body[:200]!r})")
    return json.loads(body)["content_uri"]


def download(base: str, token: str, mxc: str) -> bytes:
    server, media_id = mxc.removeprefix("mxc://").split("/", 1)
    status, body = http(f"{base}/_matrix/client/v1/media/download/{server}/{media_id}", token=token)
    check(status == 200, f"download of {mxc} ({status})")
    return body


def test_image(image: str) -> None:
    info = json.loads(podman("image", "inspect", image))[0]
    config = info.get("Config", {})
    check(config.get("User") == "10001:10001", f"the image runs as an unprivileged user ({config.get('User')})")
    check("/data" in (config.get("Volumes") or {}), "/data is a volume")
    check({"8008/tcp", "8448/tcp"} <= set(config.get("ExposedPorts") or {}), "ports 8008 and 8448 are exposed")
    health = (info.get("Healthcheck") or config.get("Healthcheck") or {}).get("Test") or []
    check(health[-2:] == ["/usr/local/bin/moss", "healthcheck"], f"HEALTHCHECK runs moss healthcheck ({health})")
    size_mb = info.get("Size", 0) / 1e6
    log(f"image size {size_mb:.0f} MB")


def test_container(image: str) -> None:
    name, volume = f"moss-ct-{TAG}", f"moss-ct-data-{TAG}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    run_args = ["run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8008", "-v", f"{volume}:/data",
                "-e", "MOSS_SERVER_NAME=container.test", "-e", "MOSS_RATE_LIMITS__ENABLED=false", image]
    try:
        podman(*run_args)
        wait_versions(base, "moss in a container, port published")
        check(podman("exec", name, "id", "-u").strip() == "10001", "moss runs as uid 10001 in the container")
        r = subprocess.run(["podman", "healthcheck", "run", name], env=ENV, capture_output=True, text=True)
        check(r.returncode == 0, f"podman healthcheck run: healthy ({(r.stdout + r.stderr).strip()})")
        podman("exec", name, "moss", "user", "create", "carol", "--password", "container-pass-1")
        token = login(base, "carol", "container-pass-1")
        blob = os.urandom(1024 * 1024)
        mxc = upload(base, token, blob)

        started = time.monotonic()
        podman("stop", "-t", "30", name)
        took = time.monotonic() - started
        state = json.loads(podman("inspect", name))[0]["State"]
        check(state.get("ExitCode") == 0 and took < 15,
              f"podman stop is a graceful stop (exit code {state.get('ExitCode')} in {took:.1f} s)")
        podman("start", name)
        wait_versions(base, "the restarted container")
        token = login(base, "carol", "container-pass-1")
        check(download(base, token, mxc) == blob, "the user and the media are kept in the volume across a restart")
    finally:
        if os.environ.get("MOSS_KEEP_CONTAINERS") is None:
            podman("rm", "-f", "-t", "5", name, check_rc=False)
            podman("volume", "rm", "-f", volume, check_rc=False)


def test_compose(moss_image: str, compose_bin: Path) -> None:
    garage = shutil.which("garage") or str(Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "garage")
    check(Path(garage).exists(), f"the Garage binary of scripts/setup-garage.sh is here ({garage})")
    version = subprocess.run([garage, "--version"], capture_output=True, text=True).stdout.split()[1].split(":")[-1]
    compose_file = REPO / "deploy" / "compose" / "compose.yaml"
    check(f"garage:v{version}" in compose_file.read_text(),
          f"the compose file names the Garage release the tests run (v{version})")
    # Garage's own image is a static binary FROM scratch; ours is a glibc build, so it goes on
    # the Debian base. Same program, same release.
    garage_image = f"localhost/moss-test/garage:v{version}"
    if subprocess.run(["podman", "image", "exists", garage_image], env=ENV).returncode != 0:
        with tempfile.TemporaryDirectory() as ctx:
            shutil.copy(garage, Path(ctx) / "garage")
            (Path(ctx) / "Containerfile").write_text(
                f"FROM {BASE_IMAGE}\nCOPY garage /garage\nCMD [\"/garage\", \"server\"]\n")
            podman("build", "-q", "-t", garage_image, ctx)

    port, s3_port = free_port(), free_port()
    project = f"mossct{TAG}"
    env_file = Path(tempfile.mkdtemp()) / ".env"
    key_id = "GK" + os.urandom(12).hex()
    env_file.write_text("\n".join([
        "MOSS_SERVER_NAME=compose.test",
        f"MOSS_IMAGE={moss_image}",
        f"GARAGE_IMAGE={garage_image}",
        f"MOSS_HTTP_PORT=127.0.0.1:{port}",
        f"GARAGE_S3_PORT=127.0.0.1:{s3_port}",
        f"GARAGE_RPC_SECRET={os.urandom(32).hex()}",
        f"GARAGE_ACCESS_KEY_ID={key_id}",
        f"GARAGE_SECRET_ACCESS_KEY={os.urandom(32).hex()}",
    ]) + "\n")
    base_cmd = [str(compose_bin), "--podman-path", "podman", "-p", project, "-f", str(compose_file),
                "--env-file", str(env_file)]

    def compose(*args: str) -> str:
        r = subprocess.run(base_cmd + list(args), env=ENV, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise AssertionError(f"compose {' '.join(args)} failed: {r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        return r.stdout

    base = f"http://127.0.0.1:{port}"
    try:
        compose("up", "-d")
        wait_versions(base, "moss from the compose example", 90)
        moss_ctr = podman("ps", "--filter", f"label=io.podman.compose.project={project}",
                          "--filter", "label=com.docker.compose.service=moss", "--format", "{{.Names}}").split()[0]
        logs = subprocess.run(["podman", "logs", moss_ctr], env=ENV, capture_output=True, text=True).stderr
        store_line = next((ln for ln in logs.splitlines() if "media store" in ln), "")
        check("encrypt(" in store_line and "+s3:http://garage:3900/moss-media" in store_line,
              f"moss's media goes to the compose Garage, encrypted ({store_line.strip()[-100:]})")
        podman("exec", moss_ctr, "moss", "user", "create", "dave", "--password", "compose-pass-1")
        token = login(base, "dave", "compose-pass-1")
        blob = os.urandom(2 * 1024 * 1024 + 17)
        try:
            mxc = upload(base, token, blob)
        except AssertionError:
            tail = subprocess.run(["podman", "logs", moss_ctr], env=ENV, capture_output=True, text=True).stderr
            print("[container] moss's log:\n" + "\n".join(tail.splitlines()[-30:]), flush=True)
            raise
        compose("down")
        compose("up", "-d")
        wait_versions(base, "moss after compose down and up", 90)
        token = login(base, "dave", "compose-pass-1")
        check(download(base, token, mxc) == blob, "after down/up the media comes back from Garage, same bytes")
    finally:
        if os.environ.get("MOSS_KEEP_CONTAINERS") is None:
            subprocess.run(base_cmd + ["down", "-v"], env=ENV, capture_output=True, timeout=300)
            shutil.rmtree(env_file.parent, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--moss", required=True, type=Path)
    ap.add_argument("--compose", type=Path, default=REPO / ".venv-deploy" / "bin" / "podman-compose")
    args = ap.parse_args()
    started = time.monotonic()

    ensure_base_image()
    binary_image = f"localhost/moss-test/moss-binary:{TAG}"
    image = f"localhost/moss-test/moss:{TAG}"
    import_single_file(args.moss.resolve(), "moss", binary_image)
    try:
        t = time.monotonic()
        containerfile = (REPO / "deploy" / "Containerfile").read_text()
        check(BUILD_STAGE in containerfile, "the Containerfile's build stage is the one this test replaces")
        with tempfile.NamedTemporaryFile("w", suffix=".Containerfile") as f:
            f.write(containerfile.replace(BUILD_STAGE, f"FROM {binary_image} AS build\n"))
            f.flush()
            out = subprocess.run(
                ["podman", "build", "--format", "docker", "-f", f.name, "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
                 "-t", image, str(REPO)], env=ENV, capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            print(out.stdout[-4000:], out.stderr[-4000:], sep="\n")
        check(out.returncode == 0, f"deploy/Containerfile builds ({time.monotonic() - t:.0f} s)")
        test_image(image)
        test_container(image)
        test_compose(image, args.compose)
    finally:
        podman("rmi", "-f", image, binary_image, check_rc=False)
    log(f"passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
