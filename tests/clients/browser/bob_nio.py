"""Bob's side of the browser test: a matrix-nio client that waits for Alice's message.

Run by run.mjs with the repo's venv (`.venv/bin/python`, made by scripts/setup-python.sh).
It logs in as an already registered, already joined user with a fresh device, and with
--encrypted it uploads the device's identity and one-time keys so that Alice's Hydrogen can
share its Megolm session with it. It then syncs until the expected message shows up in the room.

Protocol with run.mjs, one JSON object per line on stdout:
  {"event": "ready", "device_id": ..., ...}  once logged in, keys uploaded and synced once;
                                            Alice must not send before this line.
  {"event": "result", "ok": true|false, ...} the outcome; the exit code is 0 only when ok.
Everything else (nio's own logging, tracebacks) goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import nio


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def log(msg: str) -> None:
    print(f"bob_nio: {msg}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    config = nio.AsyncClientConfig(
        # Fail instead of nio's default of retrying forever.
        max_timeouts=2,
        max_limit_exceeded=0,
        request_timeout=20,
        encryption_enabled=args.encrypted,
        store_sync_tokens=False,
    )
    client = nio.AsyncClient(
        args.homeserver,
        user=args.user,
        store_path=args.store_dir,
        config=config,
    )
    deadline = time.monotonic() + args.timeout
    # Undecryptable events seen so far (the room key may arrive in a later sync).
    pending: dict[str, nio.MegolmEvent] = {}
    seen_types: list[str] = []
    to_device_types: list[str] = []

    def result(ok: bool, **extra: Any) -> int:
        emit(
            {
                "event": "result",
                "ok": ok,
                "user_id": client.user_id,
                "device_id": client.device_id,
                "seen": seen_types[-20:],
                "to_device": to_device_types[-20:],
                "undecrypted": [
                    {"event_id": e.event_id, "session_id": e.session_id, "sender_key": e.sender_key}
                    for e in pending.values()
                ],
                **extra,
            }
        )
        return 0 if ok else 1

    try:
        resp = await client.login(password=args.password, device_name="bob-nio")
        if not isinstance(resp, nio.LoginResponse):
            return result(False, stage="login", error=str(resp))
        log(f"logged in as {client.user_id} device {client.device_id}")

        keys_error = None
        if args.encrypted:
            # A fresh device always needs its keys uploaded; nio decides how many OTKs.
            # A failure is reported but not fatal here: the run goes on so that the report
            # also shows how far the sender gets. Without keys no message can be decrypted,
            # so the final result still fails.
            if client.should_upload_keys:
                up = await client.keys_upload()
                if isinstance(up, nio.KeysUploadResponse):
                    log(f"uploaded keys: one-time key counts {up.signed_curve25519_count}")
                else:
                    keys_error = f"POST /keys/upload failed: {up}"
                    log(keys_error)

        first = await client.sync(timeout=0, full_state=True)
        if not isinstance(first, nio.SyncResponse):
            return result(False, stage="first_sync", error=str(first))
        if args.room_id not in client.rooms:
            return result(False, stage="first_sync", error=f"bob is not joined to {args.room_id}")
        room = client.rooms[args.room_id]
        emit(
            {
                "event": "ready",
                "user_id": client.user_id,
                "device_id": client.device_id,
                "room_encrypted": room.encrypted,
                "keys_uploaded": args.encrypted and keys_error is None,
                "keys_error": keys_error,
                "identity_keys": client.olm.account.identity_keys if client.olm else None,
            }
        )

        def check(event: nio.Event) -> dict[str, Any] | None:
            seen_types.append(type(event).__name__)
            if isinstance(event, nio.MegolmEvent):
                # nio already tried with the room keys it holds (to-device events of the same
                # sync are handled before the timeline).
                if event.event_id not in pending:
                    log(f"cannot decrypt {event.event_id} yet (session {event.session_id})")
                pending[event.event_id] = event
                return None
            if isinstance(event, nio.RoomMessageText) and event.sender == args.sender:
                return {
                    "event_id": event.event_id,
                    "sender": event.sender,
                    "body": event.body,
                    # nio marks events it decrypted from a MegolmEvent, with their session.
                    "decrypted": bool(getattr(event, "decrypted", False)),
                    "megolm_session_id": getattr(event, "session_id", None),
                }
            return None

        while time.monotonic() < deadline:
            # First sync already carried the room's history: look at it too.
            sync = first if first is not None else await client.sync(timeout=3000)
            first = None
            if not isinstance(sync, nio.SyncResponse):
                log(f"sync failed: {sync}")
                await asyncio.sleep(1)
                continue
            if args.encrypted and keys_error is None:
                if client.should_upload_keys:
                    await client.keys_upload()
                # What a real client does next: fetch the device keys of the users it shares
                # rooms with (nio can decrypt without them; failures are only logged).
                if client.should_query_keys:
                    q = await client.keys_query()
                    if not isinstance(q, nio.KeysQueryResponse):
                        log(f"POST /keys/query failed: {q}")

            for td in sync.to_device_events:
                to_device_types.append(f"{type(td).__name__}:{getattr(td, 'type', '') or td.source.get('type', '')}")
            found = None
            joined = sync.rooms.join.get(args.room_id)
            if joined is not None:
                for event in joined.timeline.events:
                    found = check(event) or found
            # Megolm keys can arrive after the event (to-device lags the timeline): when new
            # to-device messages came in, retry everything still undecrypted.
            retry = list(pending.items()) if sync.to_device_events else []
            for event_id, event in retry:
                try:
                    decrypted = client.decrypt_event(event)
                except Exception as err:  # nio raises EncryptionError for unknown sessions
                    log(f"still cannot decrypt {event_id}: {err}")
                    continue
                del pending[event_id]
                found = check(decrypted) or found

            if found is not None:
                ok = found["body"] == args.expect_body and (found["decrypted"] or not args.encrypted)
                return result(ok, stage="received", message=found, expected=args.expect_body)

        return result(
            False,
            stage="timeout",
            error=f"no message from {args.sender} within {args.timeout}s",
            keys_error=keys_error,
        )
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--homeserver", required=True)
    parser.add_argument("--user", required=True, help="full user id, e.g. @bob:localhost")
    parser.add_argument("--password", required=True)
    parser.add_argument("--room-id", required=True)
    parser.add_argument("--sender", required=True, help="user id whose message to wait for")
    parser.add_argument("--expect-body", required=True)
    parser.add_argument("--store-dir", required=True, help="nio's olm store (a fresh temp dir)")
    parser.add_argument("--encrypted", action="store_true", help="enable E2EE and require a decrypted message")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    try:
        return asyncio.run(asyncio.wait_for(run(args), timeout=args.timeout + 30))
    except asyncio.TimeoutError:
        emit({"event": "result", "ok": False, "stage": "timeout", "error": "hard timeout"})
        return 1


if __name__ == "__main__":
    sys.exit(main())
