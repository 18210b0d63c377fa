"""Property: whatever a client sends to any RPC, it gets a status that names its own mistake.

Every method of every served service gets requests drawn from its descriptor (any field, any
value its type holds) and mutated encodings (truncated, flipped, invalid UTF-8, random bytes),
with a token of every scope and without one, against a real server on the embedded stack. Never
INTERNAL, UNKNOWN or UNAVAILABLE, never a class name or a traceback in the answer, no
error-level log line, and a SendMessage that failed stored nothing. The server answers well
afterwards. The default profile is bounded for CI; `make fuzz` runs the long campaign.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from chat.v1 import (
    analytics_service_pb2,
    audit_service_pb2,
    chat_service_pb2,
    chat_service_pb2_grpc,
    delivery_service_pb2,
    ingest_service_pb2,
    session_service_pb2,
    tenant_service_pb2,
)
from devstack.stack import Endpoints
from devstack.tokens import mint_dev_token
from server.api.served import SERVED_SERVICES
from server.auth.scopes import CHAT_ADMIN, CHAT_INGEST, CHAT_READ, CHAT_WRITE
from server.repositories.mongo import MESSAGES
from tests.support.chat_client import JWT_SETTINGS, SECRET
from tests.support.servers import RunningServer, tenants_file
from tests.support.strategies import Known, message_of, mutated

StartServer = Callable[..., Awaitable[RunningServer]]
TENANT = "fuzz"
TENANTS = f"tenants:\n  - id: {TENANT}\n"
_MODULES = (
    chat_service_pb2,
    session_service_pb2,
    ingest_service_pb2,
    delivery_service_pb2,
    tenant_service_pb2,
    analytics_service_pb2,
    audit_service_pb2,
)
METHODS: list[MethodDescriptor] = [
    method
    for module in _MODULES
    for service in module.DESCRIPTOR.services_by_name.values()
    if service.full_name in SERVED_SERVICES
    for method in service.methods
]
#: What a client's own mistakes may earn; anything else is ours.
ALLOWED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_LEAKS = re.compile(r"Traceback|<class |\b[A-Z]\w+(Error|Exception)\b|File \"")
ALL_SCOPES = (CHAT_READ, CHAT_WRITE, CHAT_INGEST, CHAT_ADMIN)
# Shared across the examples of a test on purpose: one server, one log capture.
SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@pytest.fixture
async def server(start_server: StartServer, tmp_path: Path) -> RunningServer:
    return await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)


@pytest.fixture
async def channel(server: RunningServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri)
    yield client
    await client.close()


@pytest.fixture
async def known(channel: grpc.aio.Channel) -> Known:
    """Ids of a real conversation, its session and messages, for the strategies to use."""
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    request = chat_service_pb2.SendMessageRequest(user_id="fuzz-user", channel=1)
    request.content.text.text = "help"
    sent = await stub.SendMessage(request, metadata=_metadata(token=True), timeout=10)
    messages = [sent.message.id, *(reply.id for reply in sent.replies)]
    return {
        "conversation_id": [sent.conversation.id],
        "session_id": [sent.session.id],
        "message_id": messages,
        "reply_to_message_id": messages,
        "user_id": ["fuzz-user"],
        "participant_id": ["fuzz-user"],
    }


@pytest.fixture
def errors() -> Any:
    """Every error-level line the fuzzed calls cause (there must be none): lines of a call
    (they carry its request id) or of the fuzz tenant. Other lines of the process (tenants other
    tests stored, say) are not this test's."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        yield logs
    found = [
        line
        for line in logs
        if line.get("log_level") in ("error", "critical")
        and ("request_id" in line or line.get("tenant_id") == TENANT)
    ]
    assert found == [], found[:3]


def _metadata(*, token: bool) -> tuple[tuple[str, str], ...]:
    if not token:
        return ()
    minted = mint_dev_token(secret=SECRET, tenant_id=TENANT, subject="fuzzer", scopes=ALL_SCOPES)
    return (("authorization", f"Bearer {minted}"),)


async def _call(
    channel: grpc.aio.Channel, method: MethodDescriptor, body: bytes, *, token: bool
) -> grpc.StatusCode:
    """Send ``body`` to ``method``; its status code, checked for leaks."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = _metadata(token=token)
    failed: grpc.aio.AioRpcError | None = None
    try:
        if method.server_streaming:
            stream = channel.unary_stream(path, request_serializer=None, response_deserializer=None)
            async for _ in stream(body, metadata=metadata, timeout=3):
                pass
        else:
            unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            await unary(body, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as exc:
        failed = exc
    if failed is None:
        return grpc.StatusCode.OK
    code, details = failed.code(), failed.details() or ""
    assert not _LEAKS.search(details), (path, code, details)
    if method.server_streaming and code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return code  # a stream on a real conversation stays open: fine
    assert code in ALLOWED, (path, code, details)
    return code


async def _messages(mongo: AsyncMongoClient[dict[str, Any]]) -> int:
    return await mongo["chat"][MESSAGES].count_documents({"tenant_id": TENANT})


@pytest.mark.parametrize("method", METHODS, ids=lambda m: f"{m.containing_service.name}.{m.name}")
@SETTINGS
@given(data=st.data())
async def test_any_request_gets_a_status_that_names_the_callers_mistake(
    channel: grpc.aio.Channel,
    mongo: AsyncMongoClient[dict[str, Any]],
    errors: Any,
    known: Known,
    method: MethodDescriptor,
    data: st.DataObject,
) -> None:
    damaged = data.draw(st.booleans(), label="damaged")
    if damaged:
        body = data.draw(mutated(method.input_type, known), label="bytes")
    else:
        request: Message = data.draw(message_of(method.input_type, known), label="request")
        body = request.SerializeToString()
    token = data.draw(st.sampled_from([True, True, True, False]), label="token")
    before = await _messages(mongo) if method.name == "SendMessage" else 0
    code = await _call(channel, method, body, token=token)
    if method.name == "SendMessage" and code != grpc.StatusCode.OK:
        assert await _messages(mongo) == before, "a refused SendMessage stored something"


async def test_the_server_answers_after_the_campaign(channel: grpc.aio.Channel) -> None:
    cls = message_factory.GetMessageClass(chat_service_pb2.SendMessageRequest.DESCRIPTOR)
    request = cls(user_id="after-fuzz", channel=1)
    request.content.text.text = "still answering"
    method = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"].methods_by_name[
        "SendMessage"
    ]
    assert (
        await _call(channel, method, request.SerializeToString(), token=True) == grpc.StatusCode.OK
    )
