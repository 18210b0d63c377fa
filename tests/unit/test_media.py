"""Media processing: sniffing, channel limits, conversion, thumbnails, storage by content."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

import pytest
from PIL import Image

from chat.v1 import common_pb2 as c
from server.domain.errors import InvalidArgument, NotFound
from server.processors.media import MediaProcessor, ProcessedMedia
from server.processors.sniff import sniff_mime
from tests.support.fakes import MemoryMediaStore, StaticFetcher

WEB, WHATSAPP, MESSENGER = c.CHANNEL_TYPE_WEB, c.CHANNEL_TYPE_WHATSAPP, c.CHANNEL_TYPE_MESSENGER


def image_bytes(fmt: str, size: tuple[int, int] = (640, 480), mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (200, 30, 30, 128)[: len(mode)]).save(out, format=fmt)
    return out.getvalue()


def noise_png(edge: int) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (edge, edge), bytes(range(256)) * (edge * edge * 3 // 256 + 1)).save(
        out, format="PNG", compress_level=0
    )
    return out.getvalue()


def docx_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<document/>")
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG claiming a huge size, with almost no pixel data (a decompression bomb)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "mime"),
    [
        (b"\xff\xd8\xff\xe0rest", "image/jpeg"),
        (b"\x89PNG\r\n\x1a\nrest", "image/png"),
        (b"GIF89a....", "image/gif"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio/wav"),
        (b"%PDF-1.7\n", "application/pdf"),
        (b"\x00\x00\x00\x18ftypmp42", "video/mp4"),
        (b"\x00\x00\x00\x18ftypM4A ", "audio/mp4"),
        (b"\x00\x00\x00\x18ftyp3gp5", "video/3gpp"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"ID3\x04\x00", "audio/mpeg"),
        (b"\xff\xfb\x90\x00", "audio/mpeg"),
        (b"#!AMR\n", "audio/amr"),
        (b"\x1a\x45\xdf\xa3\x9f", "video/webm"),
        ("plain text, café".encode(), "text/plain"),
        (b"MZ\x90\x00\x03\x00\x00\x00\x04\x00", None),  # a Windows executable
        (b"\x7fELF\x02\x01\x01\x00\x00", None),
        (b"", None),
    ],
)
def test_sniffing(data: bytes, mime: str | None) -> None:
    assert sniff_mime(data) == mime


def test_office_documents_are_told_apart_from_other_zips() -> None:
    assert sniff_mime(docx_bytes()).endswith("wordprocessingml.document")  # type: ignore[union-attr]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("notes.txt", "x")
    assert sniff_mime(out.getvalue()) == "application/zip"


def test_utf8_cut_by_the_sample_is_still_text() -> None:
    body = "é".encode() * 40_000  # the 64 KiB sample ends inside a character
    assert sniff_mime(body) == "text/plain"


@pytest.fixture
def store() -> MemoryMediaStore:
    return MemoryMediaStore()


@pytest.fixture
def media(store: MemoryMediaStore) -> MediaProcessor:
    return MediaProcessor(store=store, fetcher=StaticFetcher())


async def process(
    media: MediaProcessor, content: c.MediaContent, channel: int = WEB, tenant: str = "t1"
) -> ProcessedMedia:
    return await media.process(tenant, content, channel=channel, field="content.media")


async def refused(media: MediaProcessor, content: c.MediaContent, channel: int = WEB) -> str:
    with pytest.raises(InvalidArgument) as caught:
        await process(media, content, channel)
    [violation] = caught.value.field_violations
    return f"{violation.field}: {violation.description}"


async def test_an_image_is_stored_with_its_size_and_a_thumbnail(
    media: MediaProcessor, store: MemoryMediaStore
) -> None:
    data = image_bytes("JPEG", (1280, 640))
    result = await process(media, c.MediaContent(data=data, mime_type="image/jpg", caption="hi"))
    assert result.type == c.MESSAGE_TYPE_IMAGE
    stored = result.content
    assert (stored.mime_type, stored.size_bytes, stored.width, stored.height) == (
        "image/jpeg",
        len(data),
        1280,
        640,
    )
    assert stored.caption == "hi"
    assert stored.WhichOneof("source") == "media_id"
    assert (stored.thumbnail.width, stored.thumbnail.height) == (320, 160)
    assert stored.thumbnail.mime_type == "image/jpeg"
    thumbnail = store.files[stored.thumbnail.media_id][2]
    assert Image.open(io.BytesIO(thumbnail)).size == (320, 160)
    assert store.files[stored.media_id][2] == data  # accepted as it is: no re-encoding
    assert result.metadata == {"declared_mime_type": "image/jpg"}


async def test_the_same_bytes_are_stored_once_per_tenant(
    media: MediaProcessor, store: MemoryMediaStore
) -> None:
    data = image_bytes("PNG")
    first = await process(media, c.MediaContent(data=data))
    second = await process(media, c.MediaContent(data=data))
    assert first.content.media_id == second.content.media_id
    assert store.puts == 2  # the image and its thumbnail, once
    other = await process(media, c.MediaContent(data=data), tenant="t2")
    assert other.content.media_id != first.content.media_id


async def test_stored_media_is_reused_by_id_within_its_tenant_only(media: MediaProcessor) -> None:
    first = await process(media, c.MediaContent(data=b"%PDF-1.4\nreport", file_name="r.pdf"))
    assert first.type == c.MESSAGE_TYPE_DOCUMENT
    again = await process(media, c.MediaContent(media_id=first.content.media_id))
    assert again.content.media_id == first.content.media_id
    assert again.content.mime_type == "application/pdf"
    with pytest.raises(NotFound):
        await process(media, c.MediaContent(media_id=first.content.media_id), tenant="t2")
    with pytest.raises(NotFound):
        await process(media, c.MediaContent(media_id="not-an-id"))


async def test_a_webp_image_is_converted_for_whatsapp(
    media: MediaProcessor, store: MemoryMediaStore
) -> None:
    result = await process(media, c.MediaContent(data=image_bytes("WEBP")), WHATSAPP)
    assert result.content.mime_type == "image/jpeg"
    assert Image.open(io.BytesIO(store.files[result.content.media_id][2])).format == "JPEG"
    kept = await process(media, c.MediaContent(data=image_bytes("WEBP")), WEB)
    assert kept.content.mime_type == "image/webp"


async def test_transparency_survives_conversion(media: MediaProcessor) -> None:
    result = await process(media, c.MediaContent(data=image_bytes("WEBP", mode="RGBA")), WHATSAPP)
    assert result.content.mime_type == "image/png"
    assert result.content.thumbnail.mime_type == "image/png"


async def test_an_image_over_the_channel_limit_is_reencoded(
    media: MediaProcessor, store: MemoryMediaStore
) -> None:
    data = noise_png(1400)  # about 5.9 MB: over WhatsApp's 5 MB, under the web's 20 MiB
    assert len(data) > 5 * 1024 * 1024
    result = await process(media, c.MediaContent(data=data), WHATSAPP)
    assert result.content.mime_type == "image/jpeg"
    assert result.content.size_bytes <= 5 * 1024 * 1024
    assert len(store.files[result.content.media_id][2]) == result.content.size_bytes
    web = await process(media, c.MediaContent(data=data), WEB)
    assert web.content.mime_type == "image/png"
    assert web.content.size_bytes == len(data)


@pytest.mark.parametrize(
    ("content", "channel", "expected"),
    [
        (c.MediaContent(data=b"MZ\x90\x00binary"), WEB, "no supported media type"),
        (c.MediaContent(data=b""), WEB, "is empty"),
        (c.MediaContent(data=b"%PDF-1.4", mime_type="image/png"), WEB, "bytes are application/pdf"),
        (
            c.MediaContent(data=b"\x1a\x45\xdf\xa3\x9f webm"),
            WHATSAPP,
            "video/webm cannot be sent on whatsapp",
        ),
        (c.MediaContent(data=b"\x89PNG\r\n\x1a\nbroken"), WEB, "not a readable image/png image"),
        (c.MediaContent(data=png_header_only(20_000, 20_000)), WEB, "at most 40000000 pixels"),
        (c.MediaContent(data=b"x" * (20 * 1024 * 1024 + 1)), WEB, "at most 20 MiB"),
        (c.MediaContent(data=b"%PDF-", file_name="../etc/passwd"), WEB, "without / \\ or NUL"),
        (c.MediaContent(data=b"%PDF-", caption="x" * 1025), WEB, "at most 1024 characters"),
        (c.MediaContent(url="file:///etc/passwd"), WEB, "an http(s) URL"),
        (c.MediaContent(url="https://media.test/a.png"), WEB, "HTTP 404"),
        (c.MediaContent(), WEB, "set exactly one of"),
    ],
)
async def test_bad_media_is_refused_and_nothing_is_stored(
    media: MediaProcessor,
    store: MemoryMediaStore,
    content: c.MediaContent,
    channel: int,
    expected: str,
) -> None:
    assert expected in await refused(media, content, channel)
    assert store.puts == 0


async def test_media_from_a_url_goes_through_the_same_checks(store: MemoryMediaStore) -> None:
    fetcher = StaticFetcher(image_bytes("GIF"))
    media = MediaProcessor(store=store, fetcher=fetcher)
    result = await process(media, c.MediaContent(url="https://media.test/a.gif"), WHATSAPP)
    assert fetcher.urls == ["https://media.test/a.gif"]
    assert result.content.mime_type == "image/jpeg"  # WhatsApp takes no GIF
    assert result.content.WhichOneof("source") == "media_id"


async def test_a_platform_reference_is_kept_unverified(media: MediaProcessor) -> None:
    result = await process(
        media, c.MediaContent(platform_media_id="wamid.123", mime_type="Audio/OGG"), WHATSAPP
    )
    assert result.type == c.MESSAGE_TYPE_AUDIO
    assert result.content.platform_media_id == "wamid.123"
    assert result.content.mime_type == "audio/ogg"
    assert result.metadata == {"media_verified": "false"}
