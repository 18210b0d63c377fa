"""Media through SendMessage on the real servers: GridFS storage, URL fetching, refusals."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from gridfs import AsyncGridFSBucket
from PIL import Image
from pymongo import AsyncMongoClient

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from server.processors.fetch import HttpMediaFetcher
from server.processors.media import MediaFetchError
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.error_details import violations
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncMongoClient[dict[str, object]]


def picture(fmt: str = "PNG", size: tuple[int, int] = (800, 600)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (uuid.uuid4().int % 256, 90, 200)).save(out, format=fmt)
    return out.getvalue()


@pytest.fixture
async def media_site() -> AsyncIterator[str]:
    """A real HTTP server with a picture, a redirect to it, and a body that is too large."""
    body = picture("GIF")

    async def image(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="image/gif")

    async def moved(_: web.Request) -> web.Response:
        raise web.HTTPFound("/a.gif")

    async def huge(_: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(_)
        for _chunk in range(22):
            await response.write(b"\x00" * 1024 * 1024)
        return response

    app = web.Application()
    app.router.add_get("/a.gif", image)
    app.router.add_get("/moved", moved)
    app.router.add_get("/huge", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def acme(start_server: StartServer, tmp_path: Path) -> AsyncIterator[ChatClient]:
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS),
        # The test's media server listens on loopback; production refuses private addresses.
        CHAT_MEDIA_FETCH_ALLOW_PRIVATE="true",
        **JWT_SETTINGS,
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield ChatClient(channel, "acme")


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[Mongo]:
    client: Mongo = AsyncMongoClient(stack.mongodb_uri)
    yield client
    await client.close()


async def stored_bytes(mongo: Mongo, media_id: str) -> bytes:
    from bson import ObjectId  # noqa: PLC0415

    stream = await AsyncGridFSBucket(mongo["chat"], bucket_name="media").open_download_stream(
        ObjectId(media_id)
    )
    return await stream.read()


async def test_an_image_is_stored_in_gridfs_with_a_thumbnail(
    acme: ChatClient, mongo: Mongo
) -> None:
    data = picture("WEBP")
    sent = await acme.send(
        content=c.Content(media=c.MediaContent(data=data, caption="  our  office ")),
        channel=c.CHANNEL_TYPE_WHATSAPP,
        channel_conversation_id="15551234567",
    )
    message = sent.message
    assert message.type == c.MESSAGE_TYPE_IMAGE
    media = message.content.media
    assert media.caption == "our office"
    assert media.mime_type == "image/jpeg"  # WhatsApp takes no WebP
    stored = await stored_bytes(mongo, media.media_id)
    assert hashlib.sha256(stored).hexdigest() == media.sha256
    assert len(stored) == media.size_bytes
    assert Image.open(io.BytesIO(stored)).format == "JPEG"
    thumbnail = Image.open(io.BytesIO(await stored_bytes(mongo, media.thumbnail.media_id)))
    assert thumbnail.size == (media.thumbnail.width, media.thumbnail.height) == (320, 240)
    assert sent.replies  # answered like any message

    history = await acme.call(
        "ListMessages",
        chat.ListMessagesRequest(conversation_id=sent.conversation.id),
    )
    assert history.messages[0].content.media == media
    # The caption is searchable like text.
    found = await acme.call(
        "SearchMessages",
        chat.SearchMessagesRequest(query="office", conversation_id=sent.conversation.id),
    )
    assert [m.id for m in found.messages] == [message.id]


async def test_media_fetched_by_url_and_reused_by_id(
    acme: ChatClient, mongo: Mongo, media_site: str
) -> None:
    by_url = await acme.send(content=c.Content(media=c.MediaContent(url=f"{media_site}/moved")))
    media = by_url.message.content.media
    assert media.mime_type == "image/gif"
    assert by_url.message.type == c.MESSAGE_TYPE_IMAGE
    by_id = await acme.send(content=c.Content(media=c.MediaContent(media_id=media.media_id)))
    assert by_id.message.content.media.media_id == media.media_id
    files = mongo["chat"]["media.files"]
    assert await files.count_documents({"metadata.sha256": media.sha256}) == 1


async def test_bad_media_is_refused_and_nothing_is_stored(
    acme: ChatClient, mongo: Mongo, media_site: str
) -> None:
    files = mongo["chat"]["media.files"]
    before = await files.count_documents({})
    user = "bad-media-" + uuid.uuid4().hex[:8]
    cases = [
        (c.MediaContent(data=b"MZ\x90\x00 an executable"), "content.media.data"),
        (c.MediaContent(data=b"%PDF-1.4", mime_type="image/png"), "content.media.data"),
        (c.MediaContent(url=f"{media_site}/huge"), "content.media.url"),
        (c.MediaContent(url=f"{media_site}/missing"), "content.media.url"),
        (c.MediaContent(data=picture(), file_name="a/b.png"), "content.media.file_name"),
    ]
    for media, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await acme.send(content=c.Content(media=media), user_id=user)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, media
        assert violations(caught.value) == [field]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await acme.send(content=c.Content(media=c.MediaContent(media_id="0" * 24)), user_id=user)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await files.count_documents({}) == before


async def test_another_tenants_media_id_is_not_found(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        acme, globex = ChatClient(channel, "acme"), ChatClient(channel, "globex")
        sent = await acme.send(content=c.Content(media=c.MediaContent(data=picture("JPEG"))))
        media_id = sent.message.content.media.media_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await globex.send(content=c.Content(media=c.MediaContent(media_id=media_id)))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert media_id not in (caught.value.details() or "")


async def test_private_addresses_are_refused_by_default(media_site: str) -> None:
    fetcher = HttpMediaFetcher(timeout_seconds=5)
    try:
        for url in (
            f"{media_site}/a.gif",
            media_site.replace("127.0.0.1", "localhost") + "/a.gif",  # a name, resolved
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/x",
            "http://10.1.2.3/x",
        ):
            with pytest.raises(MediaFetchError, match="the address is not public"):
                await fetcher.fetch(url, max_bytes=1024 * 1024)
    finally:
        await fetcher.close()
    allowed = HttpMediaFetcher(timeout_seconds=5, allow_private=True)
    try:
        assert (await allowed.fetch(f"{media_site}/moved", max_bytes=1024 * 1024)).startswith(
            b"GIF8"
        )
        with pytest.raises(MediaFetchError, match="larger than"):
            await allowed.fetch(f"{media_site}/huge", max_bytes=1024 * 1024)
    finally:
        await allowed.close()
