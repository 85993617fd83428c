"""Media through matrix-nio: uploads, authenticated downloads, thumbnails and an
end-to-end-encrypted attachment, shared in a room as clients share files."""

from __future__ import annotations

import io
import os
import uuid

import aiohttp
import nio
import pytest
from nio.crypto.attachments import decrypt_attachment

from conftest import garage_or_skip, register_user, s3_store_env, start_moss, stop_moss
from pngs import png, png_size
from test_chat_nio import shared_private_room, sync_until, wait_for_event


async def upload(client: nio.AsyncClient, data: bytes, content_type: str, filename: str, encrypt: bool = False):
    resp, keys = await client.upload(
        io.BytesIO(data), content_type=content_type, filename=filename, filesize=len(data), encrypt=encrypt
    )
    assert isinstance(resp, nio.UploadResponse), f"upload failed: {resp}"
    assert resp.content_uri.startswith("mxc://"), resp.content_uri
    return resp.content_uri, keys


async def test_file_shared_in_a_room_downloads_byte_exact(make_client):
    alice = await make_client("alice")
    bob = await make_client("bob")
    room_id = await shared_private_room(alice, bob)

    data = os.urandom(300_000)
    mxc, _ = await upload(alice, data, "application/pdf", "report.pdf")
    sent = await alice.room_send(
        room_id,
        "m.room.message",
        {"msgtype": "m.file", "body": "report.pdf", "url": mxc, "info": {"size": len(data), "mimetype": "application/pdf"}},
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    event = await sync_until(bob, wait_for_event(sent.event_id, room_id), "the file message")
    assert event.source["content"]["url"] == mxc

    got = await bob.download(mxc=mxc)
    assert isinstance(got, nio.MemoryDownloadResponse), f"download failed: {got}"
    assert got.body == data
    assert got.content_type == "application/pdf"
    assert got.filename == "report.pdf"

    missing = await bob.download(mxc=mxc.rsplit("/", 1)[0] + "/doesnotexist")
    assert isinstance(missing, nio.DownloadError), missing
    assert missing.status_code == "M_NOT_FOUND"


async def test_image_thumbnails_have_the_configured_sizes(make_client):
    alice = await make_client("alice")
    mxc, _ = await upload(alice, png(640, 400), "image/png", "photo.png")
    server_name, media_id = mxc.removeprefix("mxc://").split("/")
    for width, height, method, expected in [
        (32, 32, nio.ResizingMethod.crop, (32, 32)),
        (96, 96, nio.ResizingMethod.crop, (96, 96)),
        (320, 240, nio.ResizingMethod.scale, (320, 200)),
    ]:
        resp = await alice.thumbnail(server_name, media_id, width, height, method=method)
        assert isinstance(resp, nio.ThumbnailResponse), f"thumbnail {width}x{height}: {resp}"
        assert resp.content_type == "image/png"
        assert png_size(resp.body) == expected


async def test_encrypted_attachment_round_trips(make_client):
    """What E2EE clients do: encrypt locally, upload ciphertext, share the keys in a message."""
    alice = await make_client("alice")
    bob = await make_client("bob")
    room_id = await shared_private_room(alice, bob)
    secret = b"attachment plaintext " * 5000
    mxc, keys = await upload(alice, secret, "application/octet-stream", "secret.bin", encrypt=True)
    assert keys is not None
    sent = await alice.room_send(
        room_id, "m.room.message", {"msgtype": "m.file", "body": "secret.bin", "file": {**keys, "url": mxc}}
    )
    assert isinstance(sent, nio.RoomSendResponse), sent
    event = await sync_until(bob, wait_for_event(sent.event_id, room_id), "the attachment message")
    file_info = event.source["content"]["file"]

    got = await bob.download(mxc=file_info["url"])
    assert isinstance(got, nio.MemoryDownloadResponse), got
    assert got.body != secret, "the server must hold ciphertext only"
    plain = decrypt_attachment(got.body, file_info["key"]["k"], file_info["hashes"]["sha256"], file_info["iv"])
    assert plain == secret


async def test_downloads_follow_a_redirect_to_the_store(tmp_path):
    """With `media.s3.redirect_downloads` on an unencrypted bucket (Garage, started by
    scripts/test), moss answers downloads with a short-lived link to the object: nio follows
    it and gets the file, typed and named as uploaded."""
    s3 = garage_or_skip()
    srv = start_moss(
        tmp_path,
        {**s3_store_env(s3, f"nio-{uuid.uuid4().hex[:8]}-"), "MOSS_MEDIA__S3__REDIRECT_DOWNLOADS": "true"},
    )
    client = nio.AsyncClient(srv.base_url, user="carol")
    try:
        await register_user(srv.base_url, "carol", "pw-carol-1234")
        assert isinstance(await client.login(password="pw-carol-1234"), nio.LoginResponse)
        data = os.urandom(200_000)
        mxc, _ = await upload(client, data, "application/pdf", "minutes.pdf")

        # moss itself answers with a link, not the bytes...
        url = f"{srv.base_url}/_matrix/client/v1/media/download/{mxc[len('mxc://'):]}"
        headers = {"Authorization": f"Bearer {client.access_token}"}
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers=headers, allow_redirects=False) as resp:
                assert resp.status == 307, await resp.text()
                assert resp.headers["Location"].startswith(s3["ENDPOINT"]), resp.headers["Location"]

        # ...which the client follows to the store.
        got = await client.download(mxc=mxc)
        assert isinstance(got, nio.MemoryDownloadResponse), f"download failed: {got}"
        assert got.body == data
        assert got.content_type == "application/pdf"
        assert got.filename == "minutes.pdf"
    finally:
        await client.close()
        stop_moss(srv)
