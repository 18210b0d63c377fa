"""The gateway's routes, the widget's script and the demo page."""

from __future__ import annotations

import hashlib
import html
from dataclasses import dataclass
from pathlib import Path

import grpc
from aiohttp import web

from server.domain.tenant import TenantCatalog
from webhook_bridge.web.chat import VisitorChat
from webhook_bridge.web.config import WebSettings
from webhook_bridge.web.gateway import WEB_STATE, WebState, refusal
from webhook_bridge.web.http import create_session, guarded, preflight, upload
from webhook_bridge.web.media import message_media
from webhook_bridge.web.socket import close_all, socket_handler
from webhook_bridge.web.visitors import VisitorTokens

WIDGET_FILE = "widget.js"


@dataclass(frozen=True, slots=True)
class Widget:
    """The built widget script and its content hash."""

    body: bytes
    digest: str


def add_web_routes(app: web.Application) -> None:
    """The gateway's endpoints under /web/v1."""
    app.router.add_post("/web/v1/{tenant_id}/sessions", guarded(create_session))
    app.router.add_route("OPTIONS", "/web/v1/{tenant_id}/sessions", guarded(preflight))
    app.router.add_post("/web/v1/{tenant_id}/uploads", guarded(upload))
    app.router.add_route("OPTIONS", "/web/v1/{tenant_id}/uploads", guarded(preflight))
    media = "/web/v1/{tenant_id}/media/{conversation_id}/{message_id}"
    app.router.add_get(media, guarded(message_media), allow_head=False)
    app.router.add_route("OPTIONS", media, guarded(preflight))
    app.router.add_get("/web/v1/{tenant_id}/socket", socket_handler)
    app.router.add_get("/web/v1/widget.js", widget_script)
    app.router.add_get("/web/v1/widget.{digest:[0-9a-f]{16}}.js", widget_script)
    app.router.add_get("/web/v1/demo/{tenant_id}", demo_page)
    app.on_shutdown.append(lambda app: close_all(app[WEB_STATE]))


def web_state(
    *,
    channel: grpc.aio.Channel,
    tenants: TenantCatalog,
    tokens: VisitorTokens,
    settings: WebSettings,
) -> WebState:
    """The gateway's state, inside the running loop (the channel is the bridge's)."""
    return WebState(
        tenants=tenants, tokens=tokens, chat=VisitorChat(channel=channel), settings=settings
    )


def load_widget(directory: Path) -> Widget | None:
    """The built widget, or None when it is not built (`make install` builds it)."""
    try:
        body = (directory / WIDGET_FILE).read_bytes()
    except OSError:
        return None
    return Widget(body=body, digest=hashlib.sha256(body).hexdigest()[:16])


def _widget(request: web.Request) -> Widget | None:
    state = request.app[WEB_STATE]
    if state.widget is None:
        state.widget = load_widget(state.settings.widget_dir)
    widget: Widget | None = state.widget
    return widget


async def widget_script(request: web.Request) -> web.StreamResponse:
    """The widget: by its plain name cached briefly (revalidated by its hash as ETag), by its
    hashed name cached for a year (that name never changes content)."""
    widget = _widget(request)
    if widget is None:
        return refusal(404, "the widget is not built: run 'make install'")
    digest = request.match_info.get("digest")
    if digest is not None and digest != widget.digest:
        return refusal(404, "no such widget version")
    etag = f'"{widget.digest}"'
    cache = (
        "public, max-age=31536000, immutable" if digest else "public, max-age=300, must-revalidate"
    )
    headers = {
        "Cache-Control": cache,
        "ETag": etag,
        "Access-Control-Allow-Origin": "*",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=widget.body, content_type="text/javascript", charset="utf-8", headers=headers
    )


DEMO_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>chat-service web chat demo</title>
<style>
  body {{ font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 40rem;
         padding: 0 1rem; color: #222; }}
  code {{ background: #f3f3f3; padding: 0 .2em; }}
  pre {{ white-space: pre-wrap; word-break: break-all; background: #f3f3f3; padding: .5em; }}
</style>
</head>
<body>
<h1>Web chat demo</h1>
<p>The chat button at the bottom right is the widget, embedded in this page with one script
tag. It talks to the tenant <code>{tenant}</code> through the gateway of this bridge; the
built-in responder answers. Try <code>hello</code>, then <code>help</code>.</p>
<pre><code>{snippet}</code></pre>
{script}
</body>
</html>
"""


async def demo_page(request: web.Request) -> web.Response:
    """A page embedding the widget for the demo tenant (CHAT_WEB_DEMO_TENANT)."""
    state = request.app[WEB_STATE]
    tenant_id = request.match_info["tenant_id"]
    tenant = state.tenants.get(tenant_id)
    if (
        not state.settings.demo_tenant
        or tenant_id != state.settings.demo_tenant
        or tenant is None
        or tenant.channels.web is None
    ):
        return refusal(404, "no demo page for this tenant")
    origin = f"{request.scheme}://{request.host}"
    script = (
        f'<script src="{origin}/web/v1/widget.js" data-tenant="{tenant_id}" '
        f'data-site-key="{tenant.channels.web.site_key}" data-open="true" async></script>'
    )
    page = DEMO_PAGE.format(
        tenant=html.escape(tenant_id), snippet=html.escape(script), script=script
    )
    return web.Response(
        text=page,
        content_type="text/html",
        headers={"Cache-Control": "no-store", "Content-Security-Policy": _csp(origin)},
    )


def _csp(origin: str) -> str:
    ws = "ws" + origin.removeprefix("http")
    return (
        f"default-src 'none'; script-src {origin}; style-src 'unsafe-inline'; "
        f"connect-src {origin} {ws}; img-src {origin} blob: data:"
    )
