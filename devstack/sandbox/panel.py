"""The page's panel of the service's calls: each handler marks its call (``show``), and one
middleware records it with the status and answer it got."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from devstack.sandbox.errors import Refused
from devstack.sandbox.recorder import Recorder

#: A typed key (a str key warns once per process, an error under the tests' filterwarnings:
#: the first call a test process made got a 500).
_SHOWN: web.RequestKey[tuple[str, Any]] = web.RequestKey("sandbox.shown", tuple)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def show(request: web.Request, api: str, body: Any = None) -> None:
    """Put this call on the panel, with the answer it gets (``panel_middleware``)."""
    request[_SHOWN] = (api.split("-", maxsplit=1)[0].replace("graph", "meta"), body)


def panel_middleware(recorder: Recorder) -> Any:
    """Records each call a handler marked with ``show``, with its status and answer."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except Refused as refusal:
            # Bad input to a platform's API: the platform's own error, on the panel too (a
            # body that could not be read is shown as its text).
            response = refusal.response()
            if request.get(_SHOWN) is None:
                raw = (await request.read()) if request.can_read_body else b""
                show(request, refusal.api, readable(raw[:2000]))
        except Exception as exc:
            # The sandbox's own failure: still on the panel, so the integrator sees the call.
            shown = request.get(_SHOWN)
            if shown is not None:
                _record(request, shown, 500, f"the sandbox failed: {exc}")
            raise
        shown = request.get(_SHOWN)
        if shown is not None:
            _record(request, shown, response.status, _answer_of(response))
        return response

    def _record(request: web.Request, shown: tuple[str, Any], status: int, answer: Any) -> None:
        recorder.exchange(
            direction="to platform",
            platform=shown[0],
            method=request.method,
            path=request.path_qs,
            headers=dict(request.headers),
            body=shown[1],
            status=status,
            answer=answer,
        )

    return middleware


def _answer_of(response: web.StreamResponse) -> Any:
    body = response.body if isinstance(response, web.Response) else None
    if not isinstance(body, bytes):
        return ""
    if response.content_type == "application/json":
        return readable(body)
    if response.content_type.startswith("text/"):
        return body.decode("utf-8", errors="replace")[:2000]
    return f"({len(body)} bytes of {response.content_type})"


def readable(body: bytes) -> Any:
    """JSON as its value, anything else as text."""
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text
