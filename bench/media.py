"""Workload 6 of bench/run.py: media upload and download throughput by file size, and the memory a
server takes while it moves the bytes.

Rows (each measured with the same client code, one after the other):
  - nginx serving the data file from local disk (sendfile), and taking uploads by WebDAV PUT:
    the ceiling for the `fs` store;
  - Garage itself, a raw S3 GET and PUT of the same file with presigned URLs: the ceiling for the
    `s3` and `encrypt+s3` stores;
  - moss with its `fs`, `s3` and `encrypt+s3` media stores, a fresh process and data dir each;
  - Synapse with its local media store, and with synapse-s3-storage-provider
    (`store_synchronous: true`) on the same Garage.

The client streams both ways: uploads send the file from disk (aiohttp's file payload, 256 KiB
reads), downloads read the body as it arrives and keep nothing but the byte count (bodies up to
1 MiB are compared with the file). Before every upload, 16 bytes at every 64 KiB of the data file
are replaced with fresh random bytes, so that every upload is new content: moss deduplicates whole
files and Garage deduplicates 1 MiB blocks, and a repeated upload would otherwise skip the write.

Memory: before each transfer the server's peak RSS (VmHWM) is reset (`echo 5 >
/proc/PID/clear_refs`) and read again after it, so each transfer gets its own exact peak; VmRSS is
also sampled every 50 ms in a thread (kept in the JSON; it is the fallback where clear_refs is not
allowed). For nginx, whose master and workers are separate processes, the peaks are summed (an upper
bound). "Above idle" is that peak minus the VmRSS right after the process started (before the
benchmark user registered).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

import aiohttp

MiB = 1 << 20
FULL_SIZES = [4 << 10, MiB, 64 * MiB, 1024 * MiB]
QUICK_SIZES = [4 << 10, MiB, 64 * MiB]
MOSS_STORES = ["fs", "s3", "encrypt+s3"]
QUICK_MOSS_STORES = ["fs", "encrypt+s3"]
# Repetitions per size and direction: many for small files (latency bound, noisy), few for big.
# Small transfers take milliseconds, and a shared machine moves their medians by ±10 points over
# few repetitions: many of them cost seconds and settle the ratios the targets are about.
FULL_REPS = {4 << 10: 200, MiB: 40, 64 * MiB: 5, 1024 * MiB: 3}
QUICK_REPS = {4 << 10: 10, MiB: 3, 64 * MiB: 1}
VERIFY_UP_TO = MiB  # downloads up to this size are compared byte for byte with the file
# Pause before each timed request of an upload pair, outside the clock (see measure_row).
SETTLE_S = 0.01
RSS_INTERVAL_S = 0.05
MAX_UPLOAD = 2 << 30  # servers' upload limit: above the 1 GiB file

# Row ids, in report order; the titles are set where the rows are made.
ROW_ORDER = ["nginx", "garage", "moss-fs", "moss-s3", "moss-encrypt+s3", "synapse-local", "synapse-s3"]
# Each server row is compared with the reference that serves the same bytes from the same place.
REFERENCE = {"moss-fs": "nginx", "synapse-local": "nginx", "moss-s3": "garage", "moss-encrypt+s3": "garage",
             "synapse-s3": "garage"}


def size_label(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def parse_size(text: str) -> int:
    t = text.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    return int(t.rstrip("KMG")) * mult


def mb_per_s(size: int, seconds: float) -> float:
    """MB/s with MB = 10^6 bytes."""
    return size / seconds / 1e6


# ---------------------------------------------------------------------------------------------
# Data files


class DataFiles:
    """One file of random bytes per size, written once per run (1 GiB takes a few seconds)."""

    def __init__(self, directory: Path, sizes: list[int]):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.paths: dict[int, Path] = {}
        rng = random.Random(os.urandom(16))
        for size in sizes:
            path = self.dir / f"{size_label(size).replace(' ', '')}.bin"
            with open(path, "wb") as f:
                left = size
                while left:
                    n = min(left, 8 * MiB)
                    f.write(rng.randbytes(n))
                    left -= n
            self.paths[size] = path

    def refresh(self, size: int) -> None:
        """Makes the file new content: 16 fresh bytes at every 64 KiB (and at its start)."""
        fd = os.open(self.paths[size], os.O_WRONLY)
        try:
            for off in range(0, size, 64 << 10):
                os.pwrite(fd, os.urandom(min(16, size - off)), off)
        finally:
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Memory


def status_kib(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current VmRSS (Linux ≥ 4.0; our own processes or root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRss:
    """Peak resident memory of some processes over a `with` block, in MiB (see the module doc)."""

    def __init__(self, pids: Callable[[], list[int]]):
        self.get_pids = pids
        self.pids: list[int] = []
        self.sampled_mib = 0.0
        self.hwm_mib: float | None = None
        self._stop = threading.Event()

    def _sample(self) -> None:
        total = sum(status_kib(p, "VmRSS") or 0 for p in self.pids) / 1024
        self.sampled_mib = max(self.sampled_mib, total)

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            self._sample()

    def __enter__(self) -> "PeakRss":
        self.pids = self.get_pids()
        self._reset_ok = all([reset_peak(p) for p in self.pids]) and bool(self.pids)
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._reset_ok:
            hwm = [status_kib(p, "VmHWM") for p in self.pids]
            if all(h is not None for h in hwm):
                self.hwm_mib = sum(hwm) / 1024

    @property
    def peak_mib(self) -> float:
        return max(self.sampled_mib, self.hwm_mib or 0.0)


def rss_mib(pids: list[int]) -> float:
    return sum(status_kib(p, "VmRSS") or 0 for p in pids) / 1024


# ---------------------------------------------------------------------------------------------
# Transfers (the same client code for every row)


async def _check(r: aiohttp.ClientResponse, what: str) -> None:
    if r.status >= 300:
        body = (await r.read())[:500]
        raise RuntimeError(f"{what}: HTTP {r.status} {body!r}")


async def put_file(http: aiohttp.ClientSession, method: str, url: str, path: Path, headers: dict) -> bytes:
    """Sends the file as the request body, streamed from disk; returns the response body."""
    with open(path, "rb") as f:
        async with http.request(method, url, data=f, headers={"Content-Type": "application/octet-stream", **headers}) as r:
            await _check(r, f"{method} {url.split('?')[0]}")
            return await r.read()


async def get_stream(http: aiohttp.ClientSession, url: str, headers: dict, size: int, keep: bool) -> list[bytes] | None:
    """Reads the response body as it arrives, keeping only its length, or with `keep` the bytes
    (for the caller to compare with the file after its clock has stopped)."""
    got = 0
    chunks: list[bytes] = []
    async with http.get(url, headers=headers) as r:
        await _check(r, f"GET {url.split('?')[0]}")
        async for chunk in r.content.iter_any():
            got += len(chunk)
            if keep:
                chunks.append(chunk)
    if got != size:
        raise RuntimeError(f"GET {url.split('?')[0]}: {got} bytes, expected {size}")
    return chunks if keep else None


def verify_body(chunks: list[bytes] | None, path: Path, url: str) -> None:
    if chunks is not None and b"".join(chunks) != path.read_bytes():
        raise RuntimeError(f"GET {url.split('?')[0]}: the body differs from the uploaded file")


class Row:
    """One way of storing and serving a file; subclasses say how."""

    id = "?"
    # A new connection per request (the raw Garage reference), else connections are reused.
    fresh_connections = False
    title = "?"

    def pids(self) -> list[int]:
        raise NotImplementedError

    async def setup(self, http: aiohttp.ClientSession) -> None:
        pass

    async def upload(self, http: aiohttp.ClientSession, path: Path, size: int) -> str:
        """Uploads and returns the URL to download it from."""
        raise NotImplementedError

    def download_headers(self) -> dict:
        return {}

    async def after_uploads(self, size: int) -> None:
        """Called between a size's uploads (of `size` bytes) and its downloads."""

    def same_object(self) -> tuple[str, int] | None:
        """A raw GET (URL, byte count) of the very object the server stored for the last upload,
        timed right after each of the row's downloads; None where there is no such thing."""
        return None

    def paired_put(self, path: Path) -> str | None:
        """A presigned URL to PUT a file of the same size straight to the row's store, timed right
        before each of the row's uploads; None where there is no such store."""
        return None

    def make_durable(self, path: Path) -> bool:
        """For a row whose uploads are not durable when answered: makes the last one so (what a
        durable server would have done before answering) and says True; the time it takes is
        added to the upload's for a "durable" figure beside the plain one."""
        return False


class MatrixRow(Row):
    """moss or Synapse: POST /_matrix/media/v3/upload, GET /_matrix/client/v1/media/download."""

    def __init__(self, row_id: str, title: str, base: str, pid: int):
        self.id, self.title, self.base, self.pid = row_id, title, base, pid
        self.token = ""

    def pids(self) -> list[int]:
        return [self.pid]

    async def setup(self, http: aiohttp.ClientSession) -> None:
        body = {"username": f"media{os.urandom(4).hex()}", "password": "bench-password-1",
                "auth": {"type": "m.login.dummy"}}
        url = self.base + "/_matrix/client/v3/register"
        async with http.post(url, json=body) as r:
            data = await r.json(content_type=None)
        if "access_token" not in data:
            body["auth"]["session"] = data.get("session")
            async with http.post(url, json=body) as r:
                data = await r.json(content_type=None)
        if "access_token" not in data:
            raise RuntimeError(f"register on {self.title}: {data}")
        self.token = data["access_token"]

    def download_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def upload(self, http, path, size):
        body = await put_file(http, "POST", f"{self.base}/_matrix/media/v3/upload?filename={path.name}", path,
                              self.download_headers())
        mxc = json.loads(body)["content_uri"]
        return f"{self.base}/_matrix/client/v1/media/download/{mxc.removeprefix('mxc://')}"


class MossS3Row(MatrixRow):
    """moss on Garage: each download is paired with a raw GET of the object moss stored for it
    (ciphertext for encrypt+s3), right after it, so the two meet the same object, the same Garage
    state and the same moment of a shared machine."""

    def __init__(self, row_id, title, base, pid, garage: "Garage", prefix: str):
        super().__init__(row_id, title, base, pid)
        self.garage, self.prefix = garage, prefix
        self.raw: tuple[str, int] | None = None

    async def after_uploads(self, size: int) -> None:
        client, bucket = self.garage.client(), self.garage.env["MOSS_TEST_S3_BUCKET"]
        # The file's own size, or its ciphertext's (16 bytes more per 64 KiB chunk), with the
        # 116-byte key header in front for objects up to 1 MiB.
        sealed = size + 16 * max(1, -(-size // (64 << 10)))
        fits = (size, sealed, sealed + 116)
        objects = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=self.prefix):
            objects += [o for o in page.get("Contents", []) if not o["Key"].endswith(".k") and o["Size"] in fits]
        newest = max(objects, key=lambda o: o["LastModified"])
        self.raw = (self.garage.presign("get_object", newest["Key"]), newest["Size"])

    def same_object(self) -> tuple[str, int] | None:
        return self.raw

    def paired_put(self, path: Path) -> str | None:
        return self.garage.presign("put_object", f"raw-pair/{path.name}")


class SynapseS3Row(MatrixRow):
    """Synapse with synapse-s3-storage-provider: the local copies are deleted after the uploads,
    so downloads come through the provider from Garage (Synapse would serve a local copy first)."""

    def __init__(self, row_id, title, base, pid, media_store: Path):
        super().__init__(row_id, title, base, pid)
        self.media_store = media_store

    async def after_uploads(self, size: int) -> None:
        local = self.media_store / "local_content"
        if local.exists():
            shutil.rmtree(local)


class NginxRow(Row):
    id = "nginx"
    title = "nginx (local disk: sendfile, WebDAV PUT)"

    def __init__(self, nginx: "Nginx"):
        self.nginx = nginx

    def pids(self):
        return self.nginx.pids()

    async def upload(self, http, path, size):
        await put_file(http, "PUT", f"{self.nginx.base}/upload/{path.name}", path, {})
        return f"{self.nginx.base}/files/{path.name}"

    def make_durable(self, path: Path) -> bool:
        # nginx's WebDAV PUT answers after writing its temp file and renaming it into place,
        # never fsyncing: the file, then the directory that names it (as moss's fs store does).
        stored = self.nginx.work / "upload" / path.name
        for target, flags in ((stored, os.O_RDONLY), (stored.parent, os.O_RDONLY | os.O_DIRECTORY)):
            fd = os.open(target, flags)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return True


class GarageRow(Row):
    id = "garage"
    title = "Garage raw S3 (presigned PUT/GET)"
    fresh_connections = True

    def __init__(self, garage: "Garage"):
        self.garage = garage

    def pids(self):
        return [self.garage.pid]

    async def upload(self, http, path, size):
        key = f"raw/{path.name}"
        await put_file(http, "PUT", self.garage.presign("put_object", key), path, {})
        return self.garage.presign("get_object", key)


async def measure_row(row: Row, files: DataFiles, sizes: list[int], reps: dict[int, int], idle_rss_mib: float) -> dict:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=120)
    out: dict = {"title": row.title, "idle_rss_mib": idle_rss_mib, "sizes": {}}
    # Raw Garage requests go on a fresh connection each (as curl would): on a reused one, this
    # Python client meets Garage's Nagle + delayed-ACK stall (≈ 40 ms per small object), which
    # would make the reference slower than the store (docs/benchmarks.md, "Media").
    fresh = aiohttp.TCPConnector(limit=4, force_close=True)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=4)) as reused, \
            aiohttp.ClientSession(timeout=timeout, connector=fresh) as raw_http:
        http = raw_http if row.fresh_connections else reused
        await row.setup(http)
        for size in sizes:
            n = reps[size]
            path = files.paths[size]
            entry = {}
            ups, up_peaks, up_sampled, url, raw_puts, durable_ups = [], [], [], "", [], []
            for _ in range(n):
                put_url = row.paired_put(path)
                if put_url:
                    # Right before the upload, other new content of the same size: Garage keeps
                    # each block once, so the very bytes moss stores (unencrypted) would skip
                    # Garage's writes for whichever of the two comes second.
                    files.refresh(size)
                    # A pause before each timed request of a pair: what a server does after
                    # answering (moss writes the upload's metadata record and confirms it)
                    # finishes before the next one, which would otherwise be charged for it,
                    # and both requests start from the same idle machine.
                    await asyncio.sleep(SETTLE_S)
                    t0 = time.perf_counter()
                    await put_file(raw_http, "PUT", put_url, path, {})
                    raw_puts.append(time.perf_counter() - t0)
                    await asyncio.sleep(SETTLE_S)
                files.refresh(size)
                with PeakRss(row.pids) as mem:
                    t0 = time.perf_counter()
                    url = await row.upload(http, path, size)
                    ups.append(time.perf_counter() - t0)
                    t1 = time.perf_counter()
                    if row.make_durable(path):
                        durable_ups.append(ups[-1] + time.perf_counter() - t1)
                up_peaks.append(mem.peak_mib)
                up_sampled.append(mem.sampled_mib)
            await row.after_uploads(size)
            downs, down_peaks, down_sampled = [], [], []
            verify = path if size <= VERIFY_UP_TO else None
            same, raw_times = row.same_object(), []
            for _ in range(n):
                with PeakRss(row.pids) as mem:
                    t0 = time.perf_counter()
                    body = await get_stream(http, url, row.download_headers(), size, verify is not None)
                    downs.append(time.perf_counter() - t0)
                # Checked outside the clock: the raw GET it is paired with is not checked at all.
                if verify is not None:
                    verify_body(body, verify, url)
                down_peaks.append(mem.peak_mib)
                down_sampled.append(mem.sampled_mib)
                if same:
                    t0 = time.perf_counter()
                    await get_stream(raw_http, same[0], {}, same[1], False)
                    raw_times.append(time.perf_counter() - t0)
            for name, times, peaks, sampled in (("upload", ups, up_peaks, up_sampled),
                                                ("download", downs, down_peaks, down_sampled)):
                rates = [mb_per_s(size, t) for t in times]
                entry[name] = {
                    "mb_s": statistics.median(rates), "mb_s_samples": rates,
                    "ms_median": statistics.median(times) * 1000,
                    "peak_rss_mib": max(peaks), "peak_above_idle_mib": max(peaks) - idle_rss_mib,
                    "peak_rss_samples_mib": peaks, "sampled_peak_rss_mib": max(sampled),
                }
            if durable_ups:
                entry["durable_upload"] = {
                    "mb_s": statistics.median(mb_per_s(size, t) for t in durable_ups),
                    "ms_median": statistics.median(durable_ups) * 1000,
                }
            if raw_puts:
                # Paired: each upload against a raw PUT of the same size right before it.
                pairs = [r / u for u, r in zip(ups, raw_puts)]
                entry["paired_raw_put"] = {
                    "mb_s": statistics.median(mb_per_s(size, t) for t in raw_puts),
                    "mb_s_samples": [mb_per_s(size, t) for t in raw_puts],
                    "upload_ratio": statistics.median(pairs), "upload_ratio_samples": pairs,
                }
            if raw_times:
                # Paired: each download against the raw GET right after it (the raw GET moves
                # the object's own bytes, a little more than the file for encrypt+s3).
                pairs = [r / d for d, r in zip(downs, raw_times)]
                entry["same_object_raw_get"] = {
                    "mb_s": statistics.median(mb_per_s(same[1], t) for t in raw_times),
                    "mb_s_samples": [mb_per_s(same[1], t) for t in raw_times],
                    "download_ratio": statistics.median(pairs), "download_ratio_samples": pairs,
                }
            out["sizes"][str(size)] = entry
            print(f"  {row.title}: {size_label(size)} up {entry['upload']['mb_s']:.1f} MB/s, "
                  f"down {entry['download']['mb_s']:.1f} MB/s, peak +{max(up_peaks + down_peaks) - idle_rss_mib:.1f} MiB",
                  flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# Reference servers


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def nginx_binary() -> str | None:
    return shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)


class Nginx:
    """nginx in the foreground with a generated config on a free loopback port: serves DIR's files
    at /files/ (sendfile) and takes WebDAV PUTs at /upload/."""

    def __init__(self, work: Path, files: Path):
        self.work, self.files = work, files
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def version(self) -> str:
        res = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True)
        return (res.stderr or res.stdout).strip().rpartition("/")[2]

    async def start(self) -> None:
        w = self.work
        w.mkdir(parents=True, exist_ok=True)
        (w / "upload").mkdir(exist_ok=True)
        # As root, workers would run as nobody and could not read our private temp dirs.
        user = "user root;" if os.geteuid() == 0 else ""
        (w / "nginx.conf").write_text(f"""
daemon off;
master_process on;
worker_processes auto;
{user}
pid {w}/nginx.pid;
error_log {w}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {w}/client_body;
    proxy_temp_path {w}/proxy;
    fastcgi_temp_path {w}/fastcgi;
    uwsgi_temp_path {w}/uwsgi;
    scgi_temp_path {w}/scgi;
    server {{
        listen 127.0.0.1:{self.port};
        location /files/ {{ alias {self.files}/; }}
        location /upload/ {{
            root {w};
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
            client_body_buffer_size 1m;
        }}
    }}
}}
""")
        log = open(w / "stderr.log", "w")
        self.proc = subprocess.Popen([nginx_binary(), "-p", str(w), "-c", str(w / "nginx.conf"), "-e", str(w / "error.log")],
                                     stdout=log, stderr=log)
        async with aiohttp.ClientSession() as http:
            for _ in range(500):
                try:
                    async with http.get(f"{self.base}/files/") as r:
                        await r.read()
                        return
                except aiohttp.ClientError:
                    pass
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited during start: {(w / 'error.log').read_text()[-500:]}")
                await asyncio.sleep(0.01)
        raise RuntimeError("nginx did not start")

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)] if self.proc else []

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def garage_binary() -> str | None:
    path = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "garage"
    return str(path) if os.access(path, os.X_OK) else None


class Garage:
    """A single-node Garage of our own (scripts/garage-start.sh), on free ports."""

    def __init__(self, directory: Path, repo: Path):
        self.dir, self.repo = directory, repo
        self.pid = 0
        self.env: dict = {}
        self._client = None

    def start(self) -> None:
        started = time.perf_counter()
        env = {**os.environ, "GARAGE_S3_PORT": str(free_port()), "GARAGE_RPC_PORT": str(free_port())}
        res = subprocess.run([str(self.repo / "scripts/garage-start.sh"), str(self.dir)], capture_output=True, text=True, env=env)
        pidfile = self.dir / "garage.pid"
        if pidfile.exists():
            self.pid = int(pidfile.read_text().split()[0])
        if res.returncode != 0:
            self.stop()
            raise RuntimeError(f"garage-start.sh failed:\n{res.stderr[-2000:]}")
        for line in Path(res.stdout.strip().splitlines()[-1]).read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            self.env[key] = value
        print(f"Garage up at {self.endpoint} in {time.perf_counter() - started:.1f} s", flush=True)

    @property
    def endpoint(self) -> str:
        return self.env["MOSS_TEST_S3_ENDPOINT"]

    def version(self) -> str:
        res = subprocess.run([garage_binary(), "--version"], capture_output=True, text=True)
        words = res.stdout.split()
        return words[1].removeprefix("cargo:") if res.returncode == 0 and len(words) > 1 else "?"

    def presign(self, op: str, key: str) -> str:
        """A presigned URL (SigV4, path style) for the benchmark bucket; boto3 only signs here."""
        return self.client().generate_presigned_url(op, Params={"Bucket": self.env["MOSS_TEST_S3_BUCKET"], "Key": key},
                                                    ExpiresIn=3600)

    def client(self):
        """boto3's S3 client for the benchmark bucket (made on first use)."""
        if self._client is None:
            import boto3
            from botocore.config import Config
            self._client = boto3.client(
                "s3", endpoint_url=self.endpoint, region_name=self.env["MOSS_TEST_S3_REGION"],
                aws_access_key_id=self.env["MOSS_TEST_S3_KEY_ID"], aws_secret_access_key=self.env["MOSS_TEST_S3_SECRET"],
                config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
        return self._client

    def moss_env(self, prefix: str) -> dict:
        e = self.env
        return {
            "MOSS_MEDIA__STORE": "s3",
            "MOSS_MEDIA__S3__ENDPOINT": e["MOSS_TEST_S3_ENDPOINT"],
            "MOSS_MEDIA__S3__REGION": e["MOSS_TEST_S3_REGION"],
            "MOSS_MEDIA__S3__BUCKET": e["MOSS_TEST_S3_BUCKET"],
            "MOSS_MEDIA__S3__ACCESS_KEY_ID": e["MOSS_TEST_S3_KEY_ID"],
            "MOSS_MEDIA__S3__SECRET_ACCESS_KEY": e["MOSS_TEST_S3_SECRET"],
            # Quoted: the value would otherwise be parsed as something other than a string.
            "MOSS_MEDIA__S3__PREFIX": f'"{prefix}"',
        }

    def synapse_provider(self, prefix: str) -> dict:
        e = self.env
        return {
            "module": "s3_storage_provider.S3StorageProviderBackend",
            "store_local": True, "store_remote": True, "store_synchronous": True,
            "config": {"bucket": e["MOSS_TEST_S3_BUCKET"], "region_name": e["MOSS_TEST_S3_REGION"],
                       "endpoint_url": e["MOSS_TEST_S3_ENDPOINT"], "access_key_id": e["MOSS_TEST_S3_KEY_ID"],
                       "secret_access_key": e["MOSS_TEST_S3_SECRET"], "prefix": prefix},
        }

    def stop(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, 15)
            except OSError:
                pass
            for _ in range(100):
                if not Path(f"/proc/{self.pid}").exists():
                    break
                time.sleep(0.05)
            self.pid = 0


def moss_prefix(store: str) -> str:
    return f"moss-{store.replace('+', '-')}/"


def moss_store_env(store: str, garage: Garage | None) -> dict:
    env = {"MOSS_MEDIA__MAX_UPLOAD_SIZE": str(MAX_UPLOAD)}
    if store in ("s3", "encrypt+s3"):
        env.update(garage.moss_env(moss_prefix(store)))
    if store == "encrypt+s3":
        env["MOSS_MEDIA__ENCRYPTION__ENABLED"] = "true"
    return env


# ---------------------------------------------------------------------------------------------
# Report


def ratio(media: dict, row: str, ref: str, size: int, direction: str) -> float | None:
    a = media["rows"].get(row, {}).get("sizes", {}).get(str(size), {}).get(direction, {}).get("mb_s")
    b = media["rows"].get(ref, {}).get("sizes", {}).get(str(size), {}).get(direction, {}).get("mb_s")
    return a / b if a and b else None


def targets(media: dict | None) -> list[dict]:
    """The media targets: download ≥ 80% of nginx (fs) and of a raw Garage GET (encrypt+s3), for
    the large sizes (64 MiB and up: the smaller ones measure request latency more than throughput);
    peak RSS during a 1 GiB transfer < idle + 100 MiB (the largest size of the run, in quick mode)."""
    if not media:
        return []
    out = []
    sizes = media["sizes"]
    big = [s for s in sizes if s >= 64 * MiB] or sizes[-1:]
    for row, ref, what in (("moss-fs", "nginx", "nginx (fs)"), ("moss-encrypt+s3", "garage", "a raw Garage GET (encrypt+s3)")):
        for size in big:
            t = {"target": f"media download {size_label(size)}, {row.removeprefix('moss-')} vs {what.split(' (')[0]}",
                 "goal": f"≥ 80% of {what}"}
            r = ratio(media, row, ref, size, "download")
            same = media["rows"].get(row, {}).get("sizes", {}).get(str(size), {}).get("same_object_raw_get")
            if same:
                # "A raw GET of the same object": the paired measurement is that, exactly.
                p = same["download_ratio"]
                a = media["rows"][row]["sizes"][str(size)]["download"]["mb_s"]
                also = f"; {r:.0%} of the separate raw Garage row" if r is not None else ""
                t.update(measured=f"{p:.0%} paired ({a:.0f} vs {same['mb_s']:.0f} MB/s{also})", ratio=p,
                         met=p >= 0.8, miss=f"{p:.0%} of a raw GET of the same object, needs ≥ 80%")
            elif r is None:
                t.update(measured="not measured", met=None)
            else:
                a = media["rows"][row]["sizes"][str(size)]["download"]["mb_s"]
                b = media["rows"][ref]["sizes"][str(size)]["download"]["mb_s"]
                t.update(measured=f"{r:.0%} ({a:.0f} vs {b:.0f} MB/s)", ratio=r, met=r >= 0.8,
                         miss=f"{r:.0%} of {what.split(' (')[0]}, needs ≥ 80%")
            out.append(t)
    # Uploads to the fs store ≥ 80% of nginx's. nginx answers a PUT before its file is durable
    # and moss after (an acknowledged upload survives power loss), so the reference is nginx's
    # PUT plus the fsyncs that make its file durable (file, then directory); the ratio to the
    # plain PUT is shown beside it.
    for size in sizes:
        e = media["rows"].get("moss-fs", {}).get("sizes", {}).get(str(size))
        n = media["rows"].get("nginx", {}).get("sizes", {}).get(str(size))
        if not e or not n:
            continue
        t = {"target": f"media upload {size_label(size)}, fs vs nginx", "goal": "≥ 80% of nginx's PUT made durable"}
        if "durable_upload" not in n:
            t.update(measured="not measured", met=None)
        else:
            d, a, plain = n["durable_upload"]["mb_s"], e["upload"]["mb_s"], n["upload"]["mb_s"]
            t.update(measured=f"{a / d:.0%} ({a:.1f} vs {d:.1f} MB/s; {a / plain:.0%} of the PUT alone, {plain:.1f} MB/s)",
                     ratio=a / d, met=a / d >= 0.8, miss=f"{a / d:.0%} of nginx's PUT made durable, needs ≥ 80%")
        out.append(t)
    # The small-object targets, on the paired measurements: 4 KiB and 1 MiB downloads ≥ 80% of a
    # raw GET of the same object, uploads ≥ 80% of a raw PUT of the same size, a 4 KiB download's
    # p50 ≤ 3 ms (loopback Garage, cache off).
    for row in ("moss-s3", "moss-encrypt+s3"):
        for size in [s for s in sizes if s in (4 << 10, MiB)]:
            e = media["rows"].get(row, {}).get("sizes", {}).get(str(size))
            if not e:
                continue
            name = f"{size_label(size)}, {row.removeprefix('moss-')}"
            for key, ratio_key, what, ref in (("same_object_raw_get", "download_ratio", "download", "raw GET of the same object"),
                                               ("paired_raw_put", "upload_ratio", "upload", "raw PUT of the same size")):
                t = {"target": f"media {what} {name}", "goal": f"≥ 80% of a {ref}, paired"}
                if key not in e:
                    t.update(measured="not measured", met=None)
                else:
                    p = e[key][ratio_key]
                    t.update(measured=f"{p:.0%} paired ({e[what]['mb_s']:.2f} vs {e[key]['mb_s']:.2f} MB/s)", ratio=p,
                             met=p >= 0.8, miss=f"{p:.0%} of a {ref}, needs ≥ 80%")
                out.append(t)
            if size == 4 << 10:
                ms = e["download"]["ms_median"]
                out.append({"target": f"media download {name}, p50", "goal": "≤ 3 ms",
                            "measured": f"{ms:.2f} ms", "value": ms, "met": ms <= 3.0,
                            "miss": f"{ms:.2f} ms, needs ≤ 3 ms"})
    top = sizes[-1] if sizes else None
    for store in MOSS_STORES:
        row = f"moss-{store}"
        if row not in media["rows"] or top is None:
            continue
        e = media["rows"][row]["sizes"].get(str(top))
        t = {"target": f"peak RSS, {size_label(top)} transfer, moss {store}", "goal": "< idle + 100 MiB"}
        if not e:
            t.update(measured="not measured", met=None)
        else:
            above = max(e["upload"]["peak_above_idle_mib"], e["download"]["peak_above_idle_mib"])
            t.update(measured=f"idle + {above:.1f} MiB (upload +{e['upload']['peak_above_idle_mib']:.1f}, "
                              f"download +{e['download']['peak_above_idle_mib']:.1f})",
                     value=above, met=above < 100, miss=f"idle + {above:.0f} MiB, needs < idle + 100 MiB")
        out.append(t)
    return out


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"


def pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def report(media: dict) -> list[str]:
    lines = ["## Media (workload 6)", ""]
    v = media.get("versions", {})
    lines.append(" · ".join([*(f"{k} {val}" for k, val in v.items()),
                             ", ".join(f"{size_label(s)} × {media['reps'][str(s)]}" for s in media["sizes"])
                             + " repetitions per direction (medians)",
                             f"{media.get('duration_s', 0):.0f} s for the media rows"]))
    lines += ["", "| size | row | upload MB/s | download MB/s | peak RSS above idle, up / down (MiB) "
              "| download vs nginx | download vs raw Garage | upload vs the same reference |",
              "|---|---|---|---|---|---|---|---|"]
    rows = [r for r in ROW_ORDER if r in media["rows"]]
    for size in media["sizes"]:
        for r in rows:
            e = media["rows"][r]["sizes"].get(str(size))
            if not e:
                continue
            up, down = e["upload"], e["download"]
            ref = REFERENCE.get(r)
            lines.append("| " + " | ".join([
                size_label(size), media["rows"][r]["title"], fmt(up["mb_s"]), fmt(down["mb_s"]),
                f"{up['peak_above_idle_mib']:.1f} / {down['peak_above_idle_mib']:.1f}",
                pct(ratio(media, r, "nginx", size, "download")) if ref == "nginx" else "",
                pct(ratio(media, r, "garage", size, "download")) if ref == "garage" else "",
                pct(ratio(media, r, ref, size, "upload")) if ref else "",
            ]) + " |")
    lines += ["", "Rows on local disk are compared with nginx, rows on S3 with the raw Garage GET/PUT "
              "(as a percentage of the reference's MB/s, at the same size). "
              "MB/s = 10⁶ bytes per second, the median over the repetitions; one client streams the "
              "file from disk and reads the response as it arrives. Every upload is new content (moss "
              "deduplicates files, Garage 1 MiB blocks). Peak RSS: each transfer's own peak (VmHWM reset "
              "before it), minus the process's RSS right after it started; for nginx, master and workers "
              "summed. Idle RSS: " + ", ".join(
                  f"{media['rows'][r]['title'].split(' (')[0]} {media['rows'][r]['idle_rss_mib']:.1f} MiB" for r in rows)
              + ". nginx uploads are WebDAV PUTs to its temp dir then a rename (no fsync); the Synapse "
              "s3 row deletes Synapse's local copies after the uploads so that downloads come from Garage "
              "through the provider. How to read these (which rows fsync, the ≈ 40 ms stalls of small "
              "objects on reused connections): docs/benchmarks.md, \"Media (workload 6)\"."]
    paired = [(size, r, media["rows"][r]["sizes"][str(size)]) for r in rows for size in media["sizes"]
              if "same_object_raw_get" in media["rows"][r]["sizes"].get(str(size), {})]
    if paired:
        lines += ["", "**Paired with a raw GET of the same object.** Each moss S3 download above was followed "
                  "at once by a raw presigned GET of the very object moss stored for that file (its "
                  "ciphertext, for encrypt+s3): same object, same Garage state, same moment of this shared "
                  "machine. Median of the per-pair ratios (raw GET time / moss download time):", "",
                  "| size | row | moss download MB/s | raw GET of its object MB/s | moss / raw, paired |",
                  "|---|---|---|---|---|"]
        for size, r, e in sorted(paired, key=lambda x: (x[0], ROW_ORDER.index(x[1]))):
            same = e["same_object_raw_get"]
            lines.append(f"| {size_label(size)} | {media['rows'][r]['title']} | {fmt(e['download']['mb_s'])} "
                         f"| {fmt(same['mb_s'])} | {same['download_ratio']:.0%} |")
    paired_up = [(size, r, media["rows"][r]["sizes"][str(size)]) for r in rows for size in media["sizes"]
                 if "paired_raw_put" in media["rows"][r]["sizes"].get(str(size), {})]
    if paired_up:
        lines += ["", "**Paired with a raw PUT of the same size.** Each moss S3 upload above was preceded at "
                  "once by a raw presigned PUT of a file of the same size to the same Garage (new content, "
                  "as every upload here: Garage stores each block once; a new connection, as the raw row): "
                  "median of the per-pair ratios (raw PUT time / moss upload time). moss writes "
                  "more than the raw PUT does: the metadata record beside each file, and for encrypt+s3 each "
                  "object's wrapped key.", "",
                  "| size | row | moss upload MB/s | raw PUT of the same size MB/s | moss / raw, paired |",
                  "|---|---|---|---|---|"]
        for size, r, e in sorted(paired_up, key=lambda x: (x[0], ROW_ORDER.index(x[1]))):
            same = e["paired_raw_put"]
            lines.append(f"| {size_label(size)} | {media['rows'][r]['title']} | {fmt(e['upload']['mb_s'])} "
                         f"| {fmt(same['mb_s'])} | {same['upload_ratio']:.0%} |")
    for r, why in media.get("skipped", {}).items():
        lines += ["", f"Not measured: {r}: {why}"]
    lines.append("")
    return lines
