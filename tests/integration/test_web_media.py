"""A message's media, fetched back: GetMessageMedia over gRPC with a visitor token (the bytes
reassembled exactly, in chunks, only from the visitor's own conversation) and the gateway's
media route (the bytes with their headers; every refusal a 4xx with a reason)."""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from PIL import Image

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import chat_service_pb2_grpc
from server.services.message_media import CHUNK_BYTES
from tests.support.chat_client import JWT_SETTINGS
from tests.support.error_details import details_of
from tests.support.servers import RunningServer, tenants_file
from tests.support.web import ORIGIN, SERVER_TENANTS, Gateway, start_web_bridge

StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def server(start_server: StartServer, tmp_path: Path) -> RunningServer:
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    return await start_server(
        CHAT_TENANTS_FILE=tenants_file(server_dir, SERVER_TENANTS), **JWT_SETTINGS
    )


@pytest.fixture
async def gateway(server: RunningServer, tmp_path: Path) -> AsyncIterator[Gateway]:
    runner, url = await start_web_bridge(server.target, tmp_path, None)
    async with aiohttp.ClientSession() as http:
        yield Gateway(url=url, http=http)
    await runner.cleanup()


def noisy_png(side: int = 240) -> bytes:
    """A PNG that compresses badly: several chunks of bytes."""
    rng = random.Random(17)  # noqa: S311 - noise for a test image, not a secret
    image = Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def upload(gateway: Gateway, token: str, data: bytes, name: str) -> str:
    form = aiohttp.FormData()
    form.add_field("file", data, filename=name, content_type="application/octet-stream")
    async with gateway.http.post(
        f"{gateway.url}/web/v1/acme/uploads",
        data=form,
        headers={"Origin": ORIGIN, "Authorization": f"Bearer {token}"},
    ) as response:
        body = await response.json()
        assert response.status == 200, body
        return str(body["media_id"])


async def visitor_with_media(gateway: Gateway, data: bytes) -> dict[str, Any]:
    """A visitor who sent an image and then a text: its token and the two stored messages."""
    token = (await gateway.token())["token"]
    socket = await gateway.socket(token)
    await socket.send("my picture", media_id=await upload(gateway, token, data, "noise.png"))
    await socket.messages_until(2)
    await socket.send("just text")
    frames = await socket.messages_until(4)
    await socket.ws.close()
    image = next(f for f in frames if "media" in f["content"])
    text = next(f for f in frames if f["content"].get("text", {}).get("text") == "just text")
    return {
        "token": token,
        "conversation_id": image["conversation_id"],
        "image": image,
        "text": text,
    }


async def get_media(
    server: RunningServer, token: str, conversation_id: str, message_id: str
) -> list[chat.GetMessageMediaResponse]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = chat_service_pb2_grpc.ChatServiceStub(channel).GetMessageMedia(
            chat.GetMessageMediaRequest(conversation_id=conversation_id, message_id=message_id),
            metadata=(("authorization", f"Bearer {token}"),),
            timeout=10,
        )
        return [part async for part in call]


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    infos = [d for d in details_of(exc) if isinstance(d, error_details_pb2.ErrorInfo)]
    return infos[0].reason if infos else ""


async def test_the_rpc_streams_a_visitors_own_media_in_chunks(
    gateway: Gateway, server: RunningServer
) -> None:
    data = noisy_png()
    assert len(data) > 2 * CHUNK_BYTES
    alice = await visitor_with_media(gateway, data)
    image = alice["image"]
    parts = await get_media(server, alice["token"], alice["conversation_id"], image["id"])
    first, rest = parts[0], parts[1:]
    assert (first.mime_type, first.file_name, first.size_bytes) == (
        "image/png",
        "noise.png",
        len(data),
    )
    assert len(rest) == -(-len(data) // CHUNK_BYTES)
    assert all(0 < len(part.data) <= CHUNK_BYTES for part in rest)
    assert not any(part.mime_type or part.size_bytes for part in rest)
    joined = b"".join(part.data for part in parts)
    assert joined == data
    assert hashlib.sha256(joined).hexdigest() == image["content"]["media"]["sha256"]

    # A text message has no media to give.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await get_media(server, alice["token"], alice["conversation_id"], alice["text"]["id"])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(refused.value) == "MESSAGE_HAS_NO_MEDIA"

    # Another visitor reaches neither Alice's conversation nor her message through its own.
    bob = await visitor_with_media(gateway, noisy_png(40))
    for conversation_id in (alice["conversation_id"], bob["conversation_id"]):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await get_media(server, bob["token"], conversation_id, image["id"])
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def fetch(
    gateway: Gateway, path: str, *, token: str | None, origin: str | None = ORIGIN
) -> tuple[int, dict[str, str], bytes]:
    headers = {}
    if origin:
        headers["Origin"] = origin
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with gateway.http.get(f"{gateway.url}{path}", headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


async def test_the_gateway_serves_media_to_its_visitor_only(gateway: Gateway) -> None:
    data = noisy_png(120)
    alice = await visitor_with_media(gateway, data)
    path = f"/web/v1/acme/media/{alice['conversation_id']}/{alice['image']['id']}"
    status, headers, body = await fetch(gateway, path, token=alice["token"])
    assert status == 200, body
    assert body == data
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"].startswith("private, max-age=")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Content-Disposition" not in headers  # an image is shown, not downloaded

    bob = await visitor_with_media(gateway, noisy_png(40))
    text_path = f"/web/v1/acme/media/{alice['conversation_id']}/{alice['text']['id']}"
    refusals = [
        (path, {"token": alice["token"], "origin": "https://evil.example"}, 403),
        (path, {"token": alice["token"], "origin": None}, 403),
        (path, {"token": None}, 401),
        (path, {"token": "not-a-token"}, 401),
        (path, {"token": bob["token"]}, 404),
        (
            f"/web/v1/acme/media/{bob['conversation_id']}/{alice['image']['id']}",
            {"token": bob["token"]},
            404,
        ),
        (text_path, {"token": alice["token"]}, 409),
        (f"/web/v1/acme/media/{alice['conversation_id']}/bad%20id", {"token": alice["token"]}, 400),
    ]
    for target, options, expected in refusals:
        status, _headers, body = await fetch(gateway, target, **options)
        assert status == expected, (target, options, body)
        assert b'"error"' in body, body


async def test_a_document_is_served_as_an_attachment(gateway: Gateway) -> None:
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    token = (await gateway.token())["token"]
    socket = await gateway.socket(token)
    await socket.send("the invoice", media_id=await upload(gateway, token, pdf, "invoice.pdf"))
    (message, _reply) = await socket.messages_until(2)
    await socket.ws.close()
    path = f"/web/v1/acme/media/{message['conversation_id']}/{message['id']}"
    status, headers, body = await fetch(gateway, path, token=token)
    assert status == 200, body
    assert body == pdf
    assert headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"].startswith('attachment; filename="invoice.pdf"')
    assert headers["X-Content-Type-Options"] == "nosniff"
