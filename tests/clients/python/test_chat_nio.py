"""A two-to-three person chat driven through matrix-nio, the way a real bot or client would.

Each test registers its own users and creates its own room, so tests can run in any order
or alone. Every wait is a bounded /sync loop: a server that never delivers an event makes
the test fail with the last /sync body, never hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

import nio
import pytest
from nio import RoomPreset, RoomVisibility

# How long one "wait until the other side sees X" may take. Local delivery is expected
# within milliseconds; the margin is for a slow debug build on a busy 2-core machine.
SYNC_DEADLINE_S = 15.0
# Long-poll length per /sync: short enough to re-check the deadline often.
SYNC_POLL_MS = 1000

T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


async def _raw_body(resp: nio.Response, limit: int = 4000) -> str:
    """The raw JSON nio parsed, for failure messages: nio's parsed view drops events it
    cannot validate, which is exactly what one needs to see when a wait times out."""
    try:
        text = await resp.transport_response.text()
    except Exception as err:  # diagnostics only; never mask the real failure
        return f"<unavailable: {err!r}>"
    return text if len(text) <= limit else text[:limit] + f"... <{len(text) - limit} more chars>"


async def sync_until(
    client: nio.AsyncClient,
    predicate: Callable[[nio.SyncResponse], T | None],
    what: str,
    deadline_s: float = SYNC_DEADLINE_S,
) -> T:
    """Sync (incrementally, from the client's last token) until `predicate` returns a
    truthy value, and return that value.

    The predicate sees each response on its own, so callers must start waiting before
    (or right after) the action whose effect they wait for; nothing is replayed.
    """
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    last_body = "<no /sync completed>"
    while (remaining := end - loop.time()) > 0:
        poll_ms = max(100, int(min(SYNC_POLL_MS, remaining * 1000)))
        try:
            # nio's own timeout is the long-poll plus 15 s; cap it by our deadline.
            resp = await asyncio.wait_for(client.sync(timeout=poll_ms), timeout=remaining + 5)
        except asyncio.TimeoutError:
            break
        assert isinstance(resp, nio.SyncResponse), f"{client.user_id}: /sync failed: {resp}"
        last_body = await _raw_body(resp)
        found = predicate(resp)
        if found:
            return found
        # Avoid a hot loop against a server that answers /sync at once instead of long-polling.
        await asyncio.sleep(0.05)
    pytest.fail(f"{client.user_id}: no {what} within {deadline_s}s; last /sync body: {last_body}")


def room_events(resp: nio.SyncResponse, room_id: str, section: str = "join") -> list[Any]:
    """Timeline plus state events of one room in one /sync response.

    State is included because a server may legitimately move state changes out of a
    limited timeline into the `state` block.
    """
    info = getattr(resp.rooms, section).get(room_id)
    if info is None:
        return []
    return list(info.state) + list(info.timeline.events)


def ephemeral_events(resp: nio.SyncResponse, room_id: str) -> list[Any]:
    info = resp.rooms.join.get(room_id)
    return list(info.ephemeral) if info else []


def member_events(events: list[Any], user_id: str, membership: str) -> list[nio.RoomMemberEvent]:
    return [
        e
        for e in events
        if isinstance(e, nio.RoomMemberEvent) and e.state_key == user_id and e.membership == membership
    ]


def wait_for_membership(user_id: str, membership: str, room_id: str, section: str = "join"):
    """Predicate factory: the first m.room.member event putting `user_id` in `membership`."""

    def predicate(resp: nio.SyncResponse) -> nio.RoomMemberEvent | None:
        found = member_events(room_events(resp, room_id, section), user_id, membership)
        return found[-1] if found else None

    return predicate


def wait_for_event(event_id: str, room_id: str):
    """Predicate factory: the event with this id in the room's timeline."""

    def predicate(resp: nio.SyncResponse) -> Any | None:
        info = resp.rooms.join.get(room_id)
        if info is None:
            return None
        return next((e for e in info.timeline.events if getattr(e, "event_id", None) == event_id), None)

    return predicate


def assert_forbidden(resp: nio.Response, action: str) -> None:
    """Both the HTTP status and the Matrix errcode matter: clients branch on either."""
    assert isinstance(resp, nio.ErrorResponse), f"{action} should have been refused, got {resp}"
    status = resp.transport_response.status if resp.transport_response is not None else None
    assert (status, resp.status_code) == (403, "M_FORBIDDEN"), f"{action}: HTTP {status}, {resp}"


async def create_room(client: nio.AsyncClient, preset: RoomPreset, **kwargs: Any) -> str:
    resp = await client.room_create(visibility=RoomVisibility.private, preset=preset, **kwargs)
    assert isinstance(resp, nio.RoomCreateResponse), f"createRoom failed: {resp}"
    assert resp.room_id.startswith("!"), resp.room_id
    return resp.room_id


async def send_text(client: nio.AsyncClient, room_id: str, body: str) -> str:
    resp = await client.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
    assert isinstance(resp, nio.RoomSendResponse), f"{client.user_id}: send {body!r} failed: {resp}"
    assert resp.event_id.startswith("$"), resp.event_id
    assert resp.room_id == room_id
    return resp.event_id


async def expect_text(
    reader: nio.AsyncClient, room_id: str, event_id: str, sender: str, body: str
) -> None:
    """`reader` must receive exactly this m.text message through /sync."""
    event = await sync_until(reader, wait_for_event(event_id, room_id), f"message {event_id}")
    assert isinstance(event, nio.RoomMessageText), f"expected m.text, got {event!r}"
    assert event.sender == sender
    assert event.body == body
    assert event.source["content"]["msgtype"] == "m.text"
    assert event.source["type"] == "m.room.message"


async def initial_sync(client: nio.AsyncClient) -> None:
    """Bring a client to 'now', so later waits observe incremental updates, as a
    running client would."""
    resp = await asyncio.wait_for(client.sync(timeout=0), timeout=SYNC_DEADLINE_S)
    assert isinstance(resp, nio.SyncResponse), f"{client.user_id}: initial /sync failed: {resp}"


async def shared_private_room(alice: nio.AsyncClient, bob: nio.AsyncClient) -> str:
    """Alice creates an invite-only room and bob accepts her invite; returns the room id
    with both clients' sync tokens positioned after bob's join."""
    await initial_sync(bob)
    room_id = await create_room(alice, RoomPreset.private_chat)
    await initial_sync(alice)

    resp = await alice.room_invite(room_id, bob.user_id)
    assert isinstance(resp, nio.RoomInviteResponse), f"invite failed: {resp}"
    await sync_until(bob, lambda r: r.rooms.invite.get(room_id), f"invite to {room_id}")

    resp = await bob.join(room_id)
    assert isinstance(resp, nio.JoinResponse), f"bob could not accept the invite: {resp}"
    assert resp.room_id == room_id

    await sync_until(alice, wait_for_membership(bob.user_id, "join", room_id), "bob's join")
    await sync_until(bob, lambda r: r.rooms.join.get(room_id), f"{room_id} under rooms.join")
    return room_id


# ----------------------------------------------------------------------------- tests


async def test_invite_join_and_exchange_messages(make_client):
    alice = await make_client("alice")
    bob = await make_client("bob")
    # Bob is already syncing before the invite exists, so the invite must arrive as an
    # incremental update, not only in a fresh initial sync.
    await initial_sync(bob)

    room_id = await create_room(alice, RoomPreset.private_chat)
    await initial_sync(alice)
    resp = await alice.room_invite(room_id, bob.user_id)
    assert isinstance(resp, nio.RoomInviteResponse), f"invite failed: {resp}"

    invite = await sync_until(bob, lambda r: r.rooms.invite.get(room_id), f"invite to {room_id}")
    # The stripped state must carry bob's own invite membership: clients read it to show
    # who invited them.
    invites = [
        e
        for e in invite.invite_state
        if isinstance(e, nio.InviteMemberEvent) and e.state_key == bob.user_id
    ]
    assert len(invites) == 1, f"invite_state lacks bob's m.room.member: {invite.invite_state}"
    assert invites[0].membership == "invite"
    assert invites[0].sender == alice.user_id

    resp = await bob.join(room_id)
    assert isinstance(resp, nio.JoinResponse), f"bob could not accept the invite: {resp}"
    assert resp.room_id == room_id

    joined = await sync_until(
        bob, wait_for_membership(bob.user_id, "join", room_id), "bob's own join in bob's sync"
    )
    assert joined.sender == bob.user_id
    # The room must also have left the invite section once joined.
    assert room_id in bob.rooms and bob.rooms[room_id].users.keys() >= {alice.user_id, bob.user_id}

    seen_by_alice = await sync_until(
        alice, wait_for_membership(bob.user_id, "join", room_id), "bob's join in alice's sync"
    )
    assert seen_by_alice.sender == bob.user_id

    hello = "Hi Bob, it's Alice"
    event_id = await send_text(alice, room_id, hello)
    await expect_text(bob, room_id, event_id, alice.user_id, hello)

    reply = "Hello Alice! Bob here."
    event_id = await send_text(bob, room_id, reply)
    await expect_text(alice, room_id, event_id, bob.user_id, reply)


async def test_back_pagination_returns_all_messages_in_order(make_client):
    alice = await make_client("alice")
    bob = await make_client("bob")
    room_id = await shared_private_room(alice, bob)

    bodies = [f"message {i:02d}" for i in range(30)]
    sent_ids = [await send_text(alice, room_id, body) for body in bodies]

    # Bob's sync token after he has seen the newest message is "now" for him: paginating
    # backwards from it must walk through every one of the 30 messages.
    await sync_until(bob, wait_for_event(sent_ids[-1], room_id), "the 30th message")
    token = bob.next_batch
    assert token

    chunk_ids: list[str] = []
    messages: list[nio.RoomMessageText] = []
    oldest_type = None
    # Checked last, so a token mismatch does not hide the content checks below.
    start_mismatches: list[tuple[str, str]] = []
    for _page in range(20):  # 30 messages + ~10 room-setup events fit in 5 pages of 10
        resp = await bob.room_messages(room_id, start=token, direction=nio.MessageDirection.back, limit=10)
        assert isinstance(resp, nio.RoomMessagesResponse), f"/messages failed: {resp}"
        if resp.start != token:
            start_mismatches.append((token, resp.start))
        assert len(resp.chunk) <= 10, f"limit=10 but got {len(resp.chunk)} events"
        for event in resp.chunk:
            chunk_ids.append(event.event_id)
            oldest_type = event.source.get("type")
            if event.source.get("type") == "m.room.message":
                assert isinstance(event, nio.RoomMessageText), event
                messages.append(event)
        if resp.end is None or not resp.chunk:
            break
        assert resp.end != token, f"pagination made no progress at token {token!r}"
        token = resp.end
    else:
        pytest.fail(f"pagination did not reach the start of the room in 20 pages ({len(chunk_ids)} events)")

    duplicates = {i for i in chunk_ids if chunk_ids.count(i) > 1}
    assert not duplicates, f"events returned more than once across pages: {duplicates}"
    # dir=b yields newest first; reversed, it must be exactly what alice sent, in order.
    assert [m.event_id for m in reversed(messages)] == sent_ids
    assert [m.body for m in reversed(messages)] == bodies
    assert {m.sender for m in messages} == {alice.user_id}
    # Bob may see history from before his join (private_chat => history_visibility shared),
    # so the walk ends at the very first event of the room.
    assert oldest_type == "m.room.create", f"pagination stopped before m.room.create (at {oldest_type})"
    # Spec (GET /messages): `start` "will be the same as the value given in `from`".
    assert not start_mismatches, f"(from, start) pairs that differ: {start_mismatches}"


async def test_typing_notifications(make_client):
    alice = await make_client("alice")
    bob = await make_client("bob")
    room_id = await shared_private_room(alice, bob)

    resp = await alice.room_typing(room_id, typing_state=True, timeout=30_000)
    assert isinstance(resp, nio.RoomTypingResponse), f"typing failed: {resp}"

    def typing_event(resp: nio.SyncResponse, want_alice: bool):
        for event in ephemeral_events(resp, room_id):
            if isinstance(event, nio.TypingNoticeEvent) and (alice.user_id in event.users) == want_alice:
                return event
        return None

    started = await sync_until(bob, lambda r: typing_event(r, True), "m.typing with alice")
    assert started.users == [alice.user_id]

    # Stopping must be announced too, or clients show "alice is typing" for 30 s.
    resp = await alice.room_typing(room_id, typing_state=False)
    assert isinstance(resp, nio.RoomTypingResponse), f"typing stop failed: {resp}"
    stopped = await sync_until(bob, lambda r: typing_event(r, False), "m.typing without alice")
    assert stopped.users == []


async def test_read_receipt_reaches_sender(make_client):
    alice = await make_client("alice")
    bob = await make_client("bob")
    room_id = await shared_private_room(alice, bob)

    event_id = await send_text(alice, room_id, "did you read this?")
    await expect_text(bob, room_id, event_id, alice.user_id, "did you read this?")

    resp = await bob.room_read_markers(room_id, fully_read_event=event_id, read_event=event_id)
    assert isinstance(resp, nio.RoomReadMarkersResponse), f"read_markers failed: {resp}"

    def bobs_receipt(resp: nio.SyncResponse) -> nio.Receipt | None:
        for event in ephemeral_events(resp, room_id):
            if isinstance(event, nio.ReceiptEvent):
                for receipt in event.receipts:
                    if receipt.user_id == bob.user_id and receipt.event_id == event_id:
                        return receipt
        return None

    receipt = await sync_until(alice, bobs_receipt, f"m.receipt from bob for {event_id}")
    assert receipt.receipt_type == "m.read"
    assert isinstance(receipt.timestamp, int) and receipt.timestamp > 0


async def test_room_name_change_reaches_member(make_client):
    alice = await make_client("alice")
    bob = await make_client("bob")
    room_id = await shared_private_room(alice, bob)

    new_name = "Alice & Bob's planning room"
    resp = await alice.room_put_state(room_id, "m.room.name", {"name": new_name})
    assert isinstance(resp, nio.RoomPutStateResponse), f"setting the name failed: {resp}"

    def name_event(resp: nio.SyncResponse) -> nio.RoomNameEvent | None:
        return next((e for e in room_events(resp, room_id) if isinstance(e, nio.RoomNameEvent)), None)

    event = await sync_until(bob, name_event, "m.room.name")
    assert event.event_id == resp.event_id
    assert event.sender == alice.user_id
    assert event.name == new_name
    assert event.source["state_key"] == ""
    # nio derives the display name from the synced state: what a user would actually see.
    assert bob.rooms[room_id].name == new_name


async def test_leave_reaches_remaining_member(make_client):
    alice = await make_client("alice")
    bob = await make_client("bob")
    room_id = await shared_private_room(alice, bob)

    resp = await bob.room_leave(room_id)
    assert isinstance(resp, nio.RoomLeaveResponse), f"leave failed: {resp}"

    left = await sync_until(alice, wait_for_membership(bob.user_id, "leave", room_id), "bob's leave")
    assert left.sender == bob.user_id
    assert bob.user_id not in alice.rooms[room_id].users

    # The leaver's own client must move the room to rooms.leave, with the leave event.
    own = await sync_until(
        bob, wait_for_membership(bob.user_id, "leave", room_id, section="leave"), "room under rooms.leave"
    )
    assert own.sender == bob.user_id


async def test_uninvited_user_cannot_join_invite_only_room(make_client):
    alice = await make_client("alice")
    carol = await make_client("carol")
    room_id = await create_room(alice, RoomPreset.private_chat)

    resp = await carol.join(room_id)
    assert_forbidden(resp, "joining an invite-only room without an invite")

    resp = await asyncio.wait_for(carol.sync(timeout=0), timeout=SYNC_DEADLINE_S)
    assert isinstance(resp, nio.SyncResponse), f"carol's /sync failed: {resp}"
    assert room_id not in resp.rooms.join
    assert room_id not in resp.rooms.invite


async def test_banned_user_cannot_rejoin_public_room(make_client):
    alice = await make_client("alice")
    carol = await make_client("carol")
    room_id = await create_room(alice, RoomPreset.public_chat)
    await initial_sync(alice)

    # public_chat => join_rule public: anyone may join by room id, no invite needed.
    resp = await carol.join(room_id)
    assert isinstance(resp, nio.JoinResponse), f"carol could not join a public room: {resp}"
    assert resp.room_id == room_id
    await sync_until(alice, wait_for_membership(carol.user_id, "join", room_id), "carol's join")

    resp = await alice.room_ban(room_id, carol.user_id, reason="spamming")
    assert isinstance(resp, nio.RoomBanResponse), f"ban failed: {resp}"
    ban = await sync_until(alice, wait_for_membership(carol.user_id, "ban", room_id), "carol's ban")
    assert ban.sender == alice.user_id
    assert ban.content.get("reason") == "spamming"

    resp = await carol.join(room_id)
    assert_forbidden(resp, "rejoining a room one is banned from")
