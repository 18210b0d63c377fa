"""Requests whose bytes are not their method's message: INVALID_ARGUMENT, never UNKNOWN.

grpc decodes a request before any interceptor runs; these send raw bytes past the client's
serializer, as a broken or hostile client would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
import structlog
from google.rpc import error_details_pb2
from structlog.testing import capture_logs

from chat.v1 import chat_service_pb2
from devstack.tokens import mint_dev_token
from tests.support.error_details import details_of
from tests.support.servers import RunningServer
from tests.support.waiting import eventually

StartServer = Callable[..., Awaitable[RunningServer]]
SECRET = "malformed-test-secret-long-enough-for-hs256"
SEND = "/chat.v1.ChatService/SendMessage"
STREAM = "/chat.v1.ChatService/StreamConversationEvents"
UPDATE_CONTEXT = "/chat.v1.SessionService/UpdateSessionContext"


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); payloads here stay under 128 bytes or are
    encoded with a proper varint length."""
    length = len(payload)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        varint.append(byte | (0x80 if length else 0))
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(varint) + payload


def _nested_struct(depth: int) -> bytes:
    """A google.protobuf.Struct nested ``depth`` deep: {"a": {"a": ...}}."""
    struct = b""
    for _ in range(depth):
        value = _field(5, struct)  # Value.struct_value
        entry = _field(1, b"a") + _field(2, value)  # map entry: key, value
        struct = _field(1, entry)  # Struct.fields
    return struct


INVALID_UTF8 = _field(2, b"\xff\xfe")  # SendMessageRequest.user_id, a string
TRUNCATED = b"\x12\x40abc"  # user_id declares 64 bytes, carries 3
CORRUPT = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"  # a tag that is no varint
DEEP_STRUCT = _field(1, b"session-1") + _field(2, _nested_struct(101))


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(
        CHAT_JWT_SECRET=SECRET, CHAT_JWT_ISSUER="chat-service-dev", CHAT_JWT_AUDIENCE="chat-service"
    )


def _auth() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_dev_token(secret=SECRET, tenant_id='acme')}"),)


def _raw(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


@pytest.mark.parametrize(
    ("method", "body"),
    [
        pytest.param(SEND, INVALID_UTF8, id="invalid-utf8"),
        pytest.param(SEND, TRUNCATED, id="truncated"),
        pytest.param(SEND, CORRUPT, id="corrupt"),
        pytest.param(UPDATE_CONTEXT, DEEP_STRUCT, id="struct-101-deep"),
    ],
)
@pytest.mark.parametrize("token", [True, False], ids=["with-token", "without-token"])
async def test_undecodable_bytes_are_invalid_argument_with_the_request_id(
    server: RunningServer, method: str, body: bytes, *, token: bool
) -> None:
    metadata = (*(_auth() if token else ()), ("x-request-id", "req-bytes"))
    async with grpc.aio.insecure_channel(server.target) as channel:
        with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _raw(channel, method)(body, metadata=metadata, timeout=5)

            # The status can reach the client before the server's chain has unwound and
            # written the access line (CI once read the logs in between).
            async def logged() -> bool:
                return any(line["event"] == "rpc finished" for line in logs)

            await eventually(logged, "the access line", within=5)
    exc = caught.value
    assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.details()
    details = exc.details() or ""
    assert "Error" not in details, details
    assert "class" not in details, details
    [info] = [d for d in details_of(exc) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "MALFORMED_REQUEST"
    if body is DEEP_STRUCT:
        assert "nested too deeply" in details
    assert info.metadata["request_id"] == "req-bytes"
    assert ("x-request-id", "req-bytes") in tuple(await_metadata(exc))
    # One warning and the access line; no traceback, no error-level line.
    assert [line["log_level"] for line in logs if line["log_level"] in ("error", "critical")] == []
    assert not any("exc_info" in line for line in logs)
    [warning] = [line for line in logs if line["event"] == "request not decodable"]
    assert warning["request_id"] == "req-bytes"
    [access] = [line for line in logs if line["event"] == "rpc finished"]
    assert access["code"] == "INVALID_ARGUMENT"
    counted = server.server.metrics.registry.get_sample_value(
        "chat_malformed_requests_total", {"method": method}
    )
    assert counted == 1


def await_metadata(exc: grpc.aio.AioRpcError) -> tuple[tuple[str, str | bytes], ...]:
    """The response headers a failed call received."""
    return tuple(exc.initial_metadata() or ())


async def test_an_undecodable_stream_request_is_invalid_argument(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = channel.unary_stream(STREAM, request_serializer=None, response_deserializer=None)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call(TRUNCATED, metadata=_auth(), timeout=5):
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    [info] = [d for d in details_of(caught.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "MALFORMED_REQUEST"


async def test_the_server_still_answers_well_formed_calls_afterwards(
    server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        for body in (INVALID_UTF8, TRUNCATED, CORRUPT, DEEP_STRUCT):
            with pytest.raises(grpc.aio.AioRpcError):
                await _raw(channel, SEND)(body, metadata=_auth(), timeout=5)
        request = chat_service_pb2.SendMessageRequest(user_id="u-after", channel=1)
        request.content.text.text = "still here"
        raw = await _raw(channel, SEND)(request.SerializeToString(), metadata=_auth(), timeout=10)
    response = chat_service_pb2.SendMessageResponse.FromString(raw)
    assert response.message.content.text.text == "still here"
