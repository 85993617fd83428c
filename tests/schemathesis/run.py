#!/usr/bin/env python3
"""Fuzzes a real moss over the Matrix client-server OpenAPI spec with schemathesis.

Reports every 5xx answer and every response that breaks the spec's response schema.

Set up once (idempotent) and run:

    scripts/setup-schemathesis.sh
    .venv-schemathesis/bin/python tests/schemathesis/run.py --moss target/debug/moss \\
        --max-examples 50 --seed 1 --out /tmp/schemathesis-out/seed1

What a run does:
1. Starts its own moss (the binary given with --moss; copy it first if a build may replace it)
   on a free loopback port, in a data directory under OUT/moss/ (its log: OUT/moss/moss.log),
   with open registration and no rate limits. Federation and URL previews stay off (their
   defaults), so no generated server name or URL makes moss connect anywhere.
2. Registers the fuzzing user and creates real objects (rooms with an alias, a message, a state
   event, an uploaded media item, a filter, a second user), whose ids the hooks sometimes put
   into path parameters.
3. Runs `st run` over client-server-v1.18.json (the Matrix spec v1.18, resolved OpenAPI; see the
   provenance note below) against http://127.0.0.1:PORT (the spec's paths carry the full
   /_matrix/... prefix, so the base URL is the bare origin), with the checks
   not_a_server_error, response_schema_conformance and content_type_conformance (--checks), in
   two passes:
     main:  every operation except the session-ending ones, with the user's token;
     fresh: logout, logout/all, account/deactivate, account/password, each call as a fresh
            throw-away user (hooks.py), with --fresh-max-examples.
   --workers N splits the main pass's operations over N st processes run side by side (each
   with one worker thread: several threads per st process sometimes left an operation with no
   cases at all in schemathesis 4.32). hooks.py records every request
   (OUT/interactions-PASS-K.jsonl) and every check failure; it
   drops the failures from schemathesis's own bookkeeping, so generation never stops at the
   first failure of an operation (no shrinking: the report's "minimal" request is the smallest
   one seen that produced the same error).
4. Checks that moss is still alive and the token still works, stops moss, and writes
   OUT/report.md (people) and OUT/report.json (tools): the 5xx answers grouped by operation
   and the internal error moss logged for them (moss puts an id in the 500 body and logs
   `request_error_id=<id>`; the report quotes those log lines), schema violations grouped by
   operation and message, network errors (timeouts: a hang), answers slower than --slow
   seconds, and request counts per operation.

Budget: --max-examples N is schemathesis's per-operation limit for the fuzzing phase; the
examples and coverage phases add their own (deterministic) cases on top, so the total is more
than N x operations. --requests R sets N from R instead (approximate; the report gives the real
count). --time-budget S is `st run --max-time S` for the main pass: with it,
fuzzing keeps going until the time is spent, whatever --max-examples says. Over this spec the
coverage phase alone sends about 5,900 requests and the examples phase about 250; --max-examples
75 gives about 16,000 requests in all, in about 90 s here (debug build, 2 cores, ~190 req/s).

--report-only rebuilds the report from the files an earlier run left in --out.

Exit status: 1 if any 5xx was answered, moss died or hung (network errors), or with
--strict-schema any schema violation; 2 if the harness itself failed (moss did not start,
the user could not be registered, schemathesis crashed); else 0.

Spec provenance: client-server-v1.18.json is the matrix-spec repository's tag v1.18 (commit
c346686b0d207ef4c0420c3a1a418d7e5280d6e5) dumped by its own scripts/dump-openapi.py
(every $ref resolved); Apache License 2.0, copied beside it as SPEC-LICENSE.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
SPEC = HERE / "client-server-v1.18.json"
HOOKS = HERE / "hooks.py"

# Operations (by operationId) that end the session they are called with.
FRESH_USER_OPERATION_IDS = ["logout", "logout_all", "deactivateAccount", "changePassword"]
DEFAULT_CHECKS = "not_a_server_error,response_schema_conformance,content_type_conformance"
PASSWORD = "fuzz-password-123"


# ---------------------------------------------------------------- a small HTTP client


def http(method: str, url: str, token: str | None = None, body=None, raw: bytes | None = None,
         content_type: str = "application/json", timeout: float = 30.0):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- moss


class Moss:
    def __init__(self, binary: Path, root: Path):
        self.binary = binary
        self.root = root
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = root / "moss.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Only this run's settings: no MOSS_* from the caller's environment.
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOSS_")}
        env.update(
            {
                "MOSS_DATA_DIR": str(self.root / "data"),
                "MOSS_HTTP__BIND": f"127.0.0.1:{self.port}",
                "MOSS_REGISTRATION": "open",
                "MOSS_RATE_LIMITS__ENABLED": "false",
                "MOSS_SERVER_NAME": "localhost",
                "MOSS_DATABASE__SYNCHRONOUS": "normal",
                # Explicit, though they are the defaults: fuzzed server names and URLs must never
                # make moss connect anywhere.
                "MOSS_FEDERATION__ENABLED": "false",
                "MOSS_MEDIA__URL_PREVIEW__ENABLED": "false",
            }
        )
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve"], cwd=self.root, env=env, stdout=subprocess.DEVNULL, stderr=log
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moss exited at start with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if http("GET", self.base + "/_matrix/client/versions", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"moss did not answer /versions within 60 s:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def register(base: str, username: str, password: str) -> dict:
    body = {"username": username, "password": password, "auth": {"type": "m.login.dummy"}}
    status, v = http("POST", base + "/_matrix/client/v3/register", body=body)
    if status == 401 and isinstance(v, dict) and "session" in v:
        body["auth"]["session"] = v["session"]
        status, v = http("POST", base + "/_matrix/client/v3/register", body=body)
    if status != 200:
        raise RuntimeError(f"register {username}: {status} {v}")
    return v


# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
)


def make_fixtures(base: str) -> dict:
    """The fuzzing user and real objects for path parameters."""
    main = register(base, "fuzzer", PASSWORD)
    other = register(base, "fuzzfriend", PASSWORD)
    tok, uid = main["access_token"], main["user_id"]
    c = base + "/_matrix/client/v3"

    def ok(what, res):
        status, v = res
        if status != 200:
            raise RuntimeError(f"fixture {what}: {status} {v}")
        return v

    room = ok("createRoom", http("POST", c + "/createRoom", tok, {
        "name": "fuzz room", "room_alias_name": "fuzz", "preset": "public_chat",
        "invite": [other["user_id"]], "topic": "fuzzing"}))["room_id"]
    spare = ok("createRoom spare", http("POST", c + "/createRoom", tok, {"name": "spare", "room_alias_name": "spare"}))["room_id"]
    dm = ok("createRoom dm", http("POST", c + "/createRoom", tok, {"is_direct": True, "preset": "trusted_private_chat"}))["room_id"]
    r = quote(room, safe="")
    ok("join friend", http("POST", c + f"/rooms/{r}/join", other["access_token"], {}))
    event = ok("send", http("PUT", c + f"/rooms/{r}/send/m.room.message/txn1", tok, {"msgtype": "m.text", "body": "hello"}))["event_id"]
    reply = ok("send reply", http("PUT", c + f"/rooms/{r}/send/m.room.message/txn2", other["access_token"], {
        "msgtype": "m.text", "body": "reply",
        "m.relates_to": {"rel_type": "m.thread", "event_id": event}}))["event_id"]
    ok("react", http("PUT", c + f"/rooms/{r}/send/m.reaction/txn3", tok, {
        "m.relates_to": {"rel_type": "m.annotation", "event_id": event, "key": "👍"}}))
    state = ok("state", http("PUT", c + f"/rooms/{r}/state/m.room.topic/", tok, {"topic": "fuzzing again"}))["event_id"]
    mxc = ok("upload", http("POST", base + "/_matrix/media/v3/upload?filename=pixel.png", tok, raw=PNG,
                            content_type="image/png"))["content_uri"]
    media_server, media_id = mxc[len("mxc://"):].split("/", 1)
    filter_id = ok("filter", http("POST", c + f"/user/{quote(uid, safe='')}/filter", tok, {
        "room": {"timeline": {"limit": 5}}}))["filter_id"]
    ok("account data", http("PUT", c + f"/user/{quote(uid, safe='')}/account_data/org.example.fuzz", tok, {"a": 1}))
    ok("tag", http("PUT", c + f"/user/{quote(uid, safe='')}/rooms/{r}/tags/u.work", tok, {"order": 0.5}))
    backup = http("POST", c + "/room_keys/version", tok, {
        "algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
        "auth_data": {"public_key": "abcdefg", "signatures": {}}})
    backup_version = backup[1].get("version") if backup[0] == 200 and isinstance(backup[1], dict) else None
    fixtures = {
        "user_id": uid, "token": tok, "device_id": main["device_id"], "password": PASSWORD,
        "other_user_id": other["user_id"], "room_id": room, "spare_room_id": spare, "dm_room_id": dm,
        "room_alias": "#fuzz:localhost", "event_id": event, "reply_event_id": reply, "state_event_id": state,
        "media_server": media_server, "media_id": media_id, "filter_id": filter_id,
        "backup_version": backup_version,
    }
    return fixtures


def path_substitutions(f: dict) -> dict:
    subst = {
        "roomId": [f["room_id"], f["dm_room_id"]],
        "_spareRoomId": [f["spare_room_id"]],
        "roomIdOrAlias": [f["room_id"], f["room_alias"]],
        "roomAlias": [f["room_alias"], "#fuzz-new:localhost"],
        "userId": [f["user_id"], f["other_user_id"]],
        "eventId": [f["event_id"], f["reply_event_id"], f["state_event_id"]],
        "serverName": [f["media_server"]],
        "mediaId": [f["media_id"]],
        "filterId": [f["filter_id"]],
        "deviceId": [f["device_id"]],
        "eventType": ["m.room.message", "m.room.topic", "m.room.name"],
        "stateKey": [""],
        "type": ["org.example.fuzz", "m.direct"],
        "tag": ["u.work", "m.favourite"],
        "kind": ["override", "underride", "sender", "room", "content"],
        "ruleId": [".m.rule.master", ".m.rule.contains_display_name", "fuzzrule"],
        "receiptType": ["m.read", "m.read.private", "m.fully_read"],
        "relType": ["m.thread", "m.annotation", "m.reference"],
    }
    if f.get("backup_version"):
        subst["version"] = [f["backup_version"]]
    return subst


# ---------------------------------------------------------------- the spec


def spec_operations() -> list[dict]:
    spec = json.loads(SPEC.read_text())
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("get", "put", "post", "delete", "patch", "head", "options"):
                continue
            security = op.get("security", spec.get("security"))
            schemes = {k for alt in (security or []) for k in alt}
            ops.append({
                "label": f"{method.upper()} {path}", "operation_id": op.get("operationId"),
                "authed": bool(schemes & {"accessTokenBearer", "appserviceAccessTokenBearer", "signedRequest"}),
                # `{}` among the alternatives, or the (client-facing) room summary's odd
                # `signedRequest`: the token is optional.
                "optional": {} in (security or []) or "signedRequest" in schemes,
            })
    return ops


# ---------------------------------------------------------------- running schemathesis


def st_command(args, base: str, out: Path, tag: str, include_ids: list[str], max_examples: int,
               max_time: int | None) -> list[str]:
    # The venv's st: beside this interpreter, or in the repo's .venv-schemathesis.
    st = Path(sys.executable).parent / "st"
    if not st.exists():
        st = REPO / ".venv-schemathesis/bin/st"
    cmd = [
        str(st), "run", str(SPEC),
        "--url", base,
        "--checks", args.checks,
        "--mode", args.mode,
        "--max-examples", str(max_examples),
        "--seed", str(args.seed),
        # One worker per st process: with several threads, schemathesis 4.32 / Hypothesis
        # 6.170 sometimes ran an operation with zero cases (seen here). --workers shards the
        # operations over processes instead.
        "--workers", "1",
        "--request-timeout", str(args.request_timeout),
        "--generation-with-security-parameters", "false",
        "--generation-database", "none",
        "--suppress-health-check", "all",
        "--no-shrink",
        "--no-color",
        "--max-redirects", "0",
        "--report", "junit",
        "--report-junit-path", str(out / f"junit-{tag}.xml"),
    ]
    if args.phases:
        cmd += ["--phases", args.phases]
    if max_time:
        cmd += ["--max-time", str(max_time)]
    for op_id in include_ids:
        cmd += ["--include-operation-id", op_id]
    return cmd


def run_pass(args, base: str, pass_name: str, ctx: dict, out: Path, op_ids: list[str], max_examples: int,
             shards: int, max_time: int | None) -> dict:
    """Runs schemathesis over `op_ids`, split over `shards` st processes run side by side."""
    shards = max(1, min(shards, len(op_ids)))
    procs = []
    started = time.time()
    for k in range(shards):
        tag = f"{pass_name}-{k}"
        ids = op_ids[k::shards]
        ctx_path = out / f"ctx-{tag}.json"
        ctx_path.write_text(json.dumps(dict(ctx, interaction_log=str(out / f"interactions-{tag}.jsonl")), indent=1))
        cmd = st_command(args, base, out, tag, ids, max_examples, max_time)
        env = dict(os.environ)
        env["SCHEMATHESIS_HOOKS"] = str(HOOKS)
        env["MOSS_ST_CTX"] = str(ctx_path)
        env.pop("SCHEMATHESIS_CONFIG", None)
        st_log = out / f"st-{tag}.log"
        shown = " ".join(shlex.quote(c) for c in cmd[:cmd.index("--include-operation-id")])
        print(f"[run] {tag}: {len(ids)} operations: {shown} --include-operation-id ...", flush=True)
        log = open(st_log, "w")
        procs.append((tag, subprocess.Popen(cmd, cwd=out, env=env, stdout=log, stderr=subprocess.STDOUT), log, st_log, cmd))
    rcs = {}
    for tag, proc, log, st_log, _ in procs:
        rcs[tag] = proc.wait()
        log.close()
    took = time.time() - started
    print(f"[run] {pass_name}: st exit codes {rcs} after {took:.0f} s", flush=True)
    return {"pass": pass_name, "rc": max(rcs.values()), "rcs": rcs, "seconds": round(took, 1),
            "st_logs": [str(p[3]) for p in procs], "cmd": procs[0][4]}


# ---------------------------------------------------------------- the report


def curl_of(req: dict) -> str:
    parts = ["curl", "-sS", "-X", req["method"], shlex.quote(req["url"])]
    for k, v in req["headers"].items():
        if k.lower() in ("user-agent", "accept-encoding", "accept", "connection", "content-length",
                         "x-schemathesis-testcaseid"):
            continue
        if k.lower() == "authorization" and "$" in v:
            parts += ["-H", f'"{k}: {v}"']
        else:
            parts += ["-H", shlex.quote(f"{k}: {v}")]
    body = req.get("body") or {}
    prefix = ""
    if "text" in body and body.get("size"):
        if "\x00" in body["text"]:
            raw = body["text"].encode()
        else:
            parts += ["--data-binary", shlex.quote(body["text"])]
            raw = None
        if raw is not None:
            prefix = "printf '%b' " + shlex.quote("".join(f"\\x{b:02x}" for b in raw)) + " | "
            parts += ["--data-binary", "@-"]
    elif "b64" in body:
        raw = base64.b64decode(body["b64"])
        prefix = "printf '%b' " + shlex.quote("".join(f"\\x{b:02x}" for b in raw)) + " | "
        parts += ["--data-binary", "@-"]
    cmd = prefix + " ".join(parts)
    if body.get("truncated"):
        cmd += "   # body truncated in the log"
    return cmd


def body_text(resp: dict | None, limit: int = 2000) -> str:
    if not resp:
        return ""
    b = resp.get("body") or {}
    if "text" in b:
        return b["text"][:limit]
    if "b64" in b:
        return f"(binary, {b.get('size')} bytes)"
    return ""


_ID_RE = re.compile(r"\(id ([0-9a-f]{8})\)")


def normalise(text: str) -> str:
    text = re.sub(r"[!$@#][A-Za-z0-9._=/+\-]+:[A-Za-z0-9.\-]+(:\d+)?", "<id>", text)
    text = re.sub(r"\b[0-9a-f]{8,}\b", "<hex>", text)
    text = re.sub(r"\d+", "<n>", text)
    return text.strip()


def load_log_index(log_path: Path) -> tuple[list[str], dict[str, int]]:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return [], {}
    index = {}
    for i, line in enumerate(lines):
        m = re.search(r"request_error_id\W+([0-9a-f]{8})", line)
        if m:
            index.setdefault(m.group(1), i)
    return lines, index


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FRAME = re.compile(r"^\s+(\d+: |at )")


def log_excerpt_for(lines: list[str], i: int) -> list[str]:
    """The log line of an internal error and what explains it: for a panic, the panic message and
    the moss frames of its backtrace (printed before the error line); else the lines just before."""
    clean = [_ANSI.sub("", l) for l in lines]
    for j in range(i - 1, max(-1, i - 400), -1):
        if "request_error_id" in clean[j]:
            break  # an earlier error: the panic, if any, is not ours
        if " panicked at " in clean[j]:
            out = clean[j:j + 2]
            frames = clean[j + 2:i]
            for k, f in enumerate(frames):
                # moss's own frames: their source location is under crates/ (dependencies are
                # under ~/.cargo); keep the frame's name (cut short) and its location.
                if f.lstrip().startswith("at ") and "/crates/" in f and "/.cargo/" not in f:
                    if k > 0:
                        out.append(frames[k - 1][:200])
                    out.append(f)
                    if len(out) >= 8:
                        break
            return out + [clean[i]]
    # Otherwise the lines logged within half a second before it (same request, most likely).
    when = _log_time(clean[i])
    before = [
        l for l in clean[max(0, i - 6):i]
        if not _FRAME.match(l) and when is not None and (t := _log_time(l)) is not None and when - t <= 0.5
    ][-3:]
    return before + [clean[i]]


def _log_time(line: str) -> float | None:
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if not m:
        return None
    from datetime import datetime, timezone

    return datetime.fromisoformat(m.group(1)).replace(tzinfo=timezone.utc).timestamp()


def build_report(out: Path, moss: Moss, passes: list[dict], ctx: dict, args, started: float,
                 alive_after: bool, whoami: tuple, exit_code: int | None) -> dict:
    records = []
    for path in sorted(out.glob("interactions-*.jsonl")):
        if True:
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                rec["pass"] = path.stem.split("-", 1)[1]
                records.append(rec)
    log_lines, log_index = load_log_index(moss.log_path)

    calls = [r for r in records if r["kind"] == "call"]
    per_op = collections.defaultdict(collections.Counter)
    for r in calls:
        # Schemathesis also probes with methods the operation does not have (expecting 405).
        sent = r.get("method") or r["op"].split(" ", 1)[0]
        same = sent == r["op"].split(" ", 1)[0]
        per_op[r["op"]][r["status"] if same else f"{r['status']} ({sent})"] += 1
    phases = collections.Counter(r.get("phase") for r in calls)

    # 5xx, grouped by operation, status and what moss logged (or answered).
    server_errors: dict[tuple, dict] = {}
    for r in calls:
        if r["status"] < 500:
            continue
        body = body_text(r.get("response"))
        m = _ID_RE.search(body)
        log_excerpt: list[str] = []
        detail = None
        if m and m.group(1) in log_index:
            i = log_index[m.group(1)]
            log_excerpt = log_excerpt_for(log_lines, i)
            dm = re.search(r"internal error: (.*)$", _ANSI.sub("", log_lines[i]))
            detail = dm.group(1) if dm else _ANSI.sub("", log_lines[i])
        key = (r["op"], r["status"], normalise(detail or body)[:300])
        curl = curl_of(r["request"]) if r.get("request") else "(request not recorded)"
        g = server_errors.get(key)
        if g is None:
            server_errors[key] = g = {"op": r["op"], "status": r["status"], "count": 0, "detail": detail,
                                      "body": body, "curl": curl, "log": log_excerpt, "phases": collections.Counter()}
        g["count"] += 1
        g["phases"][r.get("phase")] += 1
        if len(curl) < len(g["curl"]):
            g.update(curl=curl, body=body, log=log_excerpt or g["log"], detail=detail or g["detail"])

    # Check failures other than the 5xx ones (recorded above from the calls themselves).
    violations: dict[tuple, dict] = {}
    for r in records:
        if r["kind"] != "failure" or r["check"] == "ServerError" or r.get("status", 0) >= 500:
            continue
        msg = r.get("message") or ""
        first = next((l for l in msg.splitlines() if l.strip()), "")
        # `<the offending value> is not/valid under ...`: group by the complaint, not the value,
        # when the value is a whole document.
        m = re.match(r"^(.{40,}?) is (.*)$", first)
        if m:
            first = "<value> is " + m.group(2)
        key = (r["check"], r["op"], r["status"], r["title"], normalise(first)[:300])
        curl = curl_of(r["request"])
        g = violations.get(key)
        if g is None:
            violations[key] = g = {"check": r["check"], "op": r["op"], "status": r["status"], "title": r["title"],
                                   "message": msg[:3000], "count": 0, "curl": curl,
                                   "body": body_text(r.get("response"), 1500)}
        g["count"] += 1
        if len(curl) < len(g["curl"]):
            g.update(curl=curl, message=msg[:3000], body=body_text(r.get("response"), 1500))

    slow: dict[str, dict] = {}
    for r in calls:
        if r["elapsed"] > args.slow:
            g = slow.setdefault(r["op"], {"op": r["op"], "count": 0, "max": 0.0, "curl": None, "status": None})
            g["count"] += 1
            if r["elapsed"] > g["max"]:
                g.update(max=r["elapsed"], status=r["status"],
                         curl=curl_of(r["request"]) if r.get("request") else None)
    net_errors = collections.defaultdict(list)
    for r in records:
        if r["kind"] == "network_error":
            net_errors[r["op"]].append(curl_of(r["request"]))
    harness = [r for r in records if r["kind"] == "harness"]
    token_deaths = [r for r in calls if r.get("token_dead")]

    st_ops = {p["pass"]: p for p in passes}
    seconds = time.time() - started
    fuzz_seconds = sum(p["seconds"] for p in passes)
    report = {
        "seed": args.seed, "max_examples": ctx["max_examples"], "fresh_max_examples": args.fresh_max_examples,
        "mode": args.mode, "checks": args.checks, "phases": args.phases or "all",
        "moss": str(args.moss), "moss_log": str(moss.log_path), "base": moss.base,
        "requests": len(calls), "operations_hit": len(per_op), "operations_in_spec": ctx["operations_in_spec"],
        "fuzz_seconds": round(fuzz_seconds, 1), "total_seconds": round(seconds, 1),
        "requests_per_second": round(len(calls) / fuzz_seconds, 1) if fuzz_seconds else None,
        "requests_by_phase": dict(phases),
        "passes": [{k: v for k, v in p.items() if k != "cmd"} | {"cmd": " ".join(map(shlex.quote, p["cmd"]))} for p in passes],
        "moss_alive_after_run": alive_after, "moss_exit_code": exit_code,
        "whoami_after_run": list(whoami),
        "server_errors": [dict(g, phases=dict(g["phases"])) for g in sorted(server_errors.values(), key=lambda g: (g["op"], g["status"]))],
        "schema_violations": sorted(violations.values(), key=lambda g: (g["check"], g["op"], g["status"])),
        "slow": sorted(slow.values(), key=lambda g: -g["max"]),
        "network_errors": {op: {"count": len(v), "curl": min(v, key=len)} for op, v in net_errors.items()},
        "token_deaths": [{"op": r["op"], "curl": curl_of(r["request"])} for r in token_deaths],
        "harness_events": harness[:50],
        "per_operation": {op: dict(sorted(c.items(), key=lambda kv: str(kv[0]))) for op, c in sorted(per_op.items())},
        "operations_never_requested": sorted(set(ctx["labels"]) - set(per_op)),
        "operations_never_2xx": sorted(op for op, c in per_op.items() if not any(isinstance(s, int) and 200 <= s < 300 for s in c)),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "report.md").write_text(render_md(report, moss))
    return report


def render_md(rep: dict, moss: Moss) -> str:
    o = []
    w = o.append
    w(f"# schemathesis run, seed {rep['seed']}\n")
    w(f"- {rep['requests']} requests over {rep['operations_hit']} of {rep['operations_in_spec']} operations in "
      f"{rep['fuzz_seconds']} s of fuzzing ({rep['requests_per_second']} req/s); --max-examples {rep['max_examples']} "
      f"(fresh-user pass {rep['fresh_max_examples']}), mode {rep['mode']}, phases {rep['phases']}")
    w(f"- by phase: {rep['requests_by_phase']}")
    w(f"- checks: {rep['checks']}")
    w(f"- moss alive after the run: {rep['moss_alive_after_run']}; whoami after the run: {rep['whoami_after_run'][0]}; "
      f"exit code on SIGTERM: {rep['moss_exit_code']}; log: {rep['moss_log']}")
    for p in rep["passes"]:
        w(f"- pass {p['pass']}: st exit codes {p['rcs']}, {p['seconds']} s, output {', '.join(p['st_logs'])}")
    w("")
    w(f"## 5xx answers ({len(rep['server_errors'])} distinct)\n")
    for g in rep["server_errors"]:
        w(f"### {g['status']} {g['op']}  (x{g['count']}, phases {g['phases']})\n")
        if g["detail"]:
            w(f"moss: `{g['detail']}`\n")
        w("```sh\n" + g["curl"] + "\n```")
        w("response: `" + g["body"][:600].replace("`", "'") + "`\n")
        if g["log"]:
            w("```\n" + "\n".join(g["log"]) + "\n```\n")
    w(f"## Network errors (timeouts, dropped connections): {sum(v['count'] for v in rep['network_errors'].values())}\n")
    for op, v in rep["network_errors"].items():
        w(f"- {op} (x{v['count']}): `{v['curl'][:600]}`")
    w("")
    w(f"## Slower than the threshold ({len(rep['slow'])} operations)\n")
    for g in rep["slow"]:
        w(f"- {g['op']}: x{g['count']}, max {g['max']:.2f} s (status {g['status']})" + (f": `{g['curl'][:400]}`" if g["curl"] else ""))
    w("")
    w(f"## Check failures other than 5xx ({len(rep['schema_violations'])} distinct)\n")
    for g in rep["schema_violations"]:
        w(f"### {g['check']}: {g['op']} -> {g['status']}  (x{g['count']})\n")
        w(f"{g['title']}\n")
        w("```\n" + g["message"][:1500] + "\n```")
        w("```sh\n" + g["curl"][:1500] + "\n```")
        w("response: `" + g["body"][:500].replace("`", "'") + "`\n")
    if rep["token_deaths"]:
        w("## The main token stopped working (the harness logged in again)\n")
        for t in rep["token_deaths"]:
            w(f"- after/at {t['op']}: `{t['curl'][:300]}`")
        w("")
    w("## Requests per operation (status: count)\n")
    for op, c in rep["per_operation"].items():
        w(f"- {op}: {c}")
    w("")
    w("Operations never requested: " + (", ".join(rep["operations_never_requested"]) or "none") + "\n")
    w("Operations that never answered 2xx: " + ", ".join(rep["operations_never_2xx"]))
    return "\n".join(o) + "\n"


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--moss", default=str(REPO / "target/debug/moss"), help="moss binary (default target/debug/moss)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--max-examples", type=int, help="schemathesis -n: fuzzing-phase cases per operation (default 20)")
    budget.add_argument("--requests", type=int, help="approximate total: sets --max-examples to what the fuzzing phase needs to reach it")
    ap.add_argument("--fresh-max-examples", type=int, default=15, help="-n for the session-ending operations pass (default 15)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--time-budget", type=int,
                    help="st --max-time for the main pass, in seconds: fuzz until then (ignores --max-examples)")
    ap.add_argument("--out", default="/tmp/schemathesis-out/run", help="report directory (default /tmp/schemathesis-out/run)")
    ap.add_argument("--workers", type=int, default=2,
                    help="st processes side by side, each fuzzing its share of the operations (default 2)")
    ap.add_argument("--mode", default="all", choices=["all", "positive", "negative"])
    ap.add_argument("--phases", help="st --phases (default: all of examples,coverage,fuzzing,stateful)")
    ap.add_argument("--checks", default=DEFAULT_CHECKS, help=f"st --checks (default {DEFAULT_CHECKS})")
    ap.add_argument("--strict-schema", action="store_true", help="exit 1 on schema/content-type violations too")
    ap.add_argument("--slow", type=float, default=2.0, help="report answers slower than this many seconds (default 2)")
    ap.add_argument("--request-timeout", type=float, default=30.0, help="per-request timeout, seconds (default 30)")
    ap.add_argument("--clamp-timeout-ms", type=int, default=1000,
                    help="cap generated timeout/timeout_ms query values (long polls) at this (default 1000)")
    ap.add_argument("--substitution-probability", type=float, default=0.35,
                    help="chance that a path parameter is replaced with a real object's id (default 0.35)")
    ap.add_argument("--skip-fresh-pass", action="store_true", help="skip the session-ending operations pass")
    ap.add_argument("--report-only", action="store_true",
                    help="only rebuild report.md/report.json from the logs an earlier run left in --out")
    args = ap.parse_args()

    moss_bin = Path(args.moss).resolve()
    out = Path(args.out).resolve()
    if args.report_only:
        meta = json.loads((out / "run-meta.json").read_text())
        moss = Moss(moss_bin, out / "moss")
        moss.base = meta["base"]
        for k in ("seed", "mode", "checks", "phases", "fresh_max_examples", "moss"):
            setattr(args, k, meta["args"][k])
        report = build_report(out, moss, meta["passes"], meta["ctx"], args, time.time() - meta["seconds"],
                              meta["alive"], tuple(meta["whoami"]), meta["exit_code"])
        print(f"[run] report: {out / 'report.md'}")
        return 0
    if not os.access(moss_bin, os.X_OK):
        print(f"run.py: no moss binary at {moss_bin}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    for old in list(out.glob("interactions-*.jsonl")) + list(out.glob("st-*.log")):
        old.unlink()
    moss_root = out / "moss"
    if moss_root.exists():
        subprocess.run(["rm", "-rf", str(moss_root)], check=True)

    ops = spec_operations()
    fresh_ops = [o for o in ops if o["operation_id"] in FRESH_USER_OPERATION_IDS]
    main_count = len(ops) - len(fresh_ops)
    if args.requests:
        # The examples and coverage phases send a fixed number of requests (measured over this
        # spec); the fuzzing phase gets the rest.
        phases = (args.phases or "examples,coverage,fuzzing,stateful").split(",")
        fixed = (5900 if "coverage" in phases else 0) + (250 if "examples" in phases else 0)
        max_examples = max(1, (args.requests - fixed) // main_count)
    else:
        max_examples = args.max_examples or 20

    started = time.time()
    moss = Moss(moss_bin, moss_root)
    try:
        moss.start()
    except RuntimeError as e:
        print(f"run.py: {e}", file=sys.stderr)
        return 2
    print(f"[run] moss {moss_bin} on {moss.base}, data and log in {moss_root}", flush=True)
    try:
        try:
            fixtures = make_fixtures(moss.base)
        except (RuntimeError, OSError) as e:
            print(f"run.py: setting up the fuzzing user failed: {e}\n{moss.log_tail()}", file=sys.stderr)
            return 2
        ctx = {
            "base": moss.base, "token": fixtures["token"], "user_id": fixtures["user_id"],
            "password": fixtures["password"], "fixtures": fixtures,
            "authed_ops": [o["label"] for o in ops if o["authed"]],
            "fresh_user_ops": [o["label"] for o in fresh_ops],
            "optional_auth_ops": [o["label"] for o in ops if o["optional"]],
            "path_substitutions": path_substitutions(fixtures),
            "substitution_probability": args.substitution_probability,
            "clamp_timeout_ms": args.clamp_timeout_ms, "slow_seconds": args.slow, "seed": args.seed,
            "max_examples": max_examples, "operations_in_spec": len(ops), "labels": [o["label"] for o in ops],
        }
        passes = []
        main_ids = [o["operation_id"] for o in ops if o["operation_id"] not in FRESH_USER_OPERATION_IDS]
        plan = [("main", main_ids, max_examples, args.workers, args.time_budget)]
        if not args.skip_fresh_pass:
            # A user registered per call: no time budget, its example count bounds it.
            plan.append(("fresh", FRESH_USER_OPERATION_IDS, args.fresh_max_examples, 1, None))
        for name, ids, n, shards, max_time in plan:
            passes.append(run_pass(args, moss.base, name, ctx, out, ids, n, shards, max_time))
            if not moss.alive():
                print(f"[run] moss died during pass {name}", flush=True)
                break
        alive = moss.alive()
        whoami = (None, None)
        if alive:
            try:
                st_, v = http("GET", moss.base + "/_matrix/client/v3/account/whoami", fixtures["token"], timeout=10)
                whoami = (st_, v)
            except OSError as e:
                whoami = ("error", repr(e))
    finally:
        exit_code = moss.stop()
    (out / "run-meta.json").write_text(json.dumps({
        "base": moss.base, "ctx": ctx, "passes": passes, "alive": alive, "whoami": list(whoami),
        "exit_code": exit_code, "seconds": time.time() - started,
        "args": {k: getattr(args, k) for k in ("seed", "mode", "checks", "phases", "fresh_max_examples", "moss")},
    }, indent=1, default=str))
    report = build_report(out, moss, passes, ctx, args, started, alive, whoami, exit_code)

    print(f"[run] {report['requests']} requests over {report['operations_hit']} operations in "
          f"{report['fuzz_seconds']} s ({report['requests_per_second']} req/s)")
    print(f"[run] distinct 5xx: {len(report['server_errors'])}; other check failures: "
          f"{len(report['schema_violations'])}; network errors: "
          f"{sum(v['count'] for v in report['network_errors'].values())}; slow operations: {len(report['slow'])}")
    print(f"[run] report: {out / 'report.md'} and {out / 'report.json'}")
    failed = False
    if not alive:
        print(f"[run] moss was not alive after the run; log tail:\n{moss.log_tail()}")
        failed = True
    if report["server_errors"] or report["network_errors"]:
        failed = True
    if args.strict_schema and report["schema_violations"]:
        failed = True
    st_crashed = [p for p in passes if any(rc not in (0, 1) for rc in p["rcs"].values())]
    if st_crashed:
        print(f"[run] schemathesis exited abnormally: {[(p['pass'], p['rcs']) for p in st_crashed]}; see its log")
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
