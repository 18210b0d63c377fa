"""Uploads a visitor makes before sending them: checked as the media processor will (type
sniffed from the bytes, the web channel's types and sizes), held briefly in memory, and sent
as the bytes of the next send frame that names them.

Held in memory, bounded (per visitor and in all), rather than stored: an upload that is never
sent costs nothing once it expires, and a refused one is never stored at all. A bridge restart
forgets them: the send is then refused with UPLOAD_EXPIRED and the visitor uploads again.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from chat.v1 import common_pb2
from server.processors.media import CHANNEL_MEDIA
from server.processors.sniff import sniff_mime

UPLOAD_TTL_SECONDS = 900.0
MAX_UPLOADS_PER_VISITOR = 5
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_FILE_NAME_CHARS = 255


class UploadRefusedError(Exception):
    """An upload this gateway will not hold: the status and reason the client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Upload:
    """One held upload."""

    id: str
    visitor: str
    data: bytes
    mime_type: str
    file_name: str
    expires: float


def checked_type(data: bytes, max_bytes: int) -> str:
    """The sniffed MIME type of ``data`` if the web channel takes it at this size."""
    if not data:
        raise UploadRefusedError(400, "the file is empty")
    mime = sniff_mime(data)
    accepted = CHANNEL_MEDIA[common_pb2.CHANNEL_TYPE_WEB]
    if mime is None or mime not in accepted:
        raise UploadRefusedError(415, "this file type is not accepted")
    if len(data) > min(max_bytes, accepted[mime]):
        raise UploadRefusedError(
            413, f"the file is larger than {min(max_bytes, accepted[mime])} bytes"
        )
    return mime


class UploadStore:
    """Held uploads by id, each visitor's own."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._uploads: dict[str, Upload] = {}
        self._bytes = 0

    def put(self, visitor: str, data: bytes, mime_type: str, file_name: str) -> Upload:
        """Hold ``data`` for ``visitor``; refused past the per-visitor or total bound."""
        self._expire()
        mine = sum(1 for u in self._uploads.values() if u.visitor == visitor)
        if mine >= MAX_UPLOADS_PER_VISITOR:
            raise UploadRefusedError(429, "too many uploads not yet sent; send or wait")
        if self._bytes + len(data) > MAX_TOTAL_BYTES:
            raise UploadRefusedError(503, "the gateway holds too many uploads; retry later")
        upload = Upload(
            id="upload-" + secrets.token_hex(16),
            visitor=visitor,
            data=data,
            mime_type=mime_type,
            file_name="".join(c for c in file_name if c.isprintable())[:MAX_FILE_NAME_CHARS],
            expires=self._clock() + UPLOAD_TTL_SECONDS,
        )
        self._uploads[upload.id] = upload
        self._bytes += len(data)
        return upload

    def get(self, visitor: str, upload_id: str) -> Upload | None:
        """The visitor's upload (kept until it expires: a resend of the same frame finds it)."""
        self._expire()
        upload = self._uploads.get(upload_id)
        return upload if upload is not None and upload.visitor == visitor else None

    def _expire(self) -> None:
        now = self._clock()
        for upload in [u for u in self._uploads.values() if u.expires <= now]:
            del self._uploads[upload.id]
            self._bytes -= len(upload.data)
