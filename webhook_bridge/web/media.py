"""``GET /web/v1/{tenant}/media/{conversation_id}/{message_id}``: a message's media bytes for
the widget, fetched with the visitor's token (in the Authorization header: URLs end up in
logs) and streamed from the chat server, which holds the visitor to its own conversations."""

from __future__ import annotations

import contextlib
import re
from urllib.parse import quote

from aiohttp import web

from server.domain.tenant import Tenant, WebChannel
from webhook_bridge.web.chat import ChatCallError
from webhook_bridge.web.gateway import (
    WEB_STATE,
    Refused,
    allowed_origin,
    bearer_visitor,
    cors_headers,
)

#: Shown inline: raster images a browser renders without running anything. Everything else
#: (SVG included, which can carry script) is served as an attachment.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
#: The bytes of a stored message never change; a private cache may keep them a day.
CACHE_CONTROL = "private, max-age=86400"
_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_STATUS = {
    "NOT_FOUND": 404,
    "FAILED_PRECONDITION": 409,
    "INVALID_ARGUMENT": 400,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
}


async def message_media(
    request: web.Request, tenant: Tenant, channel: WebChannel
) -> web.StreamResponse:
    """Stream the media: its type, a private cache, nosniff, an attachment unless a safe image."""
    state = request.app[WEB_STATE]
    visitor = bearer_visitor(request, tenant)
    conversation_id = request.match_info["conversation_id"]
    message_id = request.match_info["message_id"]
    if not _ID.fullmatch(conversation_id) or not _ID.fullmatch(message_id):
        raise Refused(400, "conversation and message ids: 1 to 128 letters, digits, '-' or '_'")
    wait = state.limits.hit(f"media:{tenant.id}:{visitor.subject}", state.settings.media_per_minute)
    if wait:
        raise Refused(429, "too many media requests; retry later", retry_after=wait)
    parts = state.chat.media(visitor, conversation_id, message_id)
    try:
        first = await anext(parts)
    except StopAsyncIteration:
        raise Refused(502, "the chat service sent no media") from None
    except ChatCallError as exc:
        status = 503 if exc.retryable and exc.code != "RESOURCE_EXHAUSTED" else None
        raise Refused(status or _STATUS.get(exc.code, 502), exc.reason, retry_after=2) from None
    response = web.StreamResponse(headers=media_headers(first.mime_type, first.file_name))
    # ``guarded`` adds these after the handler, too late for a response already prepared.
    response.headers.update(cors_headers(allowed_origin(request, tenant, channel)))
    response.content_length = first.size_bytes
    await response.prepare(request)
    # Past prepare the status is sent: a failure now can only cut the body short, which the
    # browser sees as a failed download (the length does not match).
    with contextlib.suppress(ChatCallError, ConnectionError):
        if first.data:
            await response.write(first.data)
        async for part in parts:
            await response.write(part.data)
        await response.write_eof()
    await parts.aclose()
    return response


def media_headers(mime_type: str, file_name: str) -> dict[str, str]:
    """The response headers for media of this type and name."""
    inline = mime_type in INLINE_TYPES
    headers = {
        "Content-Type": mime_type if inline else (mime_type or "application/octet-stream"),
        "Cache-Control": CACHE_CONTROL,
        "X-Content-Type-Options": "nosniff",
        # Opened on its own (a new tab), the response still runs nothing.
        "Content-Security-Policy": "default-src 'none'; sandbox",
    }
    if not inline:
        headers["Content-Disposition"] = _attachment(file_name or "download")
    return headers


def _attachment(file_name: str) -> str:
    """An attachment header with an ASCII fallback name and the exact one (RFC 6266)."""
    ascii_name = re.sub(r"[^A-Za-z0-9._ -]", "_", file_name)[:128] or "download"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name[:128])}"
