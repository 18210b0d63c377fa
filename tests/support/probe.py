"""A test-only gRPC service behind the production interceptor chain.

The chat.v1 RPCs land with later issues; these small handlers let the tests drive every path
of the chain (authentication, tenant, rate limit, error boundary, deadlines) through a real
server and a real client.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import wrappers_pb2

from server.auth.principal import current_principal, current_tenant
from server.auth.scopes import CHAT_READ, CHAT_WRITE, REQUIRED_SCOPES
from server.domain.errors import FieldViolation, InvalidArgument, NotFound

SERVICE = "test.v1.Probe"
ECHO = f"/{SERVICE}/Echo"
WRITE = f"/{SERVICE}/Write"
FAIL = f"/{SERVICE}/Fail"
INVALID = f"/{SERVICE}/Invalid"
SLOW = f"/{SERVICE}/Slow"
STREAM = f"/{SERVICE}/Stream"
UNLISTED = f"/{SERVICE}/Unlisted"

PROBE_SCOPES = {
    **REQUIRED_SCOPES,
    ECHO: CHAT_READ,
    WRITE: CHAT_WRITE,
    FAIL: CHAT_READ,
    INVALID: CHAT_READ,
    SLOW: CHAT_READ,
    STREAM: CHAT_READ,
}

SECRET_DETAIL = "db password is hunter2"


class ProbeState:
    """What the handlers observed, for assertions."""

    def __init__(self) -> None:
        self.slow_started = asyncio.Event()
        self.slow_cancelled = asyncio.Event()


def _who() -> wrappers_pb2.StringValue:
    principal = current_principal()
    return wrappers_pb2.StringValue(value=f"{current_tenant().id}/{principal.subject}")


def probe_handler(state: ProbeState) -> grpc.GenericRpcHandler[Any, Any]:
    """The probe service's handlers."""

    async def echo(_request: wrappers_pb2.StringValue, _context: object) -> Any:
        return _who()

    async def fail(_request: wrappers_pb2.StringValue, _context: object) -> Any:
        raise RuntimeError(SECRET_DETAIL)

    async def invalid(_request: wrappers_pb2.StringValue, _context: object) -> Any:
        raise InvalidArgument(
            "content is invalid",
            field_violations=[FieldViolation("content.text", "must not be empty")],
        )

    async def slow(_request: wrappers_pb2.StringValue, _context: object) -> Any:
        state.slow_started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            state.slow_cancelled.set()
            raise
        return _who()

    async def stream(
        _request: wrappers_pb2.StringValue, _context: object
    ) -> AsyncIterator[wrappers_pb2.StringValue]:
        for _ in range(3):
            yield _who()
        raise NotFound("conversation not found")

    def unary(fn: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(
            fn,
            request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.StringValue.SerializeToString,
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": unary(echo),
            "Write": unary(echo),
            "Fail": unary(fail),
            "Invalid": unary(invalid),
            "Slow": unary(slow),
            "Unlisted": unary(echo),
            "Stream": grpc.unary_stream_rpc_method_handler(
                stream,
                request_deserializer=wrappers_pb2.StringValue.FromString,
                response_serializer=wrappers_pb2.StringValue.SerializeToString,
            ),
        },
    )


def unary_call(channel: grpc.aio.Channel, method: str) -> Any:
    """A client callable for a unary probe method."""
    return channel.unary_unary(
        method,
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )


def stream_call(channel: grpc.aio.Channel, method: str) -> Any:
    """A client callable for the streaming probe method."""
    return channel.unary_stream(
        method,
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
