"""Requests whose bytes are not the message they claim to be.

grpc decodes a request before any interceptor runs, and an exception there becomes UNKNOWN
with the exception's class in its message and a traceback in the log, past every boundary. So
the outermost interceptor swaps each method's decoder for one that never raises: bytes that do
not decode (truncated, invalid UTF-8 in a string, nesting past the parser's limit) become an
``Undecodable`` in place of the request, which the error boundary answers as INVALID_ARGUMENT
(``MALFORMED_REQUEST``) with the request id, like any other bad request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

from server.domain.errors import InvalidArgument

MALFORMED_REQUEST = "MALFORMED_REQUEST"
TOO_DEEP = "it is nested too deeply (at most 100 levels of messages)"

Decoder = Callable[[bytes], Any]
# Strings: grpc's stubs make these generic, the runtime classes are not subscriptable.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
# The stubs promise a handler; at run time it is None for a method no service has.
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a method receives for bytes its request type could not decode."""

    problem: str


def malformed(request: Undecodable) -> InvalidArgument:
    """The error a client gets for an undecodable request."""
    return InvalidArgument(
        f"the request could not be decoded: {request.problem}", reason=MALFORMED_REQUEST
    )


def tolerant(decode: Decoder) -> Decoder:
    """``decode``, with an ``Undecodable`` for bytes it refuses."""

    def decoded(data: bytes) -> Any:
        try:
            return decode(data)
        except RecursionError:
            return Undecodable(TOO_DEEP)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is the client's bytes
            # The decoder's own message names our classes; the client learns what matters.
            if "Depth" in str(exc):  # upb: "Exceeded upb_DecodeOptions_MaxDepth"
                return Undecodable(TOO_DEEP)
            return Undecodable("its bytes are not a valid message of this method's type")

    return decoded


class DecodingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]  # grpc's stubs make it generic; it has no parameters at runtime
    """Gives every method a decoder that never raises (see the module docstring)."""

    async def intercept_service(  # type: ignore[override]  # None: see Continuation
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        factory, behaviour = _factory_and_behaviour(handler)
        rebuilt: Handler = factory(
            behaviour,
            request_deserializer=tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        return rebuilt


def _factory_and_behaviour(handler: Handler) -> tuple[Any, Any]:
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler, handler.unary_unary
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler, handler.unary_stream
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler, handler.stream_unary
    return grpc.stream_stream_rpc_method_handler, handler.stream_stream
