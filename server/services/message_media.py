"""The stored media of a message, for callers that show it (the web widget above all)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from server.domain.errors import FailedPrecondition, NotFound
from server.processors.media import StoredMedia
from server.services.ports import MessageRepository

#: Bytes per streamed chunk: well under gRPC's 4 MiB message limit, small enough to keep a
#: slow reader from holding many of them in flight.
CHUNK_BYTES = 64 * 1024


class MediaReader(Protocol):
    """Stored media bytes read in pieces, scoped by tenant."""

    async def open_chunks(
        self, tenant_id: str, media_id: str, *, chunk_bytes: int
    ) -> tuple[StoredMedia, AsyncGenerator[bytes]] | None:
        """The media and its bytes in pieces of at most ``chunk_bytes``; None when the
        tenant has no such media."""
        ...


@dataclass(frozen=True, slots=True)
class MessageMedia:
    """A message's media: what a browser needs to show it, and its bytes in chunks."""

    mime_type: str
    file_name: str
    size_bytes: int
    chunks: AsyncGenerator[bytes]


class MessageMediaService:
    """Reads a message's media from the store, within one tenant and one conversation."""

    def __init__(self, *, messages: MessageRepository, media: MediaReader) -> None:
        self._messages = messages
        self._media = media

    async def get(self, tenant_id: str, conversation_id: str, message_id: str) -> MessageMedia:
        """NOT_FOUND unless the message is in this conversation of this tenant;
        FAILED_PRECONDITION (MESSAGE_HAS_NO_MEDIA) unless it carries stored media."""
        message = await self._messages.get(tenant_id, message_id)
        if message is None or message.conversation_id != conversation_id:
            # A message of another conversation reads as missing: ids never prove existence.
            raise NotFound("message not found", reason="MESSAGE_NOT_FOUND")
        content = message.content
        if content.WhichOneof("kind") != "media" or content.media.WhichOneof("source") != (
            "media_id"
        ):
            raise FailedPrecondition(
                "the message carries no stored media", reason="MESSAGE_HAS_NO_MEDIA"
            )
        found = await self._media.open_chunks(
            tenant_id, content.media.media_id, chunk_bytes=CHUNK_BYTES
        )
        if found is None:
            raise FailedPrecondition(
                "the message's media is no longer stored", reason="MESSAGE_HAS_NO_MEDIA"
            )
        stored, chunks = found
        return MessageMedia(
            mime_type=stored.mime_type,
            file_name=content.media.file_name,
            size_bytes=stored.size_bytes,
            chunks=chunks,
        )
