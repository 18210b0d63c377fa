"""The gateway's shared state and its HTTP checks: tenant, origin, CORS, refusals.

Every request meets, in this order: the tenant and its web channel (404), the Origin header,
which must be one of the tenant's allowed origins exactly (403), then its own limits (429)
and checks. Refusals are small JSON bodies ``{"error": reason}``; nothing is stored for them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from server.domain.tenant import Tenant, TenantCatalog, WebChannel
from webhook_bridge.web.chat import VisitorChat
from webhook_bridge.web.config import WebSettings
from webhook_bridge.web.limits import WindowLimiter
from webhook_bridge.web.uploads import UploadStore
from webhook_bridge.web.visitors import Visitor, VisitorTokenError, VisitorTokens


@dataclass(slots=True)
class WebState:
    """What the gateway's handlers share."""

    tenants: TenantCatalog
    tokens: VisitorTokens
    chat: VisitorChat
    settings: WebSettings
    uploads: UploadStore = field(default_factory=UploadStore)
    limits: WindowLimiter = field(default_factory=WindowLimiter)
    #: Open sockets per (tenant, visitor).
    sockets: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: Every open socket, to close them when the bridge stops.
    open_sockets: set[web.WebSocketResponse] = field(default_factory=set)
    #: The built widget once read (routes.Widget).
    widget: Any = None


WEB_STATE = web.AppKey("web_state", WebState)


def refusal(status: int, reason: str, *, retry_after: float = 0) -> web.Response:
    """A 4xx (or 503) with its reason; CORS headers are added by the caller's middleware."""
    headers = {"Retry-After": str(int(retry_after))} if retry_after else None
    return web.Response(
        status=status,
        text=json.dumps({"error": reason}),
        content_type="application/json",
        headers=headers,
    )


class Refused(Exception):  # noqa: N818 - a refusal, answered as such
    """Raised by the checks; the handler answers ``refusal(status, reason)``."""

    def __init__(self, status: int, reason: str, *, retry_after: float = 0) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after

    def response(self) -> web.Response:
        """The answer to the client."""
        return refusal(self.status, self.reason, retry_after=self.retry_after)


def web_tenant(request: web.Request) -> tuple[Tenant, WebChannel]:
    """The path's tenant and its web channel; Refused 404 (503 while tenants load)."""
    state = request.app[WEB_STATE]
    tenant = state.tenants.get(request.match_info["tenant_id"])
    if tenant is None and not state.tenants.loaded:
        raise Refused(503, "tenants are loading; retry", retry_after=2)
    if tenant is None or not tenant.enabled:
        raise Refused(404, "unknown tenant")
    if tenant.channels.web is None:
        raise Refused(404, "web chat is not configured for this tenant")
    return tenant, tenant.channels.web


def own_origin(request: web.Request) -> str:
    """The bridge's own origin as the browser sees it (for its demo page)."""
    return f"{request.scheme}://{request.host}"


def allowed_origin(request: web.Request, tenant: Tenant, channel: WebChannel) -> str:
    """The request's Origin when the tenant allows it exactly; Refused 403 otherwise."""
    origin = request.headers.get("Origin", "")
    if (
        not origin
        and request.method == "GET"
        and request.headers.get("Sec-Fetch-Site") == "same-origin"
    ):
        # Browsers send no Origin on a same-origin GET (the demo page fetching media); the
        # fetch metadata says where it came from, and the bridge's own origin must still pass.
        origin = own_origin(request)
    if not origin:
        raise Refused(403, "an Origin header is required")
    if origin in channel.allowed_origins:
        return origin
    demo = request.app[WEB_STATE].settings.demo_tenant
    if demo and tenant.id == demo and origin == own_origin(request):
        return origin
    raise Refused(403, "this origin may not use this tenant's web chat")


def client_ip(request: web.Request) -> str:
    """The peer's address (the bridge's own proxy, if any, is trusted by deployment)."""
    return request.remote or "unknown"


def cors_headers(origin: str) -> dict[str, str]:
    """The CORS answer for an allowed origin."""
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Content-Type, Authorization",
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def bearer_visitor(request: web.Request, tenant: Tenant) -> Visitor:
    """The visitor named by the Authorization header; Refused 401 otherwise."""
    header = request.headers.get("Authorization", "")
    if not header.lower().startswith("bearer "):
        raise Refused(401, "expected 'Authorization: Bearer <visitor token>'")
    try:
        visitor: Visitor = request.app[WEB_STATE].tokens.verify(header[7:].strip(), tenant.id)
    except VisitorTokenError as exc:
        raise Refused(401, str(exc)) from None
    return visitor
