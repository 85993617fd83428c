"""End-to-end encryption through matrix-nio (with vodozemac), the way an encrypting client
or bot would use it: device keys, one-time keys, Olm to-device messages carrying Megolm
room keys, and encrypted room messages that the server only ever sees as ciphertext.

Each test registers its own users, and every client has its own crypto store in a fresh
temporary directory. nio's `sync_forever` does the key housekeeping (upload, query, claim)
between syncs; the tests drive single syncs instead so they can bound every wait, so
`e2e_sync` below does that housekeeping itself and, unlike `sync_forever`, fails on any
error answer instead of swallowing it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import nio
import pytest
from nio import RoomPreset

from conftest import SERVER_NAME, MossServer, register_user, unique_localpart
from test_chat_nio import SYNC_DEADLINE_S, SYNC_POLL_MS, create_room, wait_for_membership

MEGOLM = "m.megolm.v1.aes-sha2"
OLM = "m.olm.v1.curve25519-aes-sha2"

T = TypeVar("T")


# --------------------------------------------------------------------------- clients


@dataclass
class Device:
    """One logged-in nio client with encryption, plus what the tests need to check the
    server's side of things: the raw /sync bodies it received."""

    client: nio.AsyncClient
    password: str
    raw_syncs: list[dict] = field(default_factory=list)

    @property
    def user_id(self) -> str:
        return self.client.user_id

    @property
    def device_id(self) -> str:
        return self.client.device_id

    @property
    def ed25519(self) -> str:
        return self.client.olm.account.identity_keys["ed25519"]

    @property
    def curve25519(self) -> str:
        return self.client.olm.account.identity_keys["curve25519"]


def _e2ee_config() -> nio.AsyncClientConfig:
    return nio.AsyncClientConfig(
        # As in conftest: fail instead of retrying forever.
        max_timeouts=2,
        max_limit_exceeded=0,
        request_timeout=20,
        encryption_enabled=True,
        store_sync_tokens=True,
    )


@dataclass
class E2EEFactory:
    server: MossServer
    tmp_path: Path
    clients: list[nio.AsyncClient] = field(default_factory=list)

    async def login(self, localpart: str, password: str, device_name: str) -> Device:
        """Log in a new device with its own, empty crypto store, and publish its keys."""
        store = self.tmp_path / f"store-{localpart}-{uuid.uuid4().hex[:8]}"
        store.mkdir()
        client = nio.AsyncClient(
            self.server.base_url, user=localpart, store_path=str(store), config=_e2ee_config()
        )
        self.clients.append(client)
        resp = await client.login(password=password, device_name=device_name)
        assert isinstance(resp, nio.LoginResponse), f"login as {localpart} failed: {resp}"
        assert client.olm is not None, "nio did not load its crypto store after login"
        assert client.should_upload_keys, "a fresh device must want to upload its keys"
        device = Device(client, password)

        up = await client.keys_upload()
        assert isinstance(up, nio.KeysUploadResponse), f"{client.user_id}: keys/upload failed: {up}"
        # nio uploads as many one-time keys as the account can hold; all must be counted.
        assert up.signed_curve25519_count == client.olm.account.max_one_time_keys, up
        assert not client.should_upload_keys
        return device

    async def new_user(self, prefix: str) -> Device:
        localpart = unique_localpart(prefix)
        password = f"pw-{uuid.uuid4().hex}"
        await register_user(self.server.base_url, localpart, password)
        return await self.login(localpart, password, f"nio-e2ee-{prefix}")

    async def new_device(self, of: Device, name: str) -> Device:
        localpart = of.user_id.split(":", 1)[0][1:]
        device = await self.login(localpart, of.password, name)
        assert device.user_id == of.user_id and device.device_id != of.device_id
        return device


@pytest.fixture
async def e2ee(server: MossServer, tmp_path: Path) -> AsyncIterator[E2EEFactory]:
    factory = E2EEFactory(server, tmp_path)
    yield factory
    for client in factory.clients:
        await client.close()


# --------------------------------------------------------------------------- syncing


async def _raw_json(resp: nio.Response) -> dict:
    text = await resp.transport_response.text()
    return json.loads(text)


def _short(body: Any, limit: int = 4000) -> str:
    text = json.dumps(body) if not isinstance(body, str) else body
    return text if len(text) <= limit else text[:limit] + f"... <{len(text) - limit} more chars>"


def _expect(resp: Any, cls: type, what: str) -> Any:
    assert isinstance(resp, cls), f"{what} failed: {resp!r}"
    return resp


async def housekeeping(client: nio.AsyncClient) -> None:
    """What nio's sync_forever does between syncs, with every answer checked."""
    for resp in await client.send_to_device_messages():
        _expect(resp, nio.ToDeviceResponse, f"{client.user_id}: sendToDevice")
    if client.should_upload_keys:
        _expect(await client.keys_upload(), nio.KeysUploadResponse, f"{client.user_id}: keys/upload")
    if client.should_query_keys:
        _expect(await client.keys_query(), nio.KeysQueryResponse, f"{client.user_id}: keys/query")
    if client.should_claim_keys:
        users = client.get_users_for_key_claiming()
        _expect(await client.keys_claim(users), nio.KeysClaimResponse, f"{client.user_id}: keys/claim")


async def e2e_sync(dev: Device, timeout_ms: int, deadline_s: float) -> tuple[nio.SyncResponse, dict]:
    resp = await asyncio.wait_for(dev.client.sync(timeout=timeout_ms), timeout=deadline_s)
    assert isinstance(resp, nio.SyncResponse), f"{dev.user_id}: /sync failed: {resp}"
    raw = await _raw_json(resp)
    dev.raw_syncs.append(raw)
    await housekeeping(dev.client)
    return resp, raw


async def initial_sync(dev: Device) -> None:
    await e2e_sync(dev, 0, SYNC_DEADLINE_S)


async def sync_until(
    dev: Device,
    predicate: Callable[[nio.SyncResponse, dict], T | None],
    what: str,
    deadline_s: float = SYNC_DEADLINE_S,
) -> T:
    """Like test_chat_nio.sync_until, with E2EE housekeeping and the raw body passed on."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last_raw: Any = "<no /sync completed>"
    while (remaining := end - loop.time()) > 0:
        poll_ms = max(100, int(min(SYNC_POLL_MS, remaining * 1000)))
        try:
            resp, raw = await e2e_sync(dev, poll_ms, remaining + 5)
        except asyncio.TimeoutError:
            break
        last_raw = raw
        found = predicate(resp, raw)
        if found:
            return found
        await asyncio.sleep(0.05)
    pytest.fail(f"{dev.user_id}/{dev.device_id}: no {what} within {deadline_s}s; last /sync body: {_short(last_raw)}")


def raw_timeline_event(raw: dict, room_id: str, event_id: str) -> dict | None:
    events = raw.get("rooms", {}).get("join", {}).get(room_id, {}).get("timeline", {}).get("events", [])
    return next((e for e in events if e.get("event_id") == event_id), None)


def raw_to_device(dev: Device) -> list[dict]:
    return [e for raw in dev.raw_syncs for e in raw.get("to_device", {}).get("events", [])]


async def expect_decrypted_text(
    reader: Device, room_id: str, event_id: str, sender: Device, body: str
) -> nio.RoomMessageText:
    """`reader` must receive the event as m.room.encrypted (raw /sync) and nio must decrypt
    it into exactly this m.text message from `sender`'s device."""

    def predicate(resp: nio.SyncResponse, raw: dict):
        info = resp.rooms.join.get(room_id)
        if info is None:
            return None
        event = next((e for e in info.timeline.events if getattr(e, "event_id", None) == event_id), None)
        return (event, raw_timeline_event(raw, room_id, event_id), json.dumps(raw)) if event else None

    event, raw_event, raw_text = await sync_until(reader, predicate, f"encrypted message {event_id}")

    # What the server stored and delivered: ciphertext only.
    assert raw_event is not None, f"nio saw {event_id} but it is not in the raw timeline"
    assert raw_event["type"] == "m.room.encrypted", raw_event
    assert raw_event["sender"] == sender.user_id, raw_event
    content = raw_event["content"]
    assert content.get("algorithm") == MEGOLM, raw_event
    assert content.get("sender_key") == sender.curve25519, raw_event
    assert content.get("device_id") == sender.device_id, raw_event
    assert isinstance(content.get("ciphertext"), str) and content["ciphertext"], raw_event
    assert body not in raw_text, f"the plaintext {body!r} appears in {reader.user_id}'s raw /sync"

    # What nio made of it.
    assert not isinstance(event, nio.MegolmEvent), (
        f"{reader.user_id}/{reader.device_id} could not decrypt {event_id} "
        f"(no room key received?); to-device events seen: {_short(raw_to_device(reader))}"
    )
    assert isinstance(event, nio.RoomMessageText), f"expected a decrypted m.text, got {event!r}"
    assert event.decrypted, event
    assert event.body == body
    assert event.sender == sender.user_id
    assert event.sender_key == sender.curve25519
    assert event.source["type"] == "m.room.message"
    return event


async def http_get(server: MossServer, dev: Device, path: str, **params: str) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {dev.client.access_token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        async with http.get(f"{server.base_url}{path}", headers=headers, params=params) as resp:
            return resp.status, await resp.json(content_type=None)


async def http_post(server: MossServer, dev: Device, path: str, body: dict) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {dev.client.access_token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http:
        async with http.post(f"{server.base_url}{path}", headers=headers, json=body) as resp:
            return resp.status, await resp.json(content_type=None)


# --------------------------------------------------------------------------- helpers


async def trust(dev: Device, *peers: Device) -> None:
    """Out-of-band verification, as two people comparing fingerprints would do: the keys
    the server handed out (keys/query) must be exactly the ones each peer device holds."""
    client = dev.client
    for peer in peers:
        if peer.device_id not in client.device_store[peer.user_id]:
            client.olm.users_for_key_query.add(peer.user_id)
            _expect(await client.keys_query(), nio.KeysQueryResponse, f"{dev.user_id}: keys/query")
        known = client.device_store[peer.user_id]
        assert peer.device_id in known, (
            f"keys/query for {peer.user_id} did not return device {peer.device_id}: {list(known.keys())}"
        )
        olm_device = known[peer.device_id]
        assert olm_device.ed25519 == peer.ed25519, "keys/query returned a different ed25519 key"
        assert olm_device.curve25519 == peer.curve25519, "keys/query returned a different curve25519 key"
        client.verify_device(olm_device)


async def encrypted_room(alice: Device, bob: Device) -> str:
    """Alice creates an invite-only room with m.room.encryption in its initial state, bob
    joins; both clients are synced past bob's join and know the room is encrypted."""
    await initial_sync(bob)
    room_id = await create_room(
        alice.client,
        RoomPreset.private_chat,
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
    )
    await initial_sync(alice)
    assert alice.client.rooms[room_id].encrypted, "m.room.encryption from initial_state not in /sync state"

    resp = await alice.client.room_invite(room_id, bob.user_id)
    assert isinstance(resp, nio.RoomInviteResponse), f"invite failed: {resp}"
    await sync_until(bob, lambda r, _raw: r.rooms.invite.get(room_id), f"invite to {room_id}")
    resp = await bob.client.join(room_id)
    assert isinstance(resp, nio.JoinResponse), f"bob could not accept the invite: {resp}"

    member = wait_for_membership(bob.user_id, "join", room_id)
    await sync_until(alice, lambda r, _raw: member(r), "bob's join")
    await sync_until(bob, lambda r, _raw: r.rooms.join.get(room_id), f"{room_id} under rooms.join")
    assert bob.client.rooms[room_id].encrypted, "bob's client does not know the room is encrypted"
    return room_id


async def send_encrypted(sender: Device, room_id: str, body: str) -> str:
    resp = await sender.client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
    assert isinstance(resp, nio.RoomSendResponse), f"{sender.user_id}: send {body!r} failed: {resp}"
    assert resp.event_id.startswith("$"), resp.event_id
    return resp.event_id


def olm_to_device_from(reader: Device, sender: Device) -> list[dict]:
    return [
        e
        for e in raw_to_device(reader)
        if e.get("sender") == sender.user_id and e.get("type") == "m.room.encrypted"
    ]


async def otk_count(dev: Device) -> int:
    """signed_curve25519 count from one fresh /sync (not nio's cached value, which nio
    only updates when the count is non-zero)."""
    _resp, raw = await e2e_sync(dev, 0, SYNC_DEADLINE_S)
    # Spec: an algorithm missing from the map, or a missing map, means a count of zero.
    counts = raw.get("device_one_time_keys_count", {})
    assert isinstance(counts, dict), f"device_one_time_keys_count is not an object: {_short(raw)}"
    return counts.get("signed_curve25519", 0)


async def unused_fallback_types(dev: Device) -> list[str]:
    _resp, raw = await e2e_sync(dev, 0, SYNC_DEADLINE_S)
    # Spec (v1.2+): a server that supports fallback keys always includes this field.
    assert "device_unused_fallback_key_types" in raw, f"/sync lacks device_unused_fallback_key_types: {_short(raw)}"
    types = raw["device_unused_fallback_key_types"]
    assert isinstance(types, list), types
    return types


# ----------------------------------------------------------------------------- tests


async def test_encrypted_messages_both_ways(e2ee: E2EEFactory, server: MossServer):
    alice = await e2ee.new_user("alice")
    bob = await e2ee.new_user("bob")
    room_id = await encrypted_room(alice, bob)

    # The room's encryption state, as stored by the server.
    status, state = await http_get(
        server, bob, f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.encryption/"
    )
    assert (status, state) == (200, {"algorithm": MEGOLM}), (status, state)

    await trust(alice, bob)
    await trust(bob, alice)

    hello = f"Hi Bob, secret {uuid.uuid4().hex}"
    hello_id = await send_encrypted(alice, room_id, hello)
    await expect_decrypted_text(bob, room_id, hello_id, alice, hello)
    # The room key travelled as an Olm-encrypted to-device message: the server relayed
    # only ciphertext addressed to bob's device's curve25519 key.
    olm = olm_to_device_from(bob, alice)
    assert olm, f"bob got no m.room.encrypted to-device event from alice: {_short(raw_to_device(bob))}"
    assert olm[0]["content"]["algorithm"] == OLM, olm[0]
    assert olm[0]["content"]["sender_key"] == alice.curve25519, olm[0]
    assert bob.curve25519 in olm[0]["content"]["ciphertext"], olm[0]

    reply = f"Hello Alice, secret {uuid.uuid4().hex}"
    reply_id = await send_encrypted(bob, room_id, reply)
    await expect_decrypted_text(alice, room_id, reply_id, bob, reply)
    assert olm_to_device_from(alice, bob), f"alice got no room key from bob: {_short(raw_to_device(alice))}"

    # One-time keys: to send the first room key, alice's nio claimed one of bob's keys
    # (keys/claim); bob's /sync must have reported the lower count, and nio then topped
    # the pool up (housekeeping) so the server counts the full pool again. Bob replied
    # over the Olm session alice's message opened, so nobody claimed one of alice's keys.
    full = alice.client.olm.account.max_one_time_keys
    bob_counts = [r.get("device_one_time_keys_count", {}).get("signed_curve25519", 0) for r in bob.raw_syncs]
    assert full - 1 in bob_counts, f"bob's /sync never reported the claimed key: {bob_counts}"
    assert await otk_count(bob) == full
    alice_counts = [r.get("device_one_time_keys_count", {}).get("signed_curve25519", 0) for r in alice.raw_syncs]
    assert set(alice_counts) == {full}, f"alice's counts moved without a claim: {alice_counts}"
    assert await otk_count(alice) == full

    # History as the server keeps it: both messages stored as m.room.encrypted only.
    status, page = await http_get(
        server, alice, f"/_matrix/client/v3/rooms/{quote(room_id)}/messages", dir="b", limit="50"
    )
    assert status == 200, (status, page)
    stored = {e["event_id"]: e for e in page["chunk"]}
    for event_id in (hello_id, reply_id):
        assert event_id in stored, f"{event_id} missing from /messages: {_short(page)}"
        assert stored[event_id]["type"] == "m.room.encrypted", stored[event_id]
        assert stored[event_id]["content"]["algorithm"] == MEGOLM, stored[event_id]
    page_text = json.dumps(page)
    assert hello not in page_text and reply not in page_text, "plaintext found in /messages"
    assert not any(e["type"] == "m.room.message" for e in page["chunk"]), "an m.room.message was stored"


async def test_second_device_receives_new_messages(e2ee: E2EEFactory, server: MossServer):
    alice = await e2ee.new_user("alice")
    bob = await e2ee.new_user("bob")
    room_id = await encrypted_room(alice, bob)
    await trust(alice, bob)
    await trust(bob, alice)

    first = f"before the new device {uuid.uuid4().hex}"
    first_id = await send_encrypted(alice, room_id, first)
    await expect_decrypted_text(bob, room_id, first_id, alice, first)

    # Bob signs in on a second device; alice's client must learn about it from /sync
    # (device_lists.changed) and re-query bob's keys before encrypting again.
    before = alice.client.next_batch
    bob2 = await e2ee.new_device(bob, "nio-e2ee-bob-phone")
    await initial_sync(bob2)
    assert bob2.client.rooms[room_id].encrypted

    def bob_changed(_resp: nio.SyncResponse, raw: dict):
        return bob.user_id in raw.get("device_lists", {}).get("changed", [])

    await sync_until(alice, bob_changed, f"{bob.user_id} in device_lists.changed")
    # The same answer through GET /keys/changes between the two sync tokens.
    status, changes = await http_get(
        server, alice, "/_matrix/client/v3/keys/changes", **{"from": before, "to": alice.client.next_batch}
    )
    assert status == 200 and bob.user_id in changes.get("changed", []), (status, changes)
    # The housekeeping after that sync ran keys/query; bob's new device must be in it.
    assert bob2.device_id in alice.client.device_store[bob.user_id], (
        f"alice's keys/query did not return bob's new device {bob2.device_id}: "
        f"{list(alice.client.device_store[bob.user_id].keys())}"
    )
    await trust(alice, bob2)
    await trust(bob2, alice)

    second = f"after the new device {uuid.uuid4().hex}"
    second_id = await send_encrypted(alice, room_id, second)
    await expect_decrypted_text(bob2, room_id, second_id, alice, second)
    await expect_decrypted_text(bob, room_id, second_id, alice, second)
    olm = olm_to_device_from(bob2, alice)
    assert olm and all(e["content"]["algorithm"] == OLM for e in olm), olm
    assert all(bob2.curve25519 in e["content"]["ciphertext"] for e in olm), olm


async def test_one_time_key_counts_follow_claims(e2ee: E2EEFactory, server: MossServer):
    alice = await e2ee.new_user("alice")
    bob = await e2ee.new_user("bob")
    full = alice.client.olm.account.max_one_time_keys

    assert await otk_count(alice) == full

    # Bob claims one of alice's keys the way nio does before its first Olm message.
    await trust(bob, alice)
    claim = await bob.client.keys_claim({alice.user_id: [alice.device_id]})
    claim = _expect(claim, nio.KeysClaimResponse, "keys/claim")
    keys = claim.one_time_keys.get(alice.user_id, {}).get(alice.device_id, {})
    assert len(keys) == 1, f"expected exactly one claimed key: {claim.one_time_keys}"
    (key_id, key), = keys.items()
    assert key_id.startswith("signed_curve25519:"), key_id
    assert key["signatures"][alice.user_id][f"ed25519:{alice.device_id}"], key
    assert bob.client.olm.verify_json(dict(key), alice.ed25519, alice.user_id, alice.device_id), (
        "the claimed one-time key does not carry alice's valid signature"
    )
    assert bob.client.olm.session_store.get(alice.curve25519), "nio did not build an Olm session from the claim"

    assert await otk_count(alice) == full - 1

    # A one-time key is handed out once: the next claim gets a different key.
    status, body = await http_post(
        server, bob, "/_matrix/client/v3/keys/claim",
        {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}},
    )
    assert status == 200, (status, body)
    again = body["one_time_keys"][alice.user_id][alice.device_id]
    assert len(again) == 1 and key_id not in again, f"claimed {key_id} twice: {again}"
    assert await otk_count(alice) == full - 2

    # nio tops the pool up when the count drops (its should_upload_keys), and the server
    # must count the new keys. nio ignores a /sync whose next_batch equals the previous
    # one (AsyncClient._handle_sync), and a claim need not advance the sync token, so hand
    # nio the count the server reported, as its next token-advancing sync would.
    alice.client.olm.uploaded_key_count = await otk_count(alice)
    assert alice.client.should_upload_keys, "nio did not notice its one-time keys were claimed"
    up = _expect(await alice.client.keys_upload(), nio.KeysUploadResponse, "keys/upload top-up")
    assert up.signed_curve25519_count == full, up
    assert await otk_count(alice) == full

    # Unknown devices and users are not errors: they just yield no keys.
    status, body = await http_post(
        server, bob, "/_matrix/client/v3/keys/claim",
        {"one_time_keys": {alice.user_id: {"NOSUCHDEVICE": "signed_curve25519"},
                           f"@nobody_{uuid.uuid4().hex[:8]}:{SERVER_NAME}": {"X": "signed_curve25519"}}},
    )
    assert status == 200, (status, body)
    assert not body["one_time_keys"].get(alice.user_id, {}).get("NOSUCHDEVICE"), body
    assert await otk_count(alice) == full


async def test_fallback_key_used_when_one_time_keys_run_out(e2ee: E2EEFactory, server: MossServer):
    alice = await e2ee.new_user("alice")
    bob = await e2ee.new_user("bob")
    room_id = await encrypted_room(alice, bob)
    await trust(alice, bob)
    await trust(bob, alice)
    full = alice.client.olm.account.max_one_time_keys
    assert await unused_fallback_types(alice) == []

    # nio 0.26 does not manage fallback keys: publish one from alice's own vodozemac
    # account, signed like a one-time key but with "fallback": true (spec, keys/upload).
    account = alice.client.olm.account._account
    account.generate_fallback_key()
    (fb_id, fb_key), = ((k, v.to_base64()) for k, v in account.fallback_key.items())
    signed = {"key": fb_key, "fallback": True}
    signed["signatures"] = {alice.user_id: {f"ed25519:{alice.device_id}": alice.client.olm.sign_json(signed)}}
    status, body = await http_post(
        server, alice, "/_matrix/client/v3/keys/upload", {"fallback_keys": {f"signed_curve25519:{fb_id}": signed}}
    )
    assert status == 200, (status, body)
    # Fallback keys are not one-time keys: the count is unchanged.
    assert body.get("one_time_key_counts", {}).get("signed_curve25519", 0) == full, body
    account.mark_keys_as_published()
    assert await unused_fallback_types(alice) == ["signed_curve25519"]

    # Someone drains alice's one-time keys; each claim must hand out a distinct one-time key.
    claim_body = {"one_time_keys": {alice.user_id: {alice.device_id: "signed_curve25519"}}}
    seen: set[str] = set()
    for _ in range(full):
        status, body = await http_post(server, bob, "/_matrix/client/v3/keys/claim", claim_body)
        assert status == 200, (status, body)
        (key_id, key), = body["one_time_keys"][alice.user_id][alice.device_id].items()
        assert key_id not in seen and "fallback" not in key, (key_id, key)
        seen.add(key_id)
    assert await otk_count(alice) == 0
    # Not used yet: the fallback key is only handed out once the one-time keys are gone.
    assert await unused_fallback_types(alice) == ["signed_curve25519"]

    # Bob's nio now has to build its Olm session to alice on the fallback key, and alice's
    # device must still be able to read what bob sends.
    assert not bob.client.olm.session_store.get(alice.curve25519)
    text = f"sent over a fallback-key session {uuid.uuid4().hex}"
    event_id = await send_encrypted(bob, room_id, text)
    await expect_decrypted_text(alice, room_id, event_id, bob, text)
    assert await unused_fallback_types(alice) == [], "the fallback key was handed out but is still reported unused"

    # A fallback key is not consumed: later claims still return it, flagged as fallback.
    for _ in range(2):
        status, body = await http_post(server, bob, "/_matrix/client/v3/keys/claim", claim_body)
        assert status == 200, (status, body)
        got = body["one_time_keys"].get(alice.user_id, {}).get(alice.device_id, {})
        assert list(got) == [f"signed_curve25519:{fb_id}"], body
        assert got[f"signed_curve25519:{fb_id}"]["key"] == fb_key
        assert got[f"signed_curve25519:{fb_id}"].get("fallback") is True
        assert bob.client.olm.verify_json(dict(got[f"signed_curve25519:{fb_id}"]), alice.ed25519, alice.user_id, alice.device_id)
