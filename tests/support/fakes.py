"""In-memory fakes of the service's own Protocols, for unit tests only."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from chat.v1 import common_pb2
from server.processors.media import MediaFetchError, NewMedia, StoredMedia


class MemoryMediaStore:
    """MediaStore kept in a dict; counts what it was asked to store."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, StoredMedia, bytes, str]] = {}
        self.puts = 0

    async def find(self, tenant_id: str, sha256: str) -> StoredMedia | None:
        for owner, stored, _, thumbnail_of in self.files.values():
            if owner == tenant_id and stored.sha256 == sha256 and not thumbnail_of:
                return stored
        return None

    async def get(self, tenant_id: str, media_id: str) -> tuple[StoredMedia, bytes] | None:
        found = self.files.get(media_id)
        if found is None or found[0] != tenant_id:
            return None
        return found[1], found[2]

    async def open_chunks(
        self, tenant_id: str, media_id: str, *, chunk_bytes: int
    ) -> tuple[StoredMedia, AsyncGenerator[bytes]] | None:
        found = await self.get(tenant_id, media_id)
        if found is None:
            return None
        stored, data = found

        async def read() -> AsyncGenerator[bytes]:
            for start in range(0, len(data), chunk_bytes):
                yield data[start : start + chunk_bytes]

        return stored, read()

    async def put(
        self, tenant_id: str, media: NewMedia, *, thumbnail: common_pb2.Thumbnail | None
    ) -> StoredMedia:
        self.puts += 1
        media_id = f"m{self.puts}"
        stored = StoredMedia(
            media_id=media_id,
            mime_type=media.mime_type,
            size_bytes=len(media.data),
            sha256=media.sha256,
            width=media.width,
            height=media.height,
            thumbnail=thumbnail,
        )
        self.files[media_id] = (tenant_id, stored, media.data, media.thumbnail_of)
        return stored


class StaticFetcher:
    """A MediaFetcher whose every URL fails, or answers the bytes it was given."""

    def __init__(self, body: bytes | None = None) -> None:
        self.body = body
        self.urls: list[str] = []

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        self.urls.append(url)
        if self.body is None:
            raise MediaFetchError("the server answered HTTP 404")
        if len(self.body) > max_bytes:
            raise MediaFetchError(f"larger than {max_bytes} bytes")
        return self.body
