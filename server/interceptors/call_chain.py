"""The chain's steps run by one grpc interceptor, as plain calls.

A grpc interceptor per step cost each call a coroutine per step to find the handler, a handler
rebuilt per step, and a coroutine (or, for a stream, an async generator) per step around the
servicer, through which every resumption of the servicer passed: about a tenth of the chat
server's CPU per SendMessage at 64 in flight, measured side by side. Here a method's handler
is built once, on its first call, and a call runs: the request context (request id, access
line, RPC metrics) around the error boundary, inside which the caller checks run in their
order, then the servicer.

It must be the last interceptor of the server: a built handler is reused without asking the
interceptors after it (there are none; the tracing interceptor comes before it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias

import grpc

from server.auth.scopes import PUBLIC_METHODS
from server.interceptors.checks import CallerCheck
from server.interceptors.decoding import Undecodable, tolerant
from server.interceptors.error_boundary import ErrorBoundaryInterceptor, abort_with
from server.interceptors.request_context import RequestContextInterceptor

# Strings: grpc's stubs make these generic, the runtime classes are not subscriptable.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# The stubs promise a handler; at run time it is None for a method no service has.
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Behaviour = Callable[[Any, Any], Any]


class CallChain(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc's stubs make it generic; it has no parameters at runtime
    """Runs the request context, the error boundary and the caller checks around every
    method (the checks left out for the public ones)."""

    def __init__(
        self,
        *,
        request_context: RequestContextInterceptor,
        error_boundary: ErrorBoundaryInterceptor,
        checks: Sequence[CallerCheck],
    ) -> None:
        self._context = request_context
        self._boundary = error_boundary
        self._checks = tuple(checks)
        #: By method name; only the served methods', so their number is fixed (a made-up
        #: name finds no handler and is not remembered).
        self._handlers: dict[str, Handler] = {}

    async def intercept_service(  # type: ignore[override]  # None: see Continuation
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method_name: str = handler_call_details.method
        handler = self._handlers.get(method_name)
        if handler is None:
            served = await continuation(handler_call_details)
            if served is None:
                return None
            handler = self._handlers[method_name] = self._built(served, method_name)
        return handler

    def _built(self, served: Handler, method_name: str) -> Handler:
        """``served``'s handler with a decoder that never raises and the steps around it."""
        checks = () if method_name in PUBLIC_METHODS else self._checks
        factory, behaviour = _factory_and_behaviour(served)
        run = self._streaming if served.response_streaming else self._unary
        decode = served.request_deserializer
        built: Handler = factory(
            run(behaviour, method_name, checks, request_streaming=served.request_streaming),
            request_deserializer=tolerant(decode) if decode is not None else None,
            response_serializer=served.response_serializer,
        )
        return built

    def _unary(
        self,
        behaviour: Behaviour,
        method_name: str,
        checks: tuple[CallerCheck, ...],
        *,
        request_streaming: bool,
    ) -> Callable[[Any, Context], Awaitable[Any]]:
        """A handler with one response: the steps around ``behaviour``."""
        boundary, request_context = self._boundary, self._context

        async def guarded(request: Any, context: Context) -> Any:
            if isinstance(request, Undecodable):
                await abort_with(context, boundary.malformed(request, method_name))
            try:
                if request_streaming:
                    request = boundary.decoded(request, method_name)
                for check in checks:
                    await check.check(context, method_name)
                return await behaviour(request, context)
            except Exception as exc:  # noqa: BLE001 - this is the boundary
                await boundary.abort(context, exc)

        async def call(request: Any, context: Context) -> Any:
            return await request_context.intercept(guarded, request, context, method_name)

        return call

    def _streaming(
        self,
        behaviour: Behaviour,
        method_name: str,
        checks: tuple[CallerCheck, ...],
        *,
        request_streaming: bool,
    ) -> Callable[[Any, Context], AsyncIterator[Any]]:
        """A handler with a stream of responses: the steps around ``behaviour``, which
        yields its responses or writes them (``context.write``) and returns None."""
        boundary, request_context = self._boundary, self._context

        async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await abort_with(context, boundary.malformed(request, method_name))
            try:
                if request_streaming:
                    request = boundary.decoded(request, method_name)
                for check in checks:
                    await check.check(context, method_name)
                responses = behaviour(request, context)
                if hasattr(responses, "__aiter__"):
                    async for response in responses:
                        yield response
                else:
                    await responses
            except Exception as exc:  # noqa: BLE001 - this is the boundary
                await boundary.abort(context, exc)

        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            responses = await request_context.intercept(guarded, request, context, method_name)
            async for response in responses:
                yield response

        return call


def _factory_and_behaviour(handler: Handler) -> tuple[Any, Any]:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, handler.unary_unary
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary
    return grpc.stream_stream_rpc_method_handler, handler.stream_stream
