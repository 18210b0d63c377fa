"""Tells a file's real type from its first bytes (magic numbers), never from its name or the
type a client declared. Types not listed here are unknown and refused upstream."""

from __future__ import annotations

import struct

_FTYP_BRANDS = {
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
    b"3gp6": "video/3gpp",
    b"3g2a": "video/3gpp",
    b"qt  ": "video/quicktime",
}
_OOXML = (
    ("word/", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
    ("xl/", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    ("ppt/", "application/vnd.openxmlformats-officedocument.presentationml.presentation"),
)
_TEXT_SAMPLE = 64 * 1024
#: Office files name their part folders within the first few entries.
_ZIP_ENTRIES_READ = 16


#: Signatures that are a fixed prefix.
_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"%PDF-", "application/pdf"),
    (b"OggS", "audio/ogg"),
    (b"#!AMR", "audio/amr"),
    (b"ID3", "audio/mpeg"),
    (b"\xff\xf1", "audio/aac"),
    (b"\xff\xf9", "audio/aac"),
    (b"\x1a\x45\xdf\xa3", "video/webm"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "application/msword"),
)
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav"}
#: Sizes of the BMP info headers Pillow reads (after the 14-byte file header).
_BMP_HEADERS = (12, 40, 56, 108, 124)


def sniff_mime(data: bytes) -> str | None:  # noqa: PLR0911 - a return per signature kind
    """The MIME type the bytes are, or None when they are nothing this service accepts."""
    head = data[:64]
    for prefix, mime in _PREFIXES:
        if head.startswith(prefix):
            return mime
    if head.startswith(b"RIFF") and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head.startswith(b"BM") and len(head) >= 26 and head[14] in _BMP_HEADERS:
        return "image/bmp"
    # MPEG audio without an ID3 tag starts with a frame sync (11 set bits, layer III).
    if len(head) > 1 and head[0] == 0xFF and head[1] & 0xF6 == 0xF2:
        return "audio/mpeg"
    if head.startswith(b"PK\x03\x04"):
        return _office_zip(data)
    if _is_text(data[:_TEXT_SAMPLE]):
        return "text/plain"
    return None


def _office_zip(data: bytes) -> str:
    """Tell Word, Excel and PowerPoint files from other zips by the names of their first
    entries, read from the local file headers: bounded work, whatever the archive holds (the
    central directory of a crafted zip can list hundreds of thousands of entries)."""
    offset = 0
    for _ in range(_ZIP_ENTRIES_READ):
        if data[offset : offset + 4] != b"PK\x03\x04" or len(data) < offset + 30:
            break
        flags, _method, _time, _date, _crc, compressed, _size, name_length, extra_length = (
            struct.unpack_from("<HHHHIIIHH", data, offset + 6)
        )
        name = data[offset + 30 : offset + 30 + name_length].decode("utf-8", "replace")
        for prefix, mime in _OOXML:
            if name.startswith(prefix):
                return mime
        if flags & 0x08:
            break  # sizes follow the data: the next header cannot be found cheaply
        offset += 30 + name_length + extra_length + compressed
    return "application/zip"


def _is_text(sample: bytes) -> bool:
    if not sample or b"\x00" in sample:
        return False
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sample's end is still text.
        return exc.start >= len(sample) - 3 and exc.reason == "unexpected end of data"
    return True
