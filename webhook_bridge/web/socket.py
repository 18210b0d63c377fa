"""The visitor's WebSocket endpoint: tenant, origin and address limit checked before the
upgrade (a 4xx with its reason), then a VisitorSocket serves it.

Close codes (docs/web-chat.md): 4400 a frame that is not valid, 4401 no valid token (or it
expired), 4403 the server refused the visitor, 4408 no token within the time allowed, 4409 a
socket too slow to read what it is sent, 4429 too many sockets for one visitor, 1009 a frame
too large, 1013 the chat server unavailable, 1001 the bridge is stopping. Every close carries
its reason.
"""

from __future__ import annotations

import contextlib

from aiohttp import WSCloseCode, web

from webhook_bridge.web.gateway import (
    WEB_STATE,
    Refused,
    WebState,
    allowed_origin,
    client_ip,
    web_tenant,
)
from webhook_bridge.web.visitor_socket import VisitorSocket


async def socket_handler(request: web.Request) -> web.StreamResponse:
    """Check tenant and origin before the upgrade (a 4xx with its reason), then serve."""
    state = request.app[WEB_STATE]
    try:
        tenant, channel = web_tenant(request)
        allowed_origin(request, tenant, channel)
        _within_limit(request, state)
    except Refused as exc:
        return exc.response()
    ws = web.WebSocketResponse(
        heartbeat=state.settings.heartbeat_seconds,
        max_msg_size=state.settings.max_frame_bytes,
        protocols=("chat-web.v1",),
    )
    await ws.prepare(request)
    state.open_sockets.add(ws)
    try:
        await VisitorSocket(
            ws=ws, state=state, tenant=tenant, channel=channel, transport=request.transport
        ).serve()
    finally:
        state.open_sockets.discard(ws)
    return ws


def _within_limit(request: web.Request, state: WebState) -> None:
    wait = state.limits.hit(
        f"sockets:{client_ip(request)}", state.settings.sockets_per_ip_per_minute
    )
    if wait:
        raise Refused(429, "too many connections from this address", retry_after=wait)


async def close_all(state: WebState) -> None:
    """Close every socket with 1001 (the bridge is stopping): widgets reconnect elsewhere."""
    for ws in list(state.open_sockets):
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"the gateway is restarting")
