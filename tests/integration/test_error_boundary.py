"""The error boundary and deadlines, through a real server and client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest
import structlog
from google.protobuf import wrappers_pb2
from google.rpc import error_details_pb2
from structlog.testing import capture_logs

from devstack.tokens import mint_dev_token
from tests.support.error_details import details_of
from tests.support.probe import (
    FAIL,
    INVALID,
    SECRET_DETAIL,
    SLOW,
    STREAM,
    stream_call,
    unary_call,
)
from tests.support.servers import RunningServer

StartServer = Callable[..., Awaitable[RunningServer]]
SECRET = "boundary-test-secret-long-enough-for-hs256"


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    return await start_server(
        CHAT_JWT_SECRET=SECRET, CHAT_JWT_ISSUER="chat-service-dev", CHAT_JWT_AUDIENCE="chat-service"
    )


def auth() -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {mint_dev_token(secret=SECRET, tenant_id='acme')}"),)


async def test_an_unexpected_error_is_internal_with_no_detail_and_a_request_id(
    server: RunningServer,
) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        with (
            capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs,
            pytest.raises(grpc.aio.AioRpcError) as caught,
        ):
            await unary_call(channel, FAIL)(
                wrappers_pb2.StringValue(),
                metadata=(*auth(), ("x-request-id", "req-boom")),
                timeout=5,
            )
    exc = caught.value
    assert exc.code() == grpc.StatusCode.INTERNAL
    assert SECRET_DETAIL not in (exc.details() or "")
    assert "RuntimeError" not in (exc.details() or "")
    assert "req-boom" in (exc.details() or "")
    [info] = [d for d in details_of(exc) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "INTERNAL"
    assert info.domain == "chat-service"
    assert info.metadata["request_id"] == "req-boom"
    # The detail goes to the log instead, under the same request id.
    [error] = [line for line in logs if line["event"] == "unexpected error"]
    assert error["request_id"] == "req-boom"
    assert SECRET_DETAIL in repr(error["exc_info"])


async def test_invalid_input_has_field_violations(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary_call(channel, INVALID)(
                wrappers_pb2.StringValue(), metadata=auth(), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "content is invalid"
    details = details_of(caught.value)
    [bad] = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    assert [(v.field, v.description) for v in bad.field_violations] == [
        ("content.text", "must not be empty")
    ]
    [info] = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "INVALID_ARGUMENT"


async def test_an_error_in_the_middle_of_a_stream_keeps_what_was_sent(
    server: RunningServer,
) -> None:
    received = []

    async def consume(channel: grpc.aio.Channel) -> None:
        call = stream_call(channel, STREAM)(wrappers_pb2.StringValue(), metadata=auth(), timeout=5)
        async for item in call:
            received.append(item.value)

    async with grpc.aio.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await consume(channel)
    assert received == ["acme/dev-user"] * 3
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    [info] = [d for d in details_of(caught.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "NOT_FOUND"


async def test_work_stops_when_the_deadline_passes(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await unary_call(channel, SLOW)(wrappers_pb2.StringValue(), metadata=auth(), timeout=2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.state.slow_started.is_set(), "the handler never ran within the deadline"
    await asyncio.wait_for(server.state.slow_cancelled.wait(), 5)


async def test_work_stops_when_the_client_cancels(server: RunningServer) -> None:
    async with grpc.aio.insecure_channel(server.target) as channel:
        call = unary_call(channel, SLOW)(wrappers_pb2.StringValue(), metadata=auth(), timeout=30)
        await asyncio.wait_for(server.state.slow_started.wait(), 10)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await asyncio.wait_for(server.state.slow_cancelled.wait(), 5)
