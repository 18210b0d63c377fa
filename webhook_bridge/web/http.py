"""The gateway's HTTP endpoints: visitor sessions and uploads (and their CORS preflights)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from server.domain.tenant import Tenant, WebChannel
from webhook_bridge.web.chat import ChatCallError
from webhook_bridge.web.gateway import (
    WEB_STATE,
    Refused,
    allowed_origin,
    bearer_visitor,
    client_ip,
    cors_headers,
    web_tenant,
)
from webhook_bridge.web.uploads import UploadRefusedError, checked_type
from webhook_bridge.web.visitors import (
    USER_ID,
    Visitor,
    VisitorTokenError,
    VisitorTokens,
    anonymous_subject,
    identity_valid,
)

MAX_SESSION_BODY = 8 * 1024
BODY_SECONDS = 10.0
Handler = Callable[[web.Request, Tenant, WebChannel], Awaitable[web.StreamResponse]]


def guarded(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Tenant, origin, then the handler; every answer (refusals too) carries CORS headers
    for an allowed origin, so the page can read the reason."""

    async def wrapper(request: web.Request) -> web.StreamResponse:
        origin = ""
        try:
            tenant, channel = web_tenant(request)
            origin = allowed_origin(request, tenant, channel)
            response = await handler(request, tenant, channel)
        except Refused as exc:
            response = exc.response()
        if origin:
            response.headers.update(cors_headers(origin))
        return response

    return wrapper


async def preflight(request: web.Request, _tenant: Tenant, _channel: WebChannel) -> web.Response:
    """The CORS preflight: the headers are added by ``guarded``."""
    del request
    return web.Response(status=204)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_SESSION_BODY:
        raise Refused(413, f"the body is larger than {MAX_SESSION_BODY} bytes")
    try:
        raw = await asyncio.wait_for(request.content.read(MAX_SESSION_BODY + 1), BODY_SECONDS)
    except (TimeoutError, web.RequestPayloadError, ConnectionError):
        raise Refused(400, "the body could not be read") from None
    if len(raw) > MAX_SESSION_BODY:
        raise Refused(413, f"the body is larger than {MAX_SESSION_BODY} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise Refused(400, "the body is not JSON") from None
    if not isinstance(body, dict):
        raise Refused(400, "the body must be a JSON object")
    return body


async def create_session(request: web.Request, tenant: Tenant, channel: WebChannel) -> web.Response:
    """Mint (or refresh) a visitor token; the visitor's conversation and last sequence."""
    state = request.app[WEB_STATE]
    wait = state.limits.hit(
        f"sessions:{tenant.id}:{client_ip(request)}", state.settings.sessions_per_ip_per_minute
    )
    if wait:
        raise Refused(429, "too many sessions from this address; retry later", retry_after=wait)
    body = await _json_body(request)
    site_key = body.get("site_key")
    if not isinstance(site_key, str) or site_key != channel.site_key:
        raise Refused(403, "wrong site key")
    subject = _subject(state.tokens, tenant, channel, body)
    visitor = state.tokens.mint(tenant.id, subject)
    try:
        conversation = await state.chat.active_conversation(visitor)
    except ChatCallError as exc:
        raise Refused(503 if exc.retryable else 403, exc.reason, retry_after=2) from None
    return web.json_response(
        {
            "visitor_id": visitor.subject,
            "token": visitor.token,
            "expires_at": visitor.expires_at,
            "conversation_id": conversation.id if conversation else "",
            "last_sequence": conversation.last_sequence if conversation else 0,
        },
        headers={"Cache-Control": "no-store"},
    )


def _subject(
    tokens: VisitorTokens, tenant: Tenant, channel: WebChannel, body: dict[str, Any]
) -> str:
    """Who the new token names: the verified user, the refreshed token's visitor, or a new
    anonymous visitor."""
    user_id, user_hash, previous = body.get("user_id"), body.get("user_hash"), body.get("token")
    if user_id is not None:
        if not channel.identity_secret:
            raise Refused(400, "identity verification is not configured for this tenant")
        if not isinstance(user_id, str) or not USER_ID.match(user_id):
            raise Refused(400, "user_id: 1 to 128 printable characters, no spaces")
        if not isinstance(user_hash, str) or not identity_valid(
            channel.identity_secret, user_id, user_hash
        ):
            raise Refused(403, "user_hash does not match user_id")
        return user_id
    if previous is not None:
        try:
            visitor: Visitor = tokens.verify(previous, tenant.id)
        except VisitorTokenError as exc:
            raise Refused(401, str(exc)) from None
        return visitor.subject
    return anonymous_subject()


async def upload(request: web.Request, tenant: Tenant, channel: WebChannel) -> web.Response:
    """A file for the next send frame: checked, held, its id returned."""
    del channel
    state = request.app[WEB_STATE]
    visitor = bearer_visitor(request, tenant)
    wait = state.limits.hit(
        f"uploads:{tenant.id}:{visitor.subject}", state.settings.uploads_per_minute
    )
    if wait:
        raise Refused(429, "too many uploads; retry later", retry_after=wait)
    limit = state.settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise Refused(413, f"the file is larger than {limit} bytes")
    data, file_name = await _file_part(request, limit)
    try:
        mime = checked_type(data, limit)
        held = state.uploads.put(visitor.subject, data, mime, file_name)
    except UploadRefusedError as exc:
        raise Refused(exc.status, exc.reason) from None
    return web.json_response(
        {"media_id": held.id, "mime_type": mime, "size": len(data), "file_name": held.file_name}
    )


async def _file_part(request: web.Request, limit: int) -> tuple[bytes, str]:
    """The multipart body's ``file`` part, read up to ``limit`` bytes."""
    if not request.content_type.startswith("multipart/form-data"):
        raise Refused(415, "expected multipart/form-data with a 'file' part")
    try:
        reader = await request.multipart()
        async with asyncio.timeout(60):
            while (part := await reader.next()) is not None:
                if getattr(part, "name", None) != "file":
                    continue
                chunks, size = [], 0
                while chunk := await part.read_chunk(64 * 1024):  # type: ignore[union-attr]
                    size += len(chunk)
                    if size > limit:
                        raise Refused(413, f"the file is larger than {limit} bytes")
                    chunks.append(chunk)
                return b"".join(chunks), getattr(part, "filename", None) or ""
    except (TimeoutError, ValueError, AssertionError, web.RequestPayloadError, ConnectionError):
        raise Refused(400, "the multipart body could not be read") from None
    raise Refused(400, "no 'file' part in the body")
