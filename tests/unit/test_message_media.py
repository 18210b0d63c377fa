"""MessageMediaService over in-memory stores: which message's media may be read, and how the
bytes are cut into chunks."""

from __future__ import annotations

import hashlib

import grpc
import pytest

from chat.v1 import common_pb2
from server.domain.errors import DomainError
from server.processors.media import NewMedia
from server.services.message_media import CHUNK_BYTES, MessageMediaService
from tests.support.fakes import MemoryMediaStore
from tests.support.memory_conversations import MemoryMessages
from tests.support.memory_db import Database


async def _service() -> tuple[MessageMediaService, MemoryMessages, bytes]:
    messages, store = MemoryMessages(Database()), MemoryMediaStore()
    data = bytes(range(256)) * 600  # 150 KiB: three chunks
    stored = await store.put(
        "acme",
        NewMedia(
            data=data,
            mime_type="application/pdf",
            sha256=hashlib.sha256(data).hexdigest(),
            file_name="invoice.pdf",
        ),
        thumbnail=None,
    )
    media = common_pb2.MediaContent(media_id=stored.media_id, file_name="invoice.pdf")
    messages.add(
        "acme",
        common_pb2.Message(id="m-media", conversation_id="c-1", content={"media": media}),
    )
    messages.add(
        "acme",
        common_pb2.Message(id="m-text", conversation_id="c-1", content={"text": {"text": "hi"}}),
    )
    url = common_pb2.MediaContent(url="https://example.com/x.png")
    messages.add(
        "acme", common_pb2.Message(id="m-url", conversation_id="c-1", content={"media": url})
    )
    gone = common_pb2.MediaContent(media_id="never-stored")
    messages.add(
        "acme", common_pb2.Message(id="m-gone", conversation_id="c-1", content={"media": gone})
    )
    return MessageMediaService(messages=messages, media=store), messages, data


async def test_a_messages_media_comes_back_whole_with_its_type_and_name() -> None:
    service, _, data = await _service()
    media = await service.get("acme", "c-1", "m-media")
    assert (media.mime_type, media.file_name, media.size_bytes) == (
        "application/pdf",
        "invoice.pdf",
        len(data),
    )
    chunks = [chunk async for chunk in media.chunks]
    assert [len(c) for c in chunks] == [CHUNK_BYTES, CHUNK_BYTES, len(data) - 2 * CHUNK_BYTES]
    assert b"".join(chunks) == data


@pytest.mark.parametrize(
    ("tenant", "conversation", "message"),
    [
        ("globex", "c-1", "m-media"),  # another tenant's
        ("acme", "c-2", "m-media"),  # named through another conversation
        ("acme", "c-1", "missing"),
    ],
)
async def test_anything_but_the_message_in_its_conversation_is_not_found(
    tenant: str, conversation: str, message: str
) -> None:
    service, _, _ = await _service()
    with pytest.raises(DomainError) as refused:
        await service.get(tenant, conversation, message)
    assert refused.value.code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("message", ["m-text", "m-url", "m-gone"])
async def test_a_message_without_stored_media_is_a_failed_precondition(message: str) -> None:
    service, _, _ = await _service()
    with pytest.raises(DomainError) as refused:
        await service.get("acme", "c-1", message)
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.reason == "MESSAGE_HAS_NO_MEDIA"
