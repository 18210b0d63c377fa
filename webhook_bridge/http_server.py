"""The bridge's HTTP server: aiohttp's, with what a server facing the internet needs.

- A request that is not HTTP (a malformed request line, header or chunk) gets a 400 with a
  short fixed reason: aiohttp's own answer echoes the offending bytes back. Such requests, and
  clients gone mid-request, are logged as one info line without a traceback, at most
  FAULT_LINES_PER_MINUTE a minute (aiohttp logs each at error level, with a traceback, and
  once more in the access log).
- The request head must arrive within the header timeout of the connection opening (or of
  the previous answer, on a kept-alive connection): aiohttp's keep-alive timer, which bytes
  arriving do not restart, closes a connection whose head is still incomplete. The body has
  its own time limit, in the app (408).

aiohttp builds its request handler class itself; the runner here gives its server ours.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import access_logger
from aiohttp.web_log import AccessLogger
from aiohttp.web_protocol import ERROR

from webhook_bridge.tracing import TRACE_IDS

log = structlog.get_logger("chat.bridge.http")

#: What the request head may take, by default (and how long an idle connection is kept).
HEADER_TIMEOUT_SECONDS = 10.0
#: After an answer given without reading the whole body, how long the rest is read and
#: dropped (so the client sees the answer, not a reset) before the connection is closed.
LINGER_SECONDS = 2.0
FAULT_LINES_PER_MINUTE = 10
#: Faults of the client, not of the bridge: never a traceback.
CLIENT_FAULTS = (HttpProcessingError, web.RequestPayloadError, ConnectionError)


class ClientFaults:
    """Logs clients' faults quietly: one info line each, at most FAULT_LINES_PER_MINUTE a
    minute (the next line says how many were left out)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._window_start = float("-inf")
        self._lines = 0
        self._left_out = 0

    def report(self, what: str, exc: BaseException | None, remote: str | None) -> None:
        """One client fault: ``what`` happened, raised as ``exc``."""
        now = self._clock()
        if now - self._window_start >= 60:
            self._window_start, self._lines = now, 0
        if self._lines >= FAULT_LINES_PER_MINUTE:
            self._left_out += 1
            return
        self._lines += 1
        # The class only: aiohttp's messages quote the request's bytes (headers, tokens).
        error = type(exc).__name__ if exc is not None else ""
        log.info(what, remote=remote, error=error, left_out=self._left_out)
        self._left_out = 0


class BridgeAccessLogger(AccessLogger):
    """aiohttp's access log, without the requests that did not parse (ClientFaults logs them,
    boundedly; aiohttp would log each as "UNKNOWN / HTTP/1.0" 400)."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        """One request's line, unless aiohttp answered it for a request that did not parse."""
        # aiohttp's stand-in request for one that did not parse (a client sending this very
        # request line, which no platform does, loses its access line too).
        if (request.method, request.version) == (ERROR.method, ERROR.version):
            return
        ids = request.get(TRACE_IDS) if isinstance(request, web.Request) else None
        if not ids:
            super().log(request, response, time)
            return
        with structlog.contextvars.bound_contextvars(**ids):
            super().log(request, response, time)


class BridgeRequestHandler(web.RequestHandler):
    """aiohttp's request handler, quiet about clients' faults and echoing nothing."""

    def __init__(self, manager: web.Server, *, faults: ClientFaults, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._faults = faults

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A malformed request's answer: its status and a fixed reason (a 500 that is not a
        client's fault stays aiohttp's, with its traceback logged)."""
        if status == HTTPStatus.INTERNAL_SERVER_ERROR and not isinstance(exc, CLIENT_FAULTS):
            return super().handle_error(request, status, exc, message)
        gone = isinstance(exc, ConnectionError)
        what = "client disconnected mid-request" if gone else "malformed HTTP request"
        self._faults.report(what, exc, request.remote)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way")
        reason = "malformed HTTP request" if status == 400 else HTTPStatus(status).phrase
        response = web.json_response({"error": reason}, status=status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """A client's fault (a body that breaks off, a bad chunk while the rest of a body is
        drained) as a quiet line; anything else as aiohttp logs it."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, CLIENT_FAULTS):
            self._faults.report("client fault while reading a request", exc, None)
            return
        super().log_exception(*args, **kwargs)


class BridgeServer(web.Server):
    """aiohttp's low-level server, making BridgeRequestHandlers."""

    def __init__(self, handler: Any, *, faults: ClientFaults, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._faults = faults

    def __call__(self) -> web.RequestHandler:
        return BridgeRequestHandler(self, loop=self._loop, faults=self._faults, **self._kwargs)


class BridgeRunner(web.AppRunner):
    """An AppRunner serving the app with BridgeServer, and time limits on the request head."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float = HEADER_TIMEOUT_SECONDS,
        access_log: logging.Logger | None = access_logger,
        handle_signals: bool = False,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__(
            app,
            handle_signals=handle_signals,
            shutdown_timeout=shutdown_timeout,
            access_log=access_log,
            access_log_class=BridgeAccessLogger,
            keepalive_timeout=header_timeout,
            lingering_time=LINGER_SECONDS,
        )
        self._faults = ClientFaults()

    async def _make_server(self) -> web.Server:
        # The app's own server runs the app's start-up and carries its request handling.
        server = await super()._make_server()
        return BridgeServer(
            server.request_handler,
            request_factory=server.request_factory,
            faults=self._faults,
            **self._kwargs,
        )
