"""Media: sniff the real type from the bytes, enforce the channel's types and sizes, convert
images a channel cannot take, make thumbnails, and store the bytes (content-addressed per
tenant, so a retried upload reuses what is stored; two identical uploads at the very same
moment may both be stored, which costs space and nothing else).

Image work runs in a thread: decoding a 20 MiB picture would otherwise hold the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from PIL import Image, UnidentifiedImageError

from chat.v1 import common_pb2
from server.domain.errors import FieldViolation, InvalidArgument, NotFound
from server.processors.sniff import sniff_mime

MiB = 1024 * 1024
#: The largest media accepted through this API (the request limit leaves room for the rest).
MAX_MEDIA_BYTES = 20 * MiB
MAX_CAPTION_CHARS = 1024
MAX_FILE_NAME_CHARS = 255
MAX_REFERENCE_CHARS = 2048
#: Larger images are refused before they are decoded (a small file can inflate enormously).
MAX_IMAGE_PIXELS = 40_000_000
THUMBNAIL_EDGE = 320
#: The longest edge a converted image is scaled down to when it is still over a size limit.
DOWNSCALE_EDGE = 2048

_JPEG, _PNG, _GIF, _WEBP = "image/jpeg", "image/png", "image/gif", "image/webp"
_DOCUMENTS = (
    "application/pdf",
    "text/plain",
    "application/msword",
    "application/zip",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation",
)
_AUDIO = ("audio/mpeg", "audio/mp4", "audio/ogg", "audio/aac", "audio/amr", "audio/wav")
_VIDEO = ("video/mp4", "video/3gpp", "video/webm", "video/quicktime")


def _limits(size: int, *types: str) -> dict[str, int]:
    return dict.fromkeys(types, size)


#: What each channel takes: MIME type -> the largest size in bytes. Figures from each
#: platform's send API documentation, capped at MAX_MEDIA_BYTES. An image type missing
#: here is converted to JPEG (PNG when it has transparency) when the channel takes those.
CHANNEL_MEDIA: Mapping[int, Mapping[str, int]] = {
    common_pb2.CHANNEL_TYPE_WEB: _limits(
        MAX_MEDIA_BYTES, _JPEG, _PNG, _GIF, _WEBP, *_AUDIO, *_VIDEO, *_DOCUMENTS
    ),
    # WhatsApp Cloud API: images 5 MB (JPEG, PNG); audio and video 16 MB; documents 100 MB.
    common_pb2.CHANNEL_TYPE_WHATSAPP: {
        **_limits(5 * MiB, _JPEG, _PNG),
        **_limits(16 * MiB, "audio/aac", "audio/amr", "audio/mpeg", "audio/mp4", "audio/ogg"),
        **_limits(16 * MiB, "video/mp4", "video/3gpp"),
        **_limits(MAX_MEDIA_BYTES, *_DOCUMENTS),
    },
    # Slack files: any type, far larger than this API's own limit.
    common_pb2.CHANNEL_TYPE_SLACK: _limits(
        MAX_MEDIA_BYTES, _JPEG, _PNG, _GIF, _WEBP, *_AUDIO, *_VIDEO, *_DOCUMENTS
    ),
    # Teams (Bot Framework attachments): JPEG, PNG and GIF images, files by link.
    common_pb2.CHANNEL_TYPE_TEAMS: _limits(
        MAX_MEDIA_BYTES, _JPEG, _PNG, _GIF, *_AUDIO, "video/mp4", *_DOCUMENTS
    ),
    # Messenger Send API: attachments up to 25 MB; images 8 MB (JPEG, PNG, GIF).
    common_pb2.CHANNEL_TYPE_MESSENGER: {
        **_limits(8 * MiB, _JPEG, _PNG, _GIF),
        **_limits(MAX_MEDIA_BYTES, "audio/mpeg", "audio/mp4", "audio/aac", "audio/wav"),
        **_limits(MAX_MEDIA_BYTES, "video/mp4", "video/quicktime"),
        **_limits(MAX_MEDIA_BYTES, *_DOCUMENTS),
    },
}


def message_type(mime: str) -> common_pb2.MessageType.ValueType:
    """The message type media of this MIME type makes."""
    family = mime.partition("/")[0]
    if family == "image":
        return common_pb2.MESSAGE_TYPE_IMAGE
    if family == "audio":
        return common_pb2.MESSAGE_TYPE_AUDIO
    if family == "video":
        return common_pb2.MESSAGE_TYPE_VIDEO
    return common_pb2.MESSAGE_TYPE_DOCUMENT


@dataclass(frozen=True, slots=True)
class StoredMedia:
    """Media as stored: what MediaContent reports about it."""

    media_id: str
    mime_type: str
    size_bytes: int
    sha256: str
    width: int = 0
    height: int = 0
    thumbnail: common_pb2.Thumbnail | None = None


@dataclass(frozen=True, slots=True)
class NewMedia:
    """Bytes to store, with what is known about them."""

    data: bytes
    mime_type: str
    sha256: str
    file_name: str
    width: int = 0
    height: int = 0
    #: For a thumbnail: the sha256 of the image it previews.
    thumbnail_of: str = ""


class MediaStore(Protocol):
    """Stored media bytes, scoped by tenant."""

    async def find(self, tenant_id: str, sha256: str) -> StoredMedia | None:
        """Media of this tenant with these bytes, if stored (thumbnails excluded)."""
        ...

    async def get(self, tenant_id: str, media_id: str) -> tuple[StoredMedia, bytes] | None:
        """The media and its bytes; None when the tenant has no such media."""
        ...

    async def put(
        self, tenant_id: str, media: NewMedia, *, thumbnail: common_pb2.Thumbnail | None
    ) -> StoredMedia:
        """Store the bytes."""
        ...


class MediaFetchError(Exception):
    """A URL could not be fetched; the message says why, fit for the caller to read."""


class MediaFetcher(Protocol):
    """Downloads media a client named by URL."""

    async def fetch(self, url: str, *, max_bytes: int) -> bytes:
        """The bytes; MediaFetchError when the URL cannot be fetched or is too large."""
        ...


@dataclass(slots=True)
class ProcessedMedia:
    """Media ready to put in a message."""

    content: common_pb2.MediaContent
    type: common_pb2.MessageType.ValueType
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Image:
    data: bytes
    mime_type: str
    width: int
    height: int
    thumbnail: bytes
    thumbnail_mime: str
    thumbnail_width: int
    thumbnail_height: int


class _RefusedError(ValueError):
    """An image cannot be used; the message says why."""


class MediaProcessor:
    """Turns MediaContent from a request into stored, channel-ready media."""

    def __init__(self, *, store: MediaStore, fetcher: MediaFetcher, image_workers: int = 2) -> None:
        self._store = store
        self._fetcher = fetcher
        # Decoding a 40-megapixel image takes a few hundred MB: a few at a time, not 32.
        self._image_slots = asyncio.Semaphore(image_workers)

    async def process(
        self,
        tenant_id: str,
        media: common_pb2.MediaContent,
        *,
        channel: int,
        field: str,
    ) -> ProcessedMedia:
        """Validate, convert and store ``media`` for ``channel``; ``field`` names it in errors."""
        violations = _check_text_fields(media, field)
        source = media.WhichOneof("source")
        if source is None:
            violations.append(
                FieldViolation(field, "set exactly one of data, url, media_id, platform_media_id")
            )
        if violations:
            raise InvalidArgument("media is invalid", field_violations=violations)
        if source == "platform_media_id":
            return _platform_reference(media, field)
        if source == "data":
            data = media.data
        elif source == "url":
            url = _checked_url(media.url, f"{field}.url")
            try:
                data = await self._fetcher.fetch(url, max_bytes=MAX_MEDIA_BYTES)
            except MediaFetchError as exc:
                raise InvalidArgument(
                    "media could not be fetched",
                    field_violations=[FieldViolation(f"{field}.url", str(exc))],
                    reason="MEDIA_FETCH_FAILED",
                ) from None
        else:
            found = await self._store.get(tenant_id, media.media_id)
            if found is None:
                raise NotFound("media not found", reason="MEDIA_NOT_FOUND")
            data = found[1]
        return await self._from_bytes(tenant_id, data, media, channel, f"{field}.{source}")

    async def _from_bytes(
        self,
        tenant_id: str,
        data: bytes,
        media: common_pb2.MediaContent,
        channel: int,
        field: str,
    ) -> ProcessedMedia:
        def refuse(description: str) -> InvalidArgument:
            return InvalidArgument(
                "media is not accepted",
                field_violations=[FieldViolation(field, description)],
                reason="MEDIA_NOT_ACCEPTED",
            )

        if not data:
            raise refuse("is empty")
        if len(data) > MAX_MEDIA_BYTES:
            raise refuse(f"at most {MAX_MEDIA_BYTES // MiB} MiB")
        mime = sniff_mime(data)
        if mime is None:
            raise refuse("the bytes are no supported media type")
        declared = media.mime_type.strip().lower()
        if declared not in ("", "application/octet-stream") and (
            declared.partition("/")[0] != mime.partition("/")[0]
        ):
            raise refuse(f"declared {declared[:100]}, but the bytes are {mime}")
        accepted = CHANNEL_MEDIA[channel]
        image: _Image | None = None
        if mime.startswith("image/"):
            try:
                async with self._image_slots:
                    image = await asyncio.to_thread(_prepare_image, data, mime, accepted)
            except _RefusedError as exc:
                raise refuse(str(exc)) from None
            data, mime = image.data, image.mime_type
        limit = accepted.get(mime)
        if limit is None:
            raise refuse(f"{mime} cannot be sent on {_channel_name(channel)}")
        if len(data) > limit:
            raise refuse(f"{mime} on {_channel_name(channel)}: at most {limit // MiB} MiB")
        sha256 = hashlib.sha256(data).hexdigest()
        stored = await self._store.find(tenant_id, sha256)
        if stored is None:
            stored = await self._store_new(
                tenant_id,
                NewMedia(
                    data=data,
                    mime_type=mime,
                    sha256=sha256,
                    file_name=media.file_name,
                    width=image.width if image else 0,
                    height=image.height if image else 0,
                ),
                image=image,
            )
        content = common_pb2.MediaContent(
            media_id=stored.media_id,
            mime_type=stored.mime_type,
            size_bytes=stored.size_bytes,
            caption=media.caption,
            file_name=media.file_name,
            sha256=stored.sha256,
            width=stored.width,
            height=stored.height,
        )
        if stored.thumbnail is not None:
            content.thumbnail.CopyFrom(stored.thumbnail)
        metadata = {"declared_mime_type": declared} if declared and declared != mime else {}
        return ProcessedMedia(content=content, type=message_type(mime), metadata=metadata)

    async def _store_new(
        self, tenant_id: str, new: NewMedia, *, image: _Image | None
    ) -> StoredMedia:
        """Store the thumbnail first, so the media that names it never names nothing."""
        thumbnail = None
        if image is not None:
            stored_thumbnail = await self._store.put(
                tenant_id,
                NewMedia(
                    data=image.thumbnail,
                    mime_type=image.thumbnail_mime,
                    sha256=hashlib.sha256(image.thumbnail).hexdigest(),
                    file_name="thumbnail",
                    width=image.thumbnail_width,
                    height=image.thumbnail_height,
                    thumbnail_of=new.sha256,
                ),
                thumbnail=None,
            )
            thumbnail = common_pb2.Thumbnail(
                media_id=stored_thumbnail.media_id,
                mime_type=image.thumbnail_mime,
                width=image.thumbnail_width,
                height=image.thumbnail_height,
            )
        return await self._store.put(tenant_id, new, thumbnail=thumbnail)


def _check_text_fields(media: common_pb2.MediaContent, field: str) -> list[FieldViolation]:
    violations = []
    if len(media.caption) > MAX_CAPTION_CHARS:
        violations.append(
            FieldViolation(f"{field}.caption", f"at most {MAX_CAPTION_CHARS} characters")
        )
    if len(media.file_name) > MAX_FILE_NAME_CHARS or any(c in media.file_name for c in "/\\\x00"):
        violations.append(
            FieldViolation(
                f"{field}.file_name",
                f"at most {MAX_FILE_NAME_CHARS} characters, without / \\ or NUL",
            )
        )
    if len(media.mime_type) > 255:
        violations.append(FieldViolation(f"{field}.mime_type", "at most 255 characters"))
    return violations


def _checked_url(url: str, field: str) -> str:
    if len(url) > MAX_REFERENCE_CHARS or not url.lower().startswith(("https://", "http://")):
        raise InvalidArgument(
            "media is invalid",
            field_violations=[
                FieldViolation(field, f"an http(s) URL of at most {MAX_REFERENCE_CHARS} characters")
            ],
        )
    return url


def _platform_reference(media: common_pb2.MediaContent, field: str) -> ProcessedMedia:
    """A platform's media id: the bytes are fetched later, so the declared type is all there
    is; the message says so in its metadata."""
    reference = media.platform_media_id
    if not reference or len(reference) > MAX_REFERENCE_CHARS:
        raise InvalidArgument(
            "media is invalid",
            field_violations=[
                FieldViolation(
                    f"{field}.platform_media_id", f"1 to {MAX_REFERENCE_CHARS} characters"
                )
            ],
        )
    content = common_pb2.MediaContent()
    content.CopyFrom(media)
    content.mime_type = media.mime_type.strip().lower()
    return ProcessedMedia(
        content=content,
        type=message_type(content.mime_type),
        metadata={"media_verified": "false"},
    )


def _channel_name(channel: int) -> str:
    return common_pb2.ChannelType.Name(channel).removeprefix("CHANNEL_TYPE_").lower()  # type: ignore[arg-type]


def _prepare_image(data: bytes, mime: str, accepted: Mapping[str, int]) -> _Image:
    """Decode, convert when the channel cannot take the format or size, and thumbnail."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            # Not closed early: closing frees the pixels (the bytes are in memory anyway).
            picture: Image.Image = Image.open(io.BytesIO(data))
            width, height = picture.size
            if width * height > MAX_IMAGE_PIXELS:
                raise _RefusedError(f"at most {MAX_IMAGE_PIXELS} pixels")
            picture.load()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            if isinstance(exc, _RefusedError):
                raise
            raise _RefusedError(f"is not a readable {mime} image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _RefusedError(f"at most {MAX_IMAGE_PIXELS} pixels") from None
    transparent = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
    limit = accepted.get(mime)
    if limit is None or len(data) > limit:
        target = _PNG if transparent and _PNG in accepted else _JPEG
        if target not in accepted:
            raise _RefusedError(f"{mime} cannot be sent on this channel")
        data = _encode(picture, target)
        if len(data) > accepted[target]:
            smaller = picture.copy()
            smaller.thumbnail((DOWNSCALE_EDGE, DOWNSCALE_EDGE))
            data = _encode(smaller, target)
            picture = smaller
        mime = target
        width, height = picture.size
    thumbnail = picture.copy()
    thumbnail.thumbnail((THUMBNAIL_EDGE, THUMBNAIL_EDGE))
    thumbnail_mime = _PNG if transparent else _JPEG
    return _Image(
        data=data,
        mime_type=mime,
        width=width,
        height=height,
        thumbnail=_encode(thumbnail, thumbnail_mime),
        thumbnail_mime=thumbnail_mime,
        thumbnail_width=thumbnail.width,
        thumbnail_height=thumbnail.height,
    )


def _encode(picture: Image.Image, mime: str) -> bytes:
    out = io.BytesIO()
    if mime == _PNG:
        picture.convert("RGBA").save(out, format="PNG", optimize=True)
    else:
        picture.convert("RGB").save(out, format="JPEG", quality=85, optimize=True)
    return out.getvalue()
