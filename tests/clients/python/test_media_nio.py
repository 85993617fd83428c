"""Media through matrix-nio: uploads, authenticated downloads, thumbnails and an
end-to-end-encrypted attachment, shared in a room as clients share files."""

from __future__ import annotations

import io
import os
import struct
import uuid
import zlib

import aiohttp
import nio
import pytest
from nio.crypto.attachments import decrypt_attachment

from conftest import register_user, start_moss, stop_moss
from test_chat_nio import shared_private_room, sync_until, wait_for_event


def png(width: int, height: int) -> bytes:
    """A real PNG (RGB gradient), written by hand so the suite needs no imaging library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(
        b"\x00" + bytes(v for x in range(width) for v in (x % 256, y % 256, 128)) for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


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
    names = ("ENDPOINT", "REGION", "BUCKET", "KEY_ID", "SECRET")
    s3 = {n: os.environ.get(f"MOSS_TEST_S3_{n}") for n in names}
    if not all(s3.values()):
        if os.environ.get("MOSS_REQUIRE_S3"):
            pytest.fail("MOSS_REQUIRE_S3 is set but no MOSS_TEST_S3_* endpoint is configured")
        pytest.skip("no S3 endpoint (scripts/test starts Garage)")
    srv = start_moss(
        tmp_path,
        {
            "MOSS_MEDIA__STORE": "s3",
            "MOSS_MEDIA__S3__ENDPOINT": s3["ENDPOINT"],
            "MOSS_MEDIA__S3__REGION": s3["REGION"],
            "MOSS_MEDIA__S3__BUCKET": s3["BUCKET"],
            "MOSS_MEDIA__S3__ACCESS_KEY_ID": s3["KEY_ID"],
            "MOSS_MEDIA__S3__SECRET_ACCESS_KEY": s3["SECRET"],
            "MOSS_MEDIA__S3__PREFIX": f'"nio-{uuid.uuid4().hex[:8]}-"',
            "MOSS_MEDIA__S3__REDIRECT_DOWNLOADS": "true",
        },
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
