"""A reused request_id with a different request is refused (IDEMPOTENCY_KEY_REUSED), through a
real server; the same request is still answered from the first call's record."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from chat.v1 import session_service_pb2 as sessions_pb
from chat.v1 import session_service_pb2_grpc
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.error_details import details_of
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
# Request ids are the tenant's: other tests of the session use theirs.
SEND_ID, READ_ID = f"send-{uuid.uuid4().hex}", f"read-{uuid.uuid4().hex}"


@pytest.fixture
async def channel_of_client(
    start_server: StartServer, tmp_path: Path
) -> AsyncIterator[grpc.aio.Channel]:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield channel


@pytest.fixture
def client(channel_of_client: grpc.aio.Channel) -> ChatClient:
    return ChatClient(channel_of_client, "acme")


async def _reused(call: Awaitable[object]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    [info] = [d for d in details_of(refused.value) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert info.reason == "IDEMPOTENCY_KEY_REUSED"


async def test_send_message_refuses_a_reused_request_id(client: ChatClient) -> None:
    first = await client.send("hello", user_id="u-reuse", request_id=SEND_ID)
    assert await client.send("hello", user_id="u-reuse", request_id=SEND_ID) == first
    await _reused(client.send("a different text", user_id="u-reuse", request_id=SEND_ID))

    history = await client.call(
        "ListMessages", chat.ListMessagesRequest(conversation_id=first.conversation.id)
    )
    texts = [m.content.text.text for m in history.messages if m.sender_id == "u-reuse"]
    assert texts == ["hello"]


async def test_mark_read_refuses_a_reused_request_id(client: ChatClient) -> None:
    sent = await client.send("hello", user_id="u-read")
    conversation = sent.conversation.id
    read = chat.MarkReadRequest(
        conversation_id=conversation, up_to_sequence=sent.replies[0].sequence, request_id=READ_ID
    )
    first = await client.call("MarkRead", read)
    assert await client.call("MarkRead", read) == first
    other = chat.MarkReadRequest(conversation_id=conversation, up_to_sequence=1, request_id=READ_ID)
    await _reused(client.call("MarkRead", other))


async def test_close_and_session_calls_refuse_a_reused_request_id(
    client: ChatClient, channel_of_client: grpc.aio.Channel
) -> None:
    one = await client.send("hi", user_id="u-close-1")
    two = await client.send("hi", user_id="u-close-2")
    close_id = f"close-{uuid.uuid4().hex}"
    close = chat.CloseConversationRequest(conversation_id=one.conversation.id, request_id=close_id)
    first = await client.call("CloseConversation", close)
    assert await client.call("CloseConversation", close) == first
    await _reused(
        client.call(
            "CloseConversation",
            chat.CloseConversationRequest(conversation_id=two.conversation.id, request_id=close_id),
        )
    )
    still_open = await client.call(
        "GetConversation", chat.GetConversationRequest(conversation_id=two.conversation.id)
    )
    assert still_open.conversation.status == c.CONVERSATION_STATUS_ACTIVE

    sessions = session_service_pb2_grpc.SessionServiceStub(channel_of_client)
    update_id = f"update-{uuid.uuid4().hex}"

    def update(value: str) -> Awaitable[sessions_pb.UpdateSessionContextResponse]:
        request = sessions_pb.UpdateSessionContextRequest(
            session_id=two.session.id, request_id=update_id
        )
        request.context.update({"step": value})
        return sessions.UpdateSessionContext(request, metadata=client.metadata, timeout=10)

    first_update = await update("one")
    assert (await update("one")) == first_update
    await _reused(update("two"))
    got = await sessions.GetSession(
        sessions_pb.GetSessionRequest(session_id=two.session.id), metadata=client.metadata
    )
    assert got.session.context["step"] == "one"
