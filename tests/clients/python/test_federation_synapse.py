"""moss and a real Synapse federating on loopback, driven the way users would drive them: plain
HTTP for profiles and media, matrix-nio for keys, rooms and sync.

One pair of servers serves the module (fed_harness.fed); every test registers its own users.
The room tests cover both directions: a Synapse room (Synapse's default room version) joined by
a moss user through an invite, a moss room joined by a Synapse user through its alias with
history backfilled, typing and receipts crossing, and an encrypted DM both sides decrypt.

Every wait is bounded (fed_harness.WAIT_S) and fails with both servers' log tails.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any
from urllib.parse import quote

import nio
import pytest
from nio import RoomPreset, RoomVisibility

from pngs import png

from fed_harness import (  # noqa: F401 (fixtures are found by name)
    Account,
    Clients,
    Federation,
    Homeserver,
    clients,
    expect,
    expect_text,
    fed,
    http,
    initial_sync,
    mark_logs,
    membership_of,
    new_account,
    poll_until,
    receipt_of,
    send_text,
    sync_until,
    typing_user,
)

MEGOLM = "m.megolm.v1.aes-sha2"


def other(fed: Federation, hs: Homeserver) -> Homeserver:
    return fed.synapse if hs is fed.moss else fed.moss


# ====================================================================== works without rooms


async def test_profiles_cross_both_ways(fed: Federation):
    on_moss = await new_account(fed.moss, "mprof")
    on_synapse = await new_account(fed.synapse, "sprof")
    names: dict[str, str] = {}
    for acc in (on_moss, on_synapse):
        name = f"{acc.hs.kind} person {uuid.uuid4().hex[:6]}"
        status, body, _ = await http(
            acc.hs, "PUT", f"/_matrix/client/v3/profile/{quote(acc.user_id)}/displayname", acc.access_token,
            json_body={"displayname": name},
        )
        assert status == 200, fed.explain(f"{acc.hs.kind}: setting a displayname: {status} {body}")
        names[acc.user_id] = name

    for reader, owner in ((on_moss, on_synapse), (on_synapse, on_moss)):
        where = f"{owner.user_id}'s profile read through {reader.hs.kind}"
        status, body, _ = await http(
            reader.hs, "GET", f"/_matrix/client/v3/profile/{quote(owner.user_id)}", reader.access_token
        )
        assert status == 200, fed.explain(f"{where}: HTTP {status} {body}")
        assert body.get("displayname") == names[owner.user_id], fed.explain(f"{where}: {body}")

        status, body, _ = await http(
            reader.hs, "GET", f"/_matrix/client/v3/profile/{quote(owner.user_id)}/displayname", reader.access_token
        )
        assert (status, body.get("displayname")) == (200, names[owner.user_id]), fed.explain(f"{where}: {body}")

        nobody = owner.hs.user_id(f"nobody_{uuid.uuid4().hex[:8]}")
        status, body, _ = await http(
            reader.hs, "GET", f"/_matrix/client/v3/profile/{quote(nobody)}", reader.access_token
        )
        assert (status, body.get("errcode") if isinstance(body, dict) else body) == (404, "M_NOT_FOUND"), (
            fed.explain(f"unknown {nobody} through {reader.hs.kind}: HTTP {status} {body}")
        )


async def _keyed_pair(fed: Federation, clients: Clients) -> tuple[Account, nio.AsyncClient, Account, nio.AsyncClient]:
    """A moss user and a Synapse user, each with one nio device that has published its keys."""
    m_acc, m = await clients.user(fed.moss, "mkeys", encryption=True)
    s_acc, s = await clients.user(fed.synapse, "skeys", encryption=True)
    for client in (m, s):
        assert client.should_upload_keys
        up = expect(fed, await client.keys_upload(), nio.KeysUploadResponse, f"{client.user_id}: keys/upload")
        assert up.signed_curve25519_count == client.olm.account.max_one_time_keys, up
    return m_acc, m, s_acc, s


async def test_device_keys_cross_both_ways(fed: Federation, clients: Clients):
    m_acc, m, s_acc, s = await _keyed_pair(fed, clients)

    for (reader_acc, reader), (owner_acc, owner) in (((m_acc, m), (s_acc, s)), ((s_acc, s), (m_acc, m))):
        where = f"{reader_acc.hs.kind} asking for {owner.user_id}'s keys"
        ids = owner.olm.account.identity_keys
        status, body, _ = await http(
            reader_acc.hs, "POST", "/_matrix/client/v3/keys/query", reader.access_token,
            json_body={"device_keys": {owner.user_id: []}},
        )
        assert status == 200, fed.explain(f"{where}: HTTP {status} {body}")
        assert body.get("failures", {}) == {}, fed.explain(f"{where}: failures {body}")
        device = body.get("device_keys", {}).get(owner.user_id, {}).get(owner.device_id)
        assert device is not None, fed.explain(f"{where}: device {owner.device_id} missing: {body}")
        assert (device["user_id"], device["device_id"]) == (owner.user_id, owner.device_id), device
        assert device["keys"] == {
            f"ed25519:{owner.device_id}": ids["ed25519"],
            f"curve25519:{owner.device_id}": ids["curve25519"],
        }, fed.explain(f"{where}: {device}")
        assert MEGOLM in device["algorithms"], device
        # The keys object as uploaded, signature intact (nio checks it below, too).
        assert reader.olm.verify_json(device, ids["ed25519"], owner.user_id, owner.device_id), (
            fed.explain(f"{where}: the device keys' signature does not verify: {device}")
        )

        # And as nio sees it: keys/query through its own server, signatures checked by nio.
        reader.olm.users_for_key_query.add(owner.user_id)
        expect(fed, await reader.keys_query(), nio.KeysQueryResponse, f"{where} (nio)")
        known = reader.device_store[owner.user_id]
        assert owner.device_id in known, fed.explain(f"{where}: nio's device store has {list(known.keys())}")
        assert (known[owner.device_id].ed25519, known[owner.device_id].curve25519) == (
            ids["ed25519"], ids["curve25519"]
        )


async def _otk_count(acc: Account, client: nio.AsyncClient) -> int:
    # An empty upload answers with the server's current counts.
    status, body, _ = await http(acc.hs, "POST", "/_matrix/client/v3/keys/upload", client.access_token, json_body={})
    assert status == 200, (status, body)
    return body.get("one_time_key_counts", {}).get("signed_curve25519", 0)


async def test_one_time_key_claim_cross_both_ways(fed: Federation, clients: Clients):
    m_acc, m, s_acc, s = await _keyed_pair(fed, clients)

    for (reader_acc, reader), (owner_acc, owner) in (((m_acc, m), (s_acc, s)), ((s_acc, s), (m_acc, m))):
        where = f"{reader_acc.hs.kind} claiming a key of {owner.user_id}"
        ids = owner.olm.account.identity_keys
        full = await _otk_count(owner_acc, owner)
        assert full == owner.olm.account.max_one_time_keys

        status, body, _ = await http(
            reader_acc.hs, "POST", "/_matrix/client/v3/keys/claim", reader.access_token,
            json_body={"one_time_keys": {owner.user_id: {owner.device_id: "signed_curve25519"}}},
        )
        assert status == 200, fed.explain(f"{where}: HTTP {status} {body}")
        assert body.get("failures", {}) == {}, fed.explain(f"{where}: failures {body}")
        keys = body.get("one_time_keys", {}).get(owner.user_id, {}).get(owner.device_id, {})
        assert len(keys) == 1, fed.explain(f"{where}: expected one key, got {body}")
        (key_id, key), = keys.items()
        assert key_id.startswith("signed_curve25519:"), key_id
        assert isinstance(key, dict) and key.get("key"), key
        assert reader.olm.verify_json(key, ids["ed25519"], owner.user_id, owner.device_id), (
            fed.explain(f"{where}: the one-time key's signature does not verify: {key}")
        )
        assert await _otk_count(owner_acc, owner) == full - 1, fed.explain(f"{where}: the count did not drop")

        # nio's own claim (after its own keys/query) opens an Olm session with a second key.
        reader.olm.users_for_key_query.add(owner.user_id)
        expect(fed, await reader.keys_query(), nio.KeysQueryResponse, f"{where}: keys/query (nio)")
        claim = expect(
            fed, await reader.keys_claim({owner.user_id: [owner.device_id]}), nio.KeysClaimResponse,
            f"{where} (nio)",
        )
        assert claim.failures == {}, fed.explain(f"{where}: nio claim failures {claim.failures}")
        second = claim.one_time_keys[owner.user_id][owner.device_id]
        assert key_id not in second, f"the same one-time key was handed out twice: {key_id}"
        assert reader.olm.session_store.get(ids["curve25519"]), (
            fed.explain(f"{where}: nio opened no Olm session from the claimed key {second}")
        )
        assert await _otk_count(owner_acc, owner) == full - 2


@pytest.mark.parametrize("origin_kind", ["synapse", "moss"])
async def test_remote_media_downloads_byte_exact(fed: Federation, origin_kind: str):
    origin = fed.synapse if origin_kind == "synapse" else fed.moss
    reader_hs = other(fed, origin)
    uploader = await new_account(origin, "mediaup")
    reader = await new_account(reader_hs, "mediadown")

    files = [
        (f"pic-{uuid.uuid4().hex[:6]}.png", "image/png", png(120, 80)),
        (f"blob-{uuid.uuid4().hex[:6]}.bin", "application/octet-stream", os.urandom(300_000)),
    ]
    for filename, ctype, data in files:
        status, body, _ = await http(
            origin, "POST", "/_matrix/media/v3/upload", uploader.access_token, data=data,
            headers={"Content-Type": ctype}, params={"filename": filename},
        )
        assert status == 200, fed.explain(f"upload to {origin.kind}: HTTP {status} {body}")
        mxc = body["content_uri"]
        assert mxc.startswith(f"mxc://{origin.server_name}/"), mxc
        path = f"/_matrix/client/v1/media/download/{mxc.removeprefix('mxc://')}"

        if ctype == "image/png":
            # A thumbnail before anything fetched the original: the reader asks the origin's
            # federation thumbnail endpoint or fetches the original and scales it itself.
            thumb_path = path.replace("/download/", "/thumbnail/")
            where = f"thumbnail of {origin.kind}'s {mxc} through {reader_hs.kind}"
            status, got, headers = await http(
                reader_hs, "GET", thumb_path, reader.access_token,
                params={"width": "32", "height": "32", "method": "scale"},
            )
            assert status == 200, fed.explain(f"{where}: HTTP {status} {got!r:.500}")
            assert headers.get("content-type", "").startswith("image/"), fed.explain(f"{where}: {headers}")
            assert isinstance(got, bytes) and 0 < len(got) < len(data), fed.explain(f"{where}: {len(got)} bytes")

        # Twice: the first download fetches over federation, the second may come from a cache.
        for attempt in ("first", "second"):
            where = f"{attempt} download of {origin.kind}'s {mxc} ({ctype}) through {reader_hs.kind}"
            status, got, headers = await http(reader_hs, "GET", path, reader.access_token)
            assert status == 200, fed.explain(f"{where}: HTTP {status} {got!r:.500}")
            assert isinstance(got, bytes) and hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), (
                fed.explain(f"{where}: {len(got)} bytes, not the {len(data)} uploaded ones")
            )
            assert headers.get("content-type", "").split(";")[0].strip() == ctype, (
                fed.explain(f"{where}: Content-Type {headers.get('content-type')!r}")
            )

        # Authenticated media: no token, no media.
        status, _, _ = await http(reader_hs, "GET", path)
        assert status == 401, f"{reader_hs.kind} served remote media without a token: {status}"

    # A media id the origin never issued: a clean 404, not a hang or a 500.
    missing = f"/_matrix/client/v1/media/download/{origin.server_name}/{'x' * 24}"
    status, body, _ = await http(reader_hs, "GET", missing, reader.access_token)
    assert status == 404, fed.explain(f"unknown remote media through {reader_hs.kind}: HTTP {status} {body!r:.300}")


# ====================================================================== needs shared rooms


async def room_version_of(fed: Federation, hs: Homeserver, token: str, room_id: str) -> str:
    status, body, _ = await http(
        hs, "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/state/m.room.create/", token
    )
    assert status == 200, fed.explain(f"{hs.kind}: m.room.create of {room_id}: HTTP {status} {body}")
    return body.get("room_version", "1")


async def test_synapse_room_moss_user_invited_joins_chats_and_leaves(fed: Federation, clients: Clients):
    s_acc, s = await clients.user(fed.synapse, "shost")
    m_acc, m = await clients.user(fed.moss, "mguest")
    await initial_sync(fed, m)

    # A room as Synapse makes it by default.
    resp = await s.room_create(visibility=RoomVisibility.private, preset=RoomPreset.private_chat, name="fed chat")
    room_id = expect(fed, resp, nio.RoomCreateResponse, "createRoom on synapse").room_id
    status, caps, _ = await http(fed.synapse, "GET", "/_matrix/client/v3/capabilities", s_acc.access_token)
    default_version = caps["capabilities"]["m.room_versions"]["default"]
    version = await room_version_of(fed, fed.synapse, s_acc.access_token, room_id)
    assert version == default_version, (version, default_version)
    await initial_sync(fed, s)

    # Synapse invites the moss user: an /invite request to moss.
    expect(fed, await s.room_invite(room_id, m_acc.user_id), nio.RoomInviteResponse, "invite from synapse")
    invite = await sync_until(fed, m, lambda r: r.rooms.invite.get(room_id), f"invite to {room_id} on moss")
    inviter = [
        e for e in invite.invite_state
        if isinstance(e, nio.InviteMemberEvent) and e.state_key == m_acc.user_id and e.membership == "invite"
    ]
    assert inviter and inviter[0].sender == s_acc.user_id, fed.explain(f"invite_state: {invite.invite_state}")

    # The moss user accepts: make_join / send_join against Synapse.
    joined = await m.join(room_id)
    assert isinstance(joined, nio.JoinResponse) and joined.room_id == room_id, fed.explain(f"join: {joined}")
    await sync_until(fed, s, membership_of(m_acc.user_id, "join", room_id), "the moss user's join on synapse")
    await sync_until(fed, m, lambda r: r.rooms.join.get(room_id), f"{room_id} under rooms.join on moss")
    assert await room_version_of(fed, fed.moss, m_acc.access_token, room_id) == version

    # Messages both ways.
    body = f"hello from synapse {uuid.uuid4().hex[:8]}"
    from_synapse = await send_text(fed, s, room_id, body)
    await expect_text(fed, m, room_id, from_synapse, s_acc.user_id, body)
    body = f"hello from moss {uuid.uuid4().hex[:8]}"
    from_moss = await send_text(fed, m, room_id, body)
    await expect_text(fed, s, room_id, from_moss, m_acc.user_id, body)

    # Typing both ways (m.typing EDUs).
    expect(fed, await m.room_typing(room_id, True, 20_000), nio.RoomTypingResponse, "typing on moss")
    await sync_until(fed, s, typing_user(m_acc.user_id, room_id), "the moss user typing, on synapse")
    expect(fed, await s.room_typing(room_id, True, 20_000), nio.RoomTypingResponse, "typing on synapse")
    await sync_until(fed, m, typing_user(s_acc.user_id, room_id), "the synapse user typing, on moss")

    # Read receipts both ways (m.receipt EDUs).
    expect(fed, await s.update_receipt_marker(room_id, from_moss), nio.UpdateReceiptMarkerResponse, "receipt")
    await sync_until(fed, m, receipt_of(s_acc.user_id, from_moss, room_id), "the synapse user's receipt on moss")
    expect(fed, await m.update_receipt_marker(room_id, from_synapse), nio.UpdateReceiptMarkerResponse, "receipt")
    await sync_until(fed, s, receipt_of(m_acc.user_id, from_synapse, room_id), "the moss user's receipt on synapse")

    # The moss user leaves: make_leave / send_leave (or a /send of the leave event).
    expect(fed, await m.room_leave(room_id), nio.RoomLeaveResponse, "leave on moss")
    await sync_until(fed, s, membership_of(m_acc.user_id, "leave", room_id), "the moss user's leave on synapse")


async def test_synapse_user_joins_moss_room_by_alias_and_reads_history(fed: Federation, clients: Clients):
    m_acc, m = await clients.user(fed.moss, "mhost")
    s_acc, s = await clients.user(fed.synapse, "sguest")

    alias_local = f"fedroom_{uuid.uuid4().hex[:8]}"
    resp = await m.room_create(visibility=RoomVisibility.private, preset=RoomPreset.public_chat, alias=alias_local)
    room_id = expect(fed, resp, nio.RoomCreateResponse, "createRoom with an alias on moss").room_id
    history = {}
    for i in range(3):
        body = f"before the join #{i} {uuid.uuid4().hex[:8]}"
        history[await send_text(fed, m, room_id, body)] = body
    await initial_sync(fed, m)
    await initial_sync(fed, s)

    # Synapse resolves the alias on moss (/query/directory) and joins through moss.
    alias = f"#{alias_local}:{fed.moss.server_name}"
    joined = await s.join(alias)
    assert isinstance(joined, nio.JoinResponse), fed.explain(f"join {alias} on synapse: {joined}")
    assert joined.room_id == room_id, (joined.room_id, room_id)
    await sync_until(fed, m, membership_of(s_acc.user_id, "join", room_id), "the synapse user's join on moss")
    await sync_until(fed, s, lambda r: r.rooms.join.get(room_id), f"{room_id} under rooms.join on synapse")

    body = f"hi from synapse {uuid.uuid4().hex[:8]}"
    from_synapse = await send_text(fed, s, room_id, body)
    await expect_text(fed, m, room_id, from_synapse, s_acc.user_id, body)
    body = f"hi from moss {uuid.uuid4().hex[:8]}"
    from_moss = await send_text(fed, m, room_id, body)
    await expect_text(fed, s, room_id, from_moss, m_acc.user_id, body)

    # History from before the join (history_visibility "shared"), through Synapse's /messages:
    # whatever Synapse did not get with the join it must backfill from moss.
    async def attempt() -> tuple[Any, bool]:
        seen: dict[str, Any] = {}
        token = None
        for _ in range(10):
            params = {"dir": "b", "limit": "50"}
            if token:
                params["from"] = token
            status, page, _ = await http(
                fed.synapse, "GET", f"/_matrix/client/v3/rooms/{quote(room_id)}/messages", s_acc.access_token,
                params=params,
            )
            if status != 200:
                return (status, page), False
            for e in page.get("chunk", []):
                seen[e["event_id"]] = e
            token = page.get("end")
            if not page.get("chunk") or not token:
                break
        found = {eid: seen[eid]["content"].get("body") for eid in history if eid in seen}
        return ({"found": found, "types": sorted({e["type"] for e in seen.values()})}, found == history)

    await poll_until(fed, attempt, "pre-join history in synapse's /messages")


async def trust(fed: Federation, client: nio.AsyncClient, peer: nio.AsyncClient) -> None:
    """Out-of-band verification: the keys the reader's server handed out (keys/query, over
    federation) must be exactly those the peer's device holds."""
    if peer.device_id not in client.device_store[peer.user_id]:
        client.olm.users_for_key_query.add(peer.user_id)
        expect(fed, await client.keys_query(), nio.KeysQueryResponse, f"{client.user_id}: keys/query")
    known = client.device_store[peer.user_id]
    assert peer.device_id in known, fed.explain(f"keys/query for {peer.user_id} lacks {peer.device_id}: {list(known)}")
    device = known[peer.device_id]
    assert device.ed25519 == peer.olm.account.identity_keys["ed25519"]
    assert device.curve25519 == peer.olm.account.identity_keys["curve25519"]
    client.verify_device(device)


async def expect_decrypted(
    fed: Federation, reader: nio.AsyncClient, room_id: str, event_id: str, sender: nio.AsyncClient, body: str
) -> None:
    event = await sync_until(fed, reader, lambda r: _timeline_event(r, room_id, event_id), f"event {event_id}")
    if isinstance(event, nio.MegolmEvent):
        # The room key travels as a to-device message over federation and may come after the
        # message itself: wait for it, then decrypt.
        await sync_until(
            fed, reader,
            lambda _r: reader.olm.inbound_group_store.get(room_id, event.sender_key, event.session_id),
            f"the room key for {event_id} (session {event.session_id})",
        )
        event = reader.decrypt_event(event)
    assert isinstance(event, nio.RoomMessageText), fed.explain(f"{reader.user_id} could not decrypt: {event!r}")
    assert event.decrypted and event.body == body and event.sender == sender.user_id, event
    assert event.sender_key == sender.olm.account.identity_keys["curve25519"], event


def _timeline_event(resp: nio.SyncResponse, room_id: str, event_id: str) -> Any:
    info = resp.rooms.join.get(room_id)
    if info is None:
        return None
    return next((e for e in info.timeline.events if getattr(e, "event_id", None) == event_id), None)


async def test_encrypted_dm_between_moss_and_synapse(fed: Federation, clients: Clients):
    m_acc, m = await clients.user(fed.moss, "mdm", encryption=True)
    s_acc, s = await clients.user(fed.synapse, "sdm", encryption=True)
    await initial_sync(fed, m)  # also uploads the device keys
    await initial_sync(fed, s)

    # The moss user opens an encrypted DM with the Synapse user: moss sends the invite.
    resp = await m.room_create(
        visibility=RoomVisibility.private,
        preset=RoomPreset.trusted_private_chat,
        is_direct=True,
        invite=[s_acc.user_id],
        initial_state=[{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": MEGOLM}}],
    )
    room_id = expect(fed, resp, nio.RoomCreateResponse, "createRoom (encrypted DM) on moss").room_id
    await sync_until(fed, s, lambda r: r.rooms.invite.get(room_id), f"the DM invite to {room_id} on synapse")
    # The invite carries the room's state as signed PDUs (spec v1.16, MSC4311): Synapse checks
    # them (in version 12 rooms, moss's default) and warns about anything else.
    with open(fed.synapse.log_path, "rb") as f:
        f.seek(fed.synapse.log_offset)
        synapse_log = f.read().decode(errors="replace")
    assert "invite_room_state" not in synapse_log, fed.explain("Synapse complained about invite_room_state")
    joined = await s.join(room_id)
    assert isinstance(joined, nio.JoinResponse), fed.explain(f"join of the DM on synapse: {joined}")
    await sync_until(fed, m, membership_of(s_acc.user_id, "join", room_id), "the synapse user's join on moss")
    await sync_until(fed, s, lambda r: r.rooms.join.get(room_id), f"{room_id} under rooms.join on synapse")
    assert m.rooms[room_id].encrypted and s.rooms[room_id].encrypted, "a client does not know the DM is encrypted"

    await trust(fed, m, s)
    await trust(fed, s, m)

    body = f"secret from moss {uuid.uuid4().hex}"
    from_moss = await send_text(fed, m, room_id, body)
    await expect_decrypted(fed, s, room_id, from_moss, m, body)

    body = f"secret from synapse {uuid.uuid4().hex}"
    from_synapse = await send_text(fed, s, room_id, body)
    await expect_decrypted(fed, m, room_id, from_synapse, s, body)
