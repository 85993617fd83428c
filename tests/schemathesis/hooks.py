"""Schemathesis hooks for tests/schemathesis/run.py (loaded through SCHEMATHESIS_HOOKS).

run.py writes a context file (MOSS_ST_CTX) with the server's address, the fuzzing user's
credentials and the ids of real objects; these hooks then, for every generated request:

- `before_call`: add `Authorization: Bearer` to operations whose spec declares access-token
  security (schemathesis is told not to generate security parameters itself), except, a quarter
  of the time, to those where the spec makes the token optional; give each call of a
  session-ending operation (logout, deactivate, password change) a fresh throw-away user, so the
  main session survives; sometimes swap path parameters for ids of real objects (the user's room,
  event, media, filter...), so requests reach past the "not found" checks; clamp long-poll
  `timeout`/`timeout_ms` query values, so a legitimately waiting /sync is not taken for a hang.
- `after_call`: append one JSON line per request and response to the interaction log (full
  request and response for 5xx, slow and unexpected-401 answers; a summary line otherwise), and
  log in again if the main token stopped working.
- `after_network_error`: log timeouts and dropped connections (moss hung or died).
- `filter_failure`: log every check failure (e.g. response schema violations) and drop it, so
  schemathesis keeps generating for the operation instead of stopping to shrink the first
  failure. run.py reads the log and writes the report, so nothing is lost.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
import zlib
from typing import Any

import requests
import schemathesis

_CTX: dict[str, Any] = json.load(open(os.environ["MOSS_ST_CTX"]))
_LOCK = threading.Lock()
_LOG = open(_CTX["interaction_log"], "a", buffering=1)
_TOKEN = {"main": _CTX["token"]}
_AUTHED = set(_CTX["authed_ops"])
_FRESH = set(_CTX["fresh_user_ops"])
_OPTIONAL = set(_CTX.get("optional_auth_ops", []))
_NO_AUTH_PROB = float(_CTX.get("no_auth_probability", 0.25))
_SUBST: dict[str, list[str]] = _CTX["path_substitutions"]
_SUBST_PROB = float(_CTX.get("substitution_probability", 0.35))
_CLAMP_MS = int(_CTX.get("clamp_timeout_ms", 1000))
_SLOW_S = float(_CTX.get("slow_seconds", 2.0))
_SEED = int(_CTX.get("seed", 0))
_BODY_KEEP = 64 * 1024
# Operations whose roomId must not be the main room: leaving, forgetting or upgrading it would
# lock the user out of it for the rest of the run. They get the sacrificial room instead.
_SPARE_ROOM_SUFFIXES = ("/leave", "/forget", "/upgrade")
_FRESH_COUNTER = [0]


def _label(case) -> str:
    return f"{case.operation.method.upper()} {case.operation.path}"


def _phase(case) -> str | None:
    try:
        return case.meta.phase.name.value
    except Exception:
        return None


def _rng_value(case, salt: str) -> float:
    """A value in [0, 1) fixed by the seed and the generated case, so a rerun repeats the choice."""
    key = f"{_SEED}|{_label(case)}|{salt}|{case.path_parameters!r}|{case.query!r}|{case.body!r:.2000}".encode()
    return (zlib.crc32(key) & 0xFFFFFFFF) / 2**32


def _write(record: dict) -> None:
    line = json.dumps(record, default=str)
    with _LOCK:
        _LOG.write(line + "\n")


def _register_fresh_user() -> dict | None:
    with _LOCK:
        _FRESH_COUNTER[0] += 1
        n = _FRESH_COUNTER[0]
    name = f"st_fresh_{os.getpid()}_{n}_{int(time.time() * 1000) % 100000}"
    password = "fresh-password-123"
    body = {"username": name, "password": password, "auth": {"type": "m.login.dummy"}}
    url = _CTX["base"] + "/_matrix/client/v3/register"
    try:
        r = requests.post(url, json=body, timeout=30)
        if r.status_code == 401 and "session" in r.json():
            body["auth"]["session"] = r.json()["session"]
            r = requests.post(url, json=body, timeout=30)
        if r.status_code != 200:
            _write({"kind": "harness", "what": "fresh user registration failed", "status": r.status_code, "body": r.text[:500]})
            return None
        v = r.json()
        return {"user_id": v["user_id"], "token": v["access_token"], "password": password}
    except Exception as exc:  # moss down: the call itself will show it
        _write({"kind": "harness", "what": "fresh user registration error", "error": repr(exc)})
        return None


def _relogin() -> None:
    url = _CTX["base"] + "/_matrix/client/v3/login"
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": _CTX["user_id"]},
        "password": _CTX["password"],
    }
    try:
        r = requests.post(url, json=body, timeout=30)
        if r.status_code == 200:
            _TOKEN["main"] = r.json()["access_token"]
            _write({"kind": "harness", "what": "main token re-issued by login"})
        else:
            _write({"kind": "harness", "what": "re-login failed", "status": r.status_code, "body": r.text[:500]})
    except Exception as exc:
        _write({"kind": "harness", "what": "re-login error", "error": repr(exc)})


def _clamp(value: Any) -> Any:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return value
    if n <= _CLAMP_MS:
        return value
    return type(value)(_CLAMP_MS) if isinstance(value, (int, str)) else _CLAMP_MS


@schemathesis.hook
def before_call(context, case, kwargs):
    label = _label(case)

    # Real objects in path parameters, some of the time.
    if case.path_parameters:
        params = dict(case.path_parameters)
        changed = False
        for name in list(params):
            options = _SUBST.get(name)
            if case.operation.method.upper() == "DELETE" and name == "deviceId":
                continue  # never delete the main session's device
            if name == "roomId" and case.operation.path.endswith(_SPARE_ROOM_SUFFIXES):
                options = _SUBST.get("_spareRoomId")
            if not options:
                continue
            r = _rng_value(case, name)
            if r < _SUBST_PROB:
                params[name] = options[int(r / _SUBST_PROB * len(options)) % len(options)]
                changed = True
        if changed:
            case.path_parameters = params

    # Long polls: keep them short.
    if case.query:
        for key in ("timeout", "timeout_ms"):
            if key in case.query:
                clamped = _clamp(case.query[key])
                if clamped is not case.query[key]:
                    case.query[key] = clamped

    if label in _OPTIONAL and _rng_value(case, "noauth") < _NO_AUTH_PROB:
        pass  # the spec allows calling it without a token: do so, some of the time
    elif label in _FRESH:
        user = _register_fresh_user()
        if user is not None:
            case.headers["Authorization"] = f"Bearer {user['token']}"
            # Half the time, complete the UIA stage with the right password, so the operation
            # really runs (deactivation, password change) rather than stopping at 401.
            if isinstance(case.body, dict) and _rng_value(case, "uia") < 0.5:
                body = dict(case.body)
                body["auth"] = {
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": user["user_id"]},
                    "password": user["password"],
                }
                case.body = body
    elif label in _AUTHED and "authorization" not in {k.lower() for k in case.headers}:
        case.headers["Authorization"] = f"Bearer {_TOKEN['main']}"


def _body_of(data: Any) -> dict:
    if data is None:
        return {"size": 0}
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not isinstance(data, (bytes, bytearray)):
        # A generator or file (multipart, streaming upload): not reproducible byte for byte.
        return {"size": None, "text": repr(data)[:200]}
    out: dict[str, Any] = {"size": len(data)}
    kept = bytes(data[:_BODY_KEEP])
    try:
        out["text"] = kept.decode("utf-8")
    except UnicodeDecodeError:
        out["b64"] = base64.b64encode(kept).decode()
    if len(data) > _BODY_KEEP:
        out["truncated"] = True
    return out


def _request_of(prepared) -> dict:
    headers = {k: v for k, v in prepared.headers.items()}
    auth = headers.get("Authorization", "")
    if auth.startswith("Bearer "):
        token = auth[len("Bearer "):]
        headers["Authorization"] = "Bearer $TOKEN" if token == _TOKEN["main"] or token == _CTX["token"] else "Bearer $FRESH_TOKEN"
    return {"method": prepared.method, "url": prepared.url, "headers": headers, "body": _body_of(prepared.body)}


@schemathesis.hook
def after_call(context, case, response):
    status = response.status_code
    elapsed = float(response.elapsed or 0.0)
    label = _label(case)
    record: dict[str, Any] = {
        "kind": "call",
        "t": time.time(),
        "op": label,
        "method": response.request.method,
        "phase": _phase(case),
        "status": status,
        "elapsed": round(elapsed, 4),
    }
    auth = response.request.headers.get("Authorization", "")
    used_main = auth == f"Bearer {_TOKEN['main']}"
    token_dead = False
    if status == 401 and used_main:
        try:
            token_dead = json.loads(response.content).get("errcode") == "M_UNKNOWN_TOKEN"
        except Exception:
            pass
    if status >= 500 or elapsed > _SLOW_S or token_dead:
        record["request"] = _request_of(response.request)
        record["response"] = {
            "headers": {k: v for k, v in response.headers.items()},
            "body": _body_of(response.content),
        }
    if token_dead:
        record["token_dead"] = True
    _write(record)
    if token_dead:
        _relogin()


@schemathesis.hook
def after_network_error(context, case, request):
    _write(
        {
            "kind": "network_error",
            "t": time.time(),
            "op": _label(case),
            "phase": _phase(case),
            "request": _request_of(request),
        }
    )


@schemathesis.hook
def filter_failure(context, failure, case, response):
    _write(
        {
            "kind": "failure",
            "t": time.time(),
            "op": _label(case),
            "phase": _phase(case),
            "check": type(failure).__name__,
            "code": getattr(failure, "code", None),
            "title": failure.title,
            "message": failure.message,
            "status": response.status_code,
            "request": _request_of(response.request),
            "response": {
                "headers": {k: v for k, v in response.headers.items()},
                "body": _body_of(response.content),
            },
        }
    )
    return False
