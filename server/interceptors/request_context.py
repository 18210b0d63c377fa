"""Request id and access log: the first interceptor every call meets.

The request id comes from the caller's ``x-request-id`` metadata when it is well-formed,
otherwise it is generated; it is bound to every log line of the call and returned to the
caller in the initial metadata (the response headers), so a user can quote it in a support
request. A call in ``DEFERRED_HEADERS`` sends its headers itself (``send_headers``), at a moment
that tells the caller something: StreamConversationEvents once it is subscribed. An error
before then sends them just before its status.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from typing import Any

import grpc
import structlog

from server.interceptors.codes import final_code
from server.interceptors.rpc_metrics import RpcMetrics

REQUEST_ID_KEY = "x-request-id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Probes call these every few seconds; their access lines would drown everything else.
_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
#: Calls whose handler sends the response headers when they mean something (send_headers).
DEFERRED_HEADERS = frozenset({"/chat.v1.ChatService/StreamConversationEvents"})
_unsent_headers: ContextVar[tuple[tuple[str, str], ...] | None] = ContextVar(
    "unsent_headers", default=None
)

log = structlog.get_logger("chat.access")


def request_id_from(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's request id when well-formed, else a new one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _VALID_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


async def send_headers(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """Send a deferred call's response headers (its request id); nothing when there are none
    waiting, or they went already."""
    headers = _unsent_headers.get()
    if headers is None:
        return
    _unsent_headers.set(None)
    await context.send_initial_metadata(headers)


class RequestContextInterceptor:
    """Binds request id and method to the log context, writes one access line per call and
    reports it to the RPC metrics (calls in flight, open streams, durations by final code).
    The chain's outermost step (call_chain.py): ``method`` is the rest of the call."""

    def __init__(self, *, rpc_metrics: RpcMetrics | None = None) -> None:
        self._rpc = rpc_metrics

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        method_name: str,
    ) -> Any:
        request_id = request_id_from(context)
        structlog.contextvars.bind_contextvars(request_id=request_id, method=method_name)
        headers = ((REQUEST_ID_KEY, request_id),)
        if method_name in DEFERRED_HEADERS:
            _unsent_headers.set(headers)
        else:
            await context.send_initial_metadata(headers)
        started = time.perf_counter()
        counted = False
        try:
            response = method(request_or_iterator, context)
            if hasattr(response, "__aiter__"):
                return self._stream(response, context, method_name, started)
            if self._rpc is not None:
                self._rpc.call_started(method_name)
                counted = True
            result = await response
        except BaseException as exc:
            self._access(context, method_name, started, exc, counted=counted)
            raise
        self._access(context, method_name, started, None, counted=counted)
        return result

    async def _stream(
        self,
        responses: AsyncIterator[Any],
        context: grpc.aio.ServicerContext[Any, Any],
        method_name: str,
        started: float,
    ) -> AsyncIterator[Any]:
        # Counted from its first step on: a stream never iterated (cancelled first) leaves no
        # count behind.
        if self._rpc is not None:
            self._rpc.stream_started(method_name)
        try:
            async for response in responses:
                yield response
        except BaseException as exc:
            self._access(context, method_name, started, exc, counted=True)
            raise
        finally:
            if self._rpc is not None:
                self._rpc.stream_stopped(method_name)
        self._access(context, method_name, started, None, counted=True)

    def _access(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method_name: str,
        started: float,
        error: BaseException | None,
        *,
        counted: bool,
    ) -> None:
        status = final_code(context, error)
        seconds = time.perf_counter() - started
        if counted and self._rpc is not None:
            self._rpc.call_ended(method_name, status, seconds)
        level = "debug" if method_name.startswith(_QUIET_PREFIXES) else "info"
        getattr(log, level)("rpc finished", code=status, duration_ms=round(seconds * 1000, 2))
        structlog.contextvars.clear_contextvars()
