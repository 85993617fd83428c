#!/usr/bin/env python3
"""The Ansible role in deploy/ansible, run for real with ansible-core against this machine.

`connection: local`, into a throw-away root prefix (every path the role writes lands under it;
the system account `moss` is created for real when this runs as root). Where no systemd runs
the role does not start services, so this starts what it configured: moss as the role's user
with the role's moss.toml, and nginx (then Caddy) with the role's site, on free ports with a
certificate made here for `example.test` and `matrix.example.test`. Then, through the proxy only:
/versions, .well-known delegation of clients and servers, the server keys over the federation
route, the redirect from plain HTTP, the admin API kept out, and a user who logs in and
uploads and downloads 3 MiB of media (on Garage, encrypted, when MOSS_TEST_S3_* is set, as
scripts/test does). The role then runs again and must change nothing; ansible-lint must be clean.

Usage: tests/deploy/ansible_role.py --moss target/debug/moss   (after scripts/setup-deploy.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "clients" / "python"))
from ports import free_port  # noqa: E402

VENV = REPO / ".venv-deploy" / "bin"
DEPLOY = REPO / "deploy" / "ansible"
SERVER_NAME = "example.test"
MATRIX_HOST = "matrix.example.test"


def log(msg: str) -> None:
    print(f"[ansible-role] {msg}", flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, text=True, capture_output=True, **kw)


def check(cond: bool, what: str) -> None:
    if not cond:
        raise AssertionError(what)
    log(f"ok: {what}")


class Proxy:
    """Talks to the reverse proxy under the role's names, with the test CA (curl --resolve)."""

    def __init__(self, https_port: int, http_port: int, ca: Path):
        self.https_port, self.http_port, self.ca = https_port, http_port, ca

    def curl(self, url: str, *extra: str) -> tuple[int, dict[str, str], bytes]:
        argv = ["curl", "-sS", "--max-time", "30", "--cacert", str(self.ca), "-D", "-"]
        for host in (SERVER_NAME, MATRIX_HOST):
            for port in (self.https_port, self.http_port):
                argv += ["--resolve", f"{host}:{port}:127.0.0.1"]
        out = subprocess.run(argv + list(extra) + [url], capture_output=True, check=True).stdout
        head, _, body = out.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        return status, headers, body

    def url(self, host: str, path: str) -> str:
        return f"https://{host}:{self.https_port}{path}"

    def json(self, host: str, path: str, *extra: str) -> tuple[int, dict]:
        status, _, body = self.curl(self.url(host, path), *extra)
        return status, json.loads(body or b"{}")


def wait_for(proxy: Proxy, what: str, deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            status, _ = proxy.json(MATRIX_HOST, "/_matrix/client/versions")
            if status == 200:
                return
            last = status
        except (subprocess.CalledProcessError, ValueError) as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{what} did not answer /versions in {deadline_s} s: {last}")


def make_certificate(work: Path) -> tuple[Path, Path]:
    cert, key = work / "tls" / "fullchain.pem", work / "tls" / "privkey.pem"
    cert.parent.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", f"/CN={MATRIX_HOST}",
         "-addext", f"subjectAltName=DNS:{MATRIX_HOST},DNS:{SERVER_NAME}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def role_vars(prefix: Path, moss_bin: Path, cert: Path, key: Path, ports: dict[str, int], proxy: str) -> dict:
    as_root = os.geteuid() == 0
    user = "moss" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    group = "moss" if as_root else pwd.getpwuid(os.geteuid()).pw_name
    v = {
        "moss_root_prefix": str(prefix),
        "moss_server_name": SERVER_NAME,
        "moss_matrix_host": MATRIX_HOST,
        "moss_binary_src": str(moss_bin),
        "moss_create_user": as_root,
        "moss_user": user,
        "moss_group": group,
        "moss_client_bind": f"127.0.0.1:{ports['client']}",
        "moss_federation_bind": f"127.0.0.1:{ports['federation']}",
        "moss_reverse_proxy": proxy,
        "moss_proxy_https_port": ports["https"],
        "moss_proxy_http_port": ports["http"],
        "moss_tls_certificate": str(cert),
        "moss_tls_certificate_key": str(key),
        "moss_registration_shared_secret": "shared-secret-for-the-role-test",
        "moss_max_upload_size": 8 * 1024 * 1024,
        "moss_turn_uris": ["turn:turn.example.test:3478?transport=udp"],
        "moss_turn_shared_secret": "turn-secret",
        "moss_appservices": [{
            "name": "ircbridge",
            "content": {
                "id": "ircbridge", "url": "http://127.0.0.1:9898",
                "as_token": "as-token-of-the-role-test", "hs_token": "hs-token-of-the-role-test",
                "sender_localpart": "ircbridge", "rate_limited": False,
                "namespaces": {"users": [{"exclusive": True, "regex": "@irc_.*"}], "aliases": [], "rooms": []},
            },
        }],
        # The test's own config tweaks: no rate limits for the quick checks below.
        "moss_config_extra": "[rate_limits]\nenabled = false\n",
    }
    if os.environ.get("MOSS_TEST_S3_ENDPOINT"):
        v.update({
            "moss_media_store": "s3",
            "moss_media_s3_endpoint": os.environ["MOSS_TEST_S3_ENDPOINT"],
            "moss_media_s3_region": os.environ.get("MOSS_TEST_S3_REGION", "garage"),
            "moss_media_s3_bucket": os.environ["MOSS_TEST_S3_BUCKET"],
            "moss_media_s3_access_key_id": os.environ["MOSS_TEST_S3_KEY_ID"],
            "moss_media_s3_secret_access_key": os.environ["MOSS_TEST_S3_SECRET"],
            "moss_media_s3_prefix": f"ansible-role-test-{os.getpid()}/",
        })
    return v


def play(work: Path, vars_: dict, name: str, dry_run: bool = False) -> dict[str, int]:
    """Runs the example playbook on this machine (`--check --diff` when dry_run); returns the
    PLAY RECAP counters."""
    inventory = work / "inventory.ini"
    inventory.write_text(f"[moss]\nlocalhost ansible_connection=local ansible_python_interpreter={VENV / 'python'}\n")
    vars_file = work / f"vars-{name}.json"
    vars_file.write_text(json.dumps(vars_))
    env = dict(os.environ, PATH=f"{VENV}:{os.environ['PATH']}", ANSIBLE_CONFIG=str(DEPLOY / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"), ANSIBLE_REMOTE_TEMP=str(work / "ansible-tmp"),
               ANSIBLE_HOME=str(work / "ansible-home"))
    started = time.monotonic()
    r = run([str(VENV / "ansible-playbook"), "-i", str(inventory), "-e", f"@{vars_file}",
             "--become-method", "ansible.builtin.su", str(DEPLOY / "playbook.yml")]
            + (["--check", "--diff"] if dry_run else []),
            env=env, cwd=DEPLOY)
    (work / f"ansible-{name}.log").write_text(r.stdout + r.stderr)
    m = re.search(r"^localhost\s*:\s*(.*)$", r.stdout, re.M)
    if r.returncode != 0 or not m:
        print(r.stdout[-6000:], r.stderr[-3000:], sep="\n")
        raise AssertionError(f"ansible-playbook ({name}) failed with {r.returncode}")
    recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
    log(f"playbook {name}: {recap} in {time.monotonic() - started:.1f} s")
    return recap


def changed_tasks(work: Path, name: str) -> list[str]:
    text = (work / f"ansible-{name}.log").read_text()
    tasks, current = [], None
    for line in text.splitlines():
        if line.startswith("TASK ["):
            current = line
        elif line.startswith("changed:") and current:
            tasks.append(current)
    return tasks


def verify_unit(prefix: Path, work: Path, moss_bin: Path) -> None:
    """systemd-analyze verify of the unit as installed, its drop-in included (read from the
    unit's directory): ExecStart is pointed at the binary under test, which verify checks."""
    if not shutil.which("systemd-analyze"):
        check(not os.environ.get("MOSS_REQUIRE_SYSTEMD_ANALYZE"), "systemd-analyze is required")
        log("systemd-analyze is missing: the unit is not verified")
        return
    units = work / "units"
    shutil.copytree(prefix / "etc/systemd/system", units, symlinks=False)
    for f in (units / "moss.service", units / "moss.service.d" / "ansible.conf"):
        f.write_text(f.read_text().replace("/usr/local/bin/moss", str(moss_bin)))
    r = run(["systemd-analyze", "verify", str(units / "moss.service")])
    text = r.stdout + r.stderr
    check(r.returncode == 0 and "moss.service" not in text and "ansible.conf" not in text,
          f"systemd-analyze verify: the unit with the role's drop-in {text.strip()[:500]}")


def start_moss(prefix: Path, vars_: dict, work: Path) -> subprocess.Popen:
    moss = prefix / "usr/local/bin/moss"
    config = prefix / "etc/moss/moss.toml"
    argv = [str(moss), "--config", str(config), "serve"]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", vars_["moss_user"], "--"] + argv
    out = open(work / "moss.log", "wb")
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def start_nginx(prefix: Path, work: Path) -> Path:
    conf = work / "nginx.conf"
    conf.write_text(f"""
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {work}/nginx-access.log;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    include {prefix}/etc/nginx/sites-enabled/*;
}}
""")
    r = run(["nginx", "-t", "-q", "-p", str(work), "-c", str(conf)])
    check(r.returncode == 0, f"nginx -t accepts the role's site {r.stderr.strip()[:500]}")
    subprocess.run(["nginx", "-p", str(work), "-c", str(conf)], check=True)
    return conf


def stop_pidfile(path: Path) -> None:
    try:
        os.kill(int(path.read_text().strip()), signal.SIGQUIT)
    except (OSError, ValueError):
        pass


def exercise(proxy: Proxy, prefix: Path, vars_: dict, label: str) -> None:
    status, versions = proxy.json(MATRIX_HOST, "/_matrix/client/versions")
    check(status == 200 and "v1.11" in versions.get("versions", []), f"{label}: /versions through the proxy")

    status, server = proxy.json(SERVER_NAME, "/.well-known/matrix/server")
    check(status == 200 and server == {"m.server": f"{MATRIX_HOST}:{proxy.https_port}"},
          f"{label}: https://{SERVER_NAME}/.well-known/matrix/server delegates to {MATRIX_HOST} ({server})")
    status, client = proxy.json(SERVER_NAME, "/.well-known/matrix/client")
    base = client.get("m.homeserver", {}).get("base_url", "")
    check(status == 200 and base.rstrip("/") == f"https://{MATRIX_HOST}:{proxy.https_port}",
          f"{label}: .well-known/matrix/client names the proxy ({base})")

    status, keys = proxy.json(MATRIX_HOST, "/_matrix/key/v2/server")
    check(status == 200 and keys.get("server_name") == SERVER_NAME and keys.get("verify_keys"),
          f"{label}: the server's signing keys through the federation route")
    status, fed = proxy.json(MATRIX_HOST, "/_matrix/federation/v1/version")
    check(status == 200 and fed.get("server", {}).get("name") == "moss", f"{label}: /_matrix/federation/v1/version")

    status, _, _ = proxy.curl(proxy.url(MATRIX_HOST, "/_synapse/admin/v1/server_version"))
    check(status == 404, f"{label}: the admin API is not exposed by default")
    status, _, _ = proxy.curl(proxy.url(MATRIX_HOST, "/index.html"))
    check(status == 404, f"{label}: nothing but Matrix is served")

    if label == "nginx":
        status, headers, _ = proxy.curl(f"http://{MATRIX_HOST}:{proxy.http_port}/_matrix/client/versions")
        check(status == 301 and headers.get("location", "").startswith(f"https://{MATRIX_HOST}:{proxy.https_port}/"),
              f"{label}: plain HTTP redirects to HTTPS ({headers.get('location')})")

    # A user made with the CLI (as the operator would), then everything through the proxy.
    name = f"alice{label}"
    moss = [str(prefix / "usr/local/bin/moss"), "--config", str(prefix / "etc/moss/moss.toml")]
    if os.geteuid() == 0:
        moss = ["runuser", "-u", vars_["moss_user"], "--"] + moss
    subprocess.run(moss + ["user", "create", name, "--password", "correct horse battery"], check=True,
                   capture_output=True)
    status, login = proxy.json(MATRIX_HOST, "/_matrix/client/v3/login", "-X", "POST", "--data", json.dumps(
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": name},
         "password": "correct horse battery"}))
    check(status == 200 and login.get("user_id") == f"@{name}:{SERVER_NAME}", f"{label}: login through the proxy")
    auth = ("-H", f"Authorization: Bearer {login['access_token']}")

    blob = os.urandom(3 * 1024 * 1024)
    upload = Path(tempfile.mkstemp()[1])
    upload.write_bytes(blob)
    try:
        status, up = proxy.json(MATRIX_HOST, "/_matrix/media/v3/upload?filename=blob.bin", "-X", "POST", *auth,
                                "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{upload}")
    finally:
        upload.unlink()
    check(status == 200 and up.get("content_uri", "").startswith(f"mxc://{SERVER_NAME}/"),
          f"{label}: a 3 MiB upload through the proxy")
    media_id = up["content_uri"].rsplit("/", 1)[1]
    status, _, body = proxy.curl(proxy.url(MATRIX_HOST, f"/_matrix/client/v1/media/download/{SERVER_NAME}/{media_id}"),
                                 *auth)
    check(status == 200 and body == blob, f"{label}: the same 3 MiB downloaded back")

    status, turn = proxy.json(MATRIX_HOST, "/_matrix/client/v3/voip/turnServer", *auth)
    check(status == 200 and turn.get("uris") == vars_["moss_turn_uris"], f"{label}: TURN servers from the role")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--moss", required=True, type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    moss_bin = args.moss.resolve()

    started = time.monotonic()
    r = run([str(VENV / "ansible-lint"), "--offline", "--profile", "production", "--nocolor", "."], cwd=DEPLOY,
            env=dict(os.environ, PATH=f"{VENV}:{os.environ['PATH']}", ANSIBLE_HOME=str(REPO / ".venv-deploy" / "home")))
    if r.returncode != 0:
        print(r.stdout, r.stderr, sep="\n")
    check(r.returncode == 0, f"ansible-lint --profile production is clean ({time.monotonic() - started:.1f} s)")

    work = Path(tempfile.mkdtemp(prefix="moss-ansible-"))
    work.chmod(0o755)  # the moss account reaches its data directory inside it
    procs: list[subprocess.Popen] = []
    pidfiles: list[Path] = []
    ok = False
    try:
        cert, key = make_certificate(work)
        ports = {k: free_port() for k in ("client", "federation", "https", "http")}

        # nginx, certificates from files.
        prefix = work / "root"
        vars_ = role_vars(prefix, moss_bin, cert, key, ports, "nginx")
        dry = play(work, vars_, "nginx-dry-run", dry_run=True)
        check(dry.get("failed", 1) == 0 and not (prefix / "etc/moss/moss.toml").exists(),
              "a dry run (--check --diff) on a fresh machine passes and writes nothing")
        first = play(work, vars_, "nginx-first")
        check(first.get("failed", 1) == 0 and first.get("changed", 0) > 0, "the first run installs and configures")
        config = (prefix / "etc/moss/moss.toml").read_text()
        check("127.0.0.1" in vars_["moss_client_bind"] and f'bind = "127.0.0.1:{ports["client"]}"' in config,
              "moss listens on loopback only (the proxy is the way in)")
        mode = (prefix / "etc/moss/moss.toml").stat().st_mode & 0o777
        check(mode == 0o640, f"moss.toml (it holds secrets) is not world-readable ({oct(mode)})")
        verify_unit(prefix, work, moss_bin)

        procs.append(start_moss(prefix, vars_, work))
        start_nginx(prefix, work)
        pidfiles.append(work / "nginx.pid")
        proxy = Proxy(ports["https"], ports["http"], cert)
        wait_for(proxy, "moss behind nginx")
        store_line = next((ln for ln in (work / "moss.log").read_text().splitlines() if "media store" in ln), "")
        if vars_.get("moss_media_store") == "s3":
            check("encrypt(" in store_line and "+s3:" + os.environ["MOSS_TEST_S3_ENDPOINT"] in store_line,
                  "media goes to Garage, encrypted, as the role configured it")
        else:
            log("MOSS_TEST_S3_* not set: media on the filesystem store")
        exercise(proxy, prefix, vars_, "nginx")
        listed = run([str(prefix / "usr/local/bin/moss"), "--config", str(prefix / "etc/moss/moss.toml"),
                      "appservice", "list"])
        check(listed.returncode == 0 and "ircbridge" in listed.stdout, "the bridge's registration file is loaded")

        second = play(work, vars_, "nginx-second")
        check(second.get("changed") == 0 and second.get("failed", 1) == 0,
              f"the second run changes nothing (changed: {changed_tasks(work, 'nginx-second')})")
        status, _ = proxy.json(MATRIX_HOST, "/_matrix/client/versions")
        check(status == 200, "moss still serves after the second run")
        stop_pidfile(work / "nginx.pid")
        for p in procs:
            p.terminate()
            p.wait(30)
        procs.clear()

        # Caddy, certificates from files (ACME cannot reach this machine), same checks.
        if shutil.which("caddy"):
            ports_c = {k: free_port() for k in ("client", "federation", "https", "http")}
            prefix_c = work / "root-caddy"
            vars_c = role_vars(prefix_c, moss_bin, cert, key, ports_c, "caddy")
            play(work, vars_c, "caddy-first")
            again = play(work, vars_c, "caddy-second")
            check(again.get("changed") == 0, f"the second Caddy run changes nothing ({changed_tasks(work, 'caddy-second')})")
            procs.append(start_moss(prefix_c, vars_c, work))
            env = dict(os.environ, XDG_DATA_HOME=str(work / "caddy-data"), XDG_CONFIG_HOME=str(work / "caddy-config"))
            caddy_log = open(work / "caddy.log", "wb")
            procs.append(subprocess.Popen(
                ["caddy", "run", "--adapter", "caddyfile", "--config", str(prefix_c / "etc/caddy/Caddyfile")],
                env=env, stdout=caddy_log, stderr=subprocess.STDOUT, start_new_session=True))
            proxy_c = Proxy(ports_c["https"], ports_c["http"], cert)
            wait_for(proxy_c, "moss behind Caddy")
            exercise(proxy_c, prefix_c, vars_c, "caddy")
        else:
            log("caddy is not installed: the Caddy variant is not run (scripts/setup-deploy.sh installs it)")
        ok = True
        log(f"passed in {time.monotonic() - started:.1f} s")
    finally:
        for f in pidfiles:
            stop_pidfile(f)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        if not ok:
            for name in ("moss.log", "nginx-error.log", "caddy.log"):
                f = work / name
                if f.exists():
                    print(f"--- {name} (tail)\n" + f.read_text(errors="replace")[-3000:])
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work directory kept: {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
