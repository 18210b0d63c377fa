"""Files a platform user sends (the page's image, or its sample) held where the service
fetches them, the way each platform serves its users' media."""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field

from aiohttp import web

from devstack.sandbox.panel import show

MAX_BYTES = 5 * 1024 * 1024
#: Files kept (the oldest go first): the service fetches a file within seconds of its webhook.
MAX_FILES = 200
#: And their bytes in all (200 files of 5 MiB would be 1 GiB).
MAX_TOTAL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoredMedia:
    media_id: str
    data: bytes
    mime_type: str
    file_name: str


@dataclass
class MediaStore:
    files: dict[str, StoredMedia] = field(default_factory=dict)
    total_bytes: int = 0

    def put(self, data: bytes, mime_type: str, file_name: str) -> StoredMedia:
        if len(data) > MAX_BYTES:
            raise ValueError(f"the file is over {MAX_BYTES // (1024 * 1024)} MiB")
        stored = StoredMedia(f"sbx{uuid.uuid4().hex[:16]}", data, mime_type, file_name)
        self.files[stored.media_id] = stored
        self.total_bytes += len(data)
        while len(self.files) > MAX_FILES or self.total_bytes > MAX_TOTAL_BYTES:
            self.total_bytes -= len(self.files.pop(next(iter(self.files))).data)
        return stored

    def add_routes(self, app: web.Application) -> None:
        async def download(request: web.Request) -> web.Response:
            show(request, "media")
            stored = self.files.get(request.match_info["media_id"])
            if stored is None:
                return web.json_response({"error": "no such media"}, status=404)
            return web.Response(body=stored.data, content_type=stored.mime_type)

        app.router.add_get("/media/{media_id}", download)


def sample_png(size: int = 96) -> bytes:
    """A small picture (a diagonal gradient), so the page can send an image without a file."""
    rows = b"".join(
        b"\x00" + bytes(c for x in range(size) for c in (40 + x * 2, 120 + y, 200 - x))
        for y in range(size)
    )

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
