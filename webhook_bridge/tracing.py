"""The bridge's access line names the webhook's trace: aiohttp writes it after the request's
span has ended, so the span's ids are kept on the request while it is current."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from server.tracing.spans import trace_ids
from server.tracing.state import STATE

TRACE_IDS = web.RequestKey("trace_ids", dict[str, str])


@web.middleware
async def _remember_trace(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    request[TRACE_IDS] = trace_ids()
    return await handler(request)


def tracing_middlewares() -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    """Inside the request's span (aiohttp's instrumentation puts its own first); none while
    tracing is off."""
    return [_remember_trace] if STATE.enabled else []
