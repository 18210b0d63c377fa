"""Media bytes in GridFS (bucket ``media``), scoped by tenant, addressed by content.

GridFS writes cannot join a transaction, so media are stored before the message that names
them is committed. When that commit fails, the bytes stay (a retry finds and reuses them by
their hash); deleting them could pull them from under a concurrent message with the same bytes.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from gridfs import AsyncGridFSBucket, AsyncGridOut
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from server.processors.media import NewMedia, StoredMedia
from server.repositories.mongo import MEDIA_BUCKET, MEDIA_FILES, Document


class GridFsMediaStore:
    """Media of every tenant; each call names one."""

    def __init__(self, *, database: AsyncDatabase[Document]) -> None:
        self._bucket = AsyncGridFSBucket(database, bucket_name=MEDIA_BUCKET)
        self._files = database[MEDIA_FILES]
        self._root = database[MEDIA_BUCKET]

    async def find(self, tenant_id: str, sha256: str) -> StoredMedia | None:
        document = await self._files.find_one(
            {
                "metadata.tenant_id": tenant_id,
                "metadata.sha256": sha256,
                "metadata.thumbnail_of": "",
            }
        )
        return None if document is None else _stored(document)

    async def get(self, tenant_id: str, media_id: str) -> tuple[StoredMedia, bytes] | None:
        opened = await self._open(tenant_id, media_id)
        if opened is None:
            return None
        stored, stream = opened
        return stored, await stream.read()

    async def open_chunks(
        self, tenant_id: str, media_id: str, *, chunk_bytes: int
    ) -> tuple[StoredMedia, AsyncGenerator[bytes]] | None:
        """The media and its bytes read in pieces of at most ``chunk_bytes`` (a large file is
        never held whole); None when the tenant has no such media."""
        opened = await self._open(tenant_id, media_id)
        if opened is None:
            return None
        stored, stream = opened

        async def read() -> AsyncGenerator[bytes]:
            try:
                while chunk := await stream.read(chunk_bytes):
                    yield chunk
            finally:
                await stream.close()

        return stored, read()

    async def _open(self, tenant_id: str, media_id: str) -> tuple[StoredMedia, AsyncGridOut] | None:
        """The tenant's media and a stream of its bytes; None when the tenant has none such."""
        object_id = _object_id(media_id)
        if object_id is None:
            return None
        document = await self._files.find_one({"_id": object_id, "metadata.tenant_id": tenant_id})
        if document is None:
            return None
        # Opened from the file document just read: the bucket's own open would read it again
        # by _id alone, a command that does not name the tenant.
        return _stored(document), AsyncGridOut(self._root, file_document=document)

    async def put(
        self, tenant_id: str, media: NewMedia, *, thumbnail: common_pb2.Thumbnail | None
    ) -> StoredMedia:
        metadata: dict[str, Any] = {
            "tenant_id": tenant_id,
            "sha256": media.sha256,
            "mime_type": media.mime_type,
            "width": media.width,
            "height": media.height,
            "thumbnail_of": media.thumbnail_of,
        }
        if thumbnail is not None:
            metadata["thumbnail"] = {
                "media_id": thumbnail.media_id,
                "mime_type": thumbnail.mime_type,
                "width": thumbnail.width,
                "height": thumbnail.height,
            }
        file_id = await self._bucket.upload_from_stream(
            media.file_name or media.sha256, media.data, metadata=metadata
        )
        return _stored({"_id": file_id, "length": len(media.data), "metadata": metadata})


def _object_id(media_id: str) -> ObjectId | None:
    try:
        return ObjectId(media_id)
    except (InvalidId, TypeError):
        return None


def _stored(document: Document) -> StoredMedia:
    metadata = document["metadata"]
    thumbnail = metadata.get("thumbnail")
    return StoredMedia(
        media_id=str(document["_id"]),
        mime_type=metadata["mime_type"],
        size_bytes=int(document["length"]),
        sha256=metadata["sha256"],
        width=int(metadata.get("width", 0)),
        height=int(metadata.get("height", 0)),
        thumbnail=common_pb2.Thumbnail(**thumbnail) if thumbnail else None,
    )
