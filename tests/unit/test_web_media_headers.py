"""The gateway's media route headers: raster images inline, everything else an attachment."""

from __future__ import annotations

import pytest

from webhook_bridge.web.media import media_headers


def test_a_raster_image_is_shown_inline_privately_and_never_sniffed() -> None:
    headers = media_headers("image/png", "photo.png")
    assert headers["Content-Type"] == "image/png"
    assert headers["Cache-Control"].startswith("private, max-age=")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Disposition" not in headers


@pytest.mark.parametrize(
    ("mime_type", "file_name", "disposition"),
    [
        (
            "application/pdf",
            "invoice.pdf",
            "attachment; filename=\"invoice.pdf\"; filename*=UTF-8''invoice.pdf",
        ),
        # SVG can carry script: downloaded, not rendered.
        ("image/svg+xml", "x.svg", "attachment; filename=\"x.svg\"; filename*=UTF-8''x.svg"),
        # Quotes and non-ASCII cannot break out of the header's fallback name.
        (
            "text/plain",
            'a"b\u00e9.txt',
            "attachment; filename=\"a_b_.txt\"; filename*=UTF-8''a%22b%C3%A9.txt",
        ),
        ("", "", "attachment; filename=\"download\"; filename*=UTF-8''download"),
    ],
)
def test_anything_else_is_an_attachment(mime_type: str, file_name: str, disposition: str) -> None:
    headers = media_headers(mime_type, file_name)
    assert headers["Content-Disposition"] == disposition
    assert headers["Content-Type"] == (mime_type or "application/octet-stream")
