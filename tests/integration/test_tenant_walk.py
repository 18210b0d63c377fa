"""The tenant walk: every RPC of every served service, called with tenant A's token against
tenant B's data, answers NOT_FOUND and shows nothing of B.

The RPC list comes from the contract. An RPC is either walked here or listed as pending (and
then must still answer UNIMPLEMENTED): implementing one without adding its walk fails this test.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from chat.v1 import (
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    chat_service_pb2_grpc,
    delivery_service_pb2,
    delivery_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
    tenant_service_pb2,
    tenant_service_pb2_grpc,
)
from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from devstack.tokens import mint_dev_token
from tests.support.chat_client import JWT_SETTINGS, SECRET, TENANTS, ChatClient
from tests.support.contract import served_methods
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
ALL_SCOPES = ("chat:read", "chat:write", "chat:ingest", "chat:admin")

#: RPCs whose implementations arrive with later issues. Each must answer UNIMPLEMENTED;
#: when one is implemented, move it to WALKS with its cross-tenant case.
PENDING: set[str] = set()


class Victim:
    """Tenant B's data: what the walk tries to reach."""

    def __init__(self, sent: chat.SendMessageResponse) -> None:
        self.conversation_id = sent.conversation.id
        self.session_id = sent.session.id
        self.message_id = sent.message.id
        self.reply_id = sent.replies[0].id if sent.replies else ""
        self.secret_text = sent.message.content.text.text


def walks(victim: Victim) -> dict[str, tuple[str, str, Any]]:
    """method -> (stub name, RPC name, request aimed at the victim's data)."""
    context = struct_pb2.Struct()
    context.update({"stolen": True})
    cid, sid = victim.conversation_id, victim.session_id
    return {
        "/chat.v1.ChatService/SendMessage": (
            "chat",
            "SendMessage",
            chat.SendMessageRequest(
                user_id="attacker",
                channel=1,
                conversation_id=cid,
                content={"text": {"text": "hi"}},  # type: ignore[arg-type]
            ),
        ),
        "/chat.v1.ChatService/GetConversation": (
            "chat",
            "GetConversation",
            chat.GetConversationRequest(conversation_id=cid),
        ),
        "/chat.v1.ChatService/ListConversations": (
            "chat",
            "ListConversations",
            chat.ListConversationsRequest(),
        ),
        "/chat.v1.ChatService/CloseConversation": (
            "chat",
            "CloseConversation",
            chat.CloseConversationRequest(conversation_id=cid),
        ),
        "/chat.v1.ChatService/ListMessages": (
            "chat",
            "ListMessages",
            chat.ListMessagesRequest(conversation_id=cid),
        ),
        "/chat.v1.ChatService/SearchMessages": (
            "chat",
            "SearchMessages",
            chat.SearchMessagesRequest(query=victim.secret_text, conversation_id=cid),
        ),
        "/chat.v1.ChatService/ExportConversation": (
            "chat",
            "ExportConversation",
            chat.ExportConversationRequest(conversation_id=cid, format=chat.EXPORT_FORMAT_JSONL),
        ),
        "/chat.v1.ChatService/StreamConversationEvents": (
            "chat",
            "StreamConversationEvents",
            chat.StreamConversationEventsRequest(conversation_id=cid, after_sequence=0),
        ),
        "/chat.v1.ChatService/SendTypingIndicator": (
            "chat",
            "SendTypingIndicator",
            chat.SendTypingIndicatorRequest(conversation_id=cid, participant_id="attacker"),
        ),
        "/chat.v1.ChatService/MarkRead": (
            "chat",
            "MarkRead",
            chat.MarkReadRequest(conversation_id=cid, up_to_sequence=2),
        ),
        "/chat.v1.ChatService/GetMessageMedia": (
            "chat",
            "GetMessageMedia",
            chat.GetMessageMediaRequest(conversation_id=cid, message_id=victim.message_id),
        ),
        "/chat.v1.SessionService/GetSession": (
            "session",
            "GetSession",
            session_service_pb2.GetSessionRequest(session_id=sid),
        ),
        "/chat.v1.SessionService/UpdateSessionContext": (
            "session",
            "UpdateSessionContext",
            session_service_pb2.UpdateSessionContextRequest(session_id=sid, context=context),
        ),
        "/chat.v1.SessionService/EndSession": (
            "session",
            "EndSession",
            session_service_pb2.EndSessionRequest(session_id=sid),
        ),
        "/chat.v1.TenantService/UpsertTenant": (
            "tenant",
            "UpsertTenant",
            # The id is output only: the call acts on the caller's tenant, never on B.
            tenant_service_pb2.UpsertTenantRequest(
                tenant=tenant_service_pb2.Tenant(id="globex", enabled=False)
            ),
        ),
        "/chat.v1.TenantService/GetTenant": (
            "tenant",
            "GetTenant",
            tenant_service_pb2.GetTenantRequest(),
        ),
        "/chat.v1.IngestService/IngestEvents": (
            "ingest",
            "IngestEvents",
            ingest_service_pb2.IngestEventsRequest(
                events=[
                    {  # type: ignore[list-item]
                        "platform_event_id": "walk-1",
                        "channel": c.CHANNEL_TYPE_WHATSAPP,
                        "platform_user_id": "attacker",
                        "channel_conversation_id": cid,
                        "status": {
                            "status": c.DELIVERY_STATUS_READ,
                            "platform_message_ids": [victim.message_id],
                        },
                    },
                    {  # type: ignore[list-item]
                        "platform_event_id": "walk-2",
                        "channel": c.CHANNEL_TYPE_WHATSAPP,
                        "platform_user_id": "attacker",
                        "typing": {"typing": True},
                    },
                ]
            ),
        ),
        "/chat.v1.DeliveryService/GetDeliveryStatus": (
            "delivery",
            "GetDeliveryStatus",
            delivery_service_pb2.GetDeliveryStatusRequest(message_id=victim.reply_id),
        ),
        "/chat.v1.DeliveryService/ListFailedDeliveries": (
            "delivery",
            "ListFailedDeliveries",
            delivery_service_pb2.ListFailedDeliveriesRequest(),
        ),
        "/chat.v1.DeliveryService/RetryDelivery": (
            "delivery",
            "RetryDelivery",
            delivery_service_pb2.RetryDeliveryRequest(message_id=victim.reply_id),
        ),
        "/chat.v1.DeliveryService/CheckChannel": (
            "delivery",
            "CheckChannel",
            delivery_service_pb2.CheckChannelRequest(channel=c.CHANNEL_TYPE_SLACK),
        ),
        "/chat.v1.AnalyticsService/GetTenantAnalytics": (
            "analytics",
            "GetTenantAnalytics",
            analytics_service_pb2.GetTenantAnalyticsRequest(
                time_range={  # type: ignore[arg-type]
                    "start_time": {"seconds": int(time.time()) - 3600},
                    "end_time": {"seconds": int(time.time()) + 60},
                }
            ),
        ),
        "/chat.v1.AuditService/ListAuditEntries": (
            "audit",
            "ListAuditEntries",
            audit_service_pb2.ListAuditEntriesRequest(resource_id=cid),
        ),
        "/chat.v1.AuditService/VerifyAuditChain": (
            "audit",
            "VerifyAuditChain",
            audit_service_pb2.VerifyAuditChainRequest(),
        ),
    }


@pytest.fixture
async def channel(start_server: StartServer, tmp_path: Path) -> AsyncIterator[grpc.aio.Channel]:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield channel


async def test_every_rpc_is_walked_or_pending() -> None:
    walked = set(walks(Victim(chat.SendMessageResponse())))
    assert walked | PENDING == served_methods()
    assert not walked & PENDING


async def test_tenant_a_cannot_reach_tenant_b(channel: grpc.aio.Channel) -> None:
    # On WhatsApp, so B also has a delivery record (failed: globex has no WhatsApp set up).
    victim = Victim(
        await ChatClient(channel, "globex").send(
            "globex secret: merger on friday",
            channel=c.CHANNEL_TYPE_WHATSAPP,
            channel_conversation_id="15550001111",
        )
    )
    token = mint_dev_token(secret=SECRET, tenant_id="acme", subject="attacker", scopes=ALL_SCOPES)
    metadata = (("authorization", f"Bearer {token}"),)
    stubs = {
        "chat": chat_service_pb2_grpc.ChatServiceStub(channel),
        "session": session_service_pb2_grpc.SessionServiceStub(channel),
        "tenant": tenant_service_pb2_grpc.TenantServiceStub(channel),
        "ingest": ingest_service_pb2_grpc.IngestServiceStub(channel),
        "delivery": delivery_service_pb2_grpc.DeliveryServiceStub(channel),
        "analytics": analytics_service_pb2_grpc.AnalyticsServiceStub(channel),
        "audit": audit_service_pb2_grpc.AuditServiceStub(channel),
    }
    secrets = (
        victim.conversation_id,
        victim.session_id,
        victim.message_id,
        victim.reply_id,
        "merger",
        "globex",
    )

    def leaks(payload: bytes | str) -> list[str]:
        text = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        return [secret for secret in secrets if secret in text]

    for method, (stub_name, rpc, request) in walks(victim).items():
        code, details, replies = await outcome(getattr(stubs[stub_name], rpc), request, metadata)
        assert not leaks(details), method
        for reply in replies:
            assert not leaks(reply.SerializeToString()), method
        if method == "/chat.v1.TenantService/UpsertTenant":
            # The attacker's own tenant comes from the tenants file, which the API may not
            # change; B stays enabled (checked below by B's own calls).
            assert code == grpc.StatusCode.FAILED_PRECONDITION, code
        elif method == "/chat.v1.DeliveryService/CheckChannel":
            # It names no tenant: the caller's own, whose Slack is not configured.
            assert code == grpc.StatusCode.FAILED_PRECONDITION, code
        elif code != grpc.StatusCode.OK:
            assert code == grpc.StatusCode.NOT_FOUND, (method, code)
        else:
            # Only calls that act on the caller's own tenant may succeed.
            assert method in (
                "/chat.v1.ChatService/ListConversations",
                "/chat.v1.TenantService/GetTenant",
                "/chat.v1.IngestService/IngestEvents",
                "/chat.v1.DeliveryService/ListFailedDeliveries",
                "/chat.v1.AnalyticsService/GetTenantAnalytics",
                "/chat.v1.AuditService/ListAuditEntries",
                "/chat.v1.AuditService/VerifyAuditChain",
            ), f"{method} reached another tenant's data"

    for method in sorted(PENDING):
        service, rpc = method.strip("/").split("/")
        stub = stubs[service.split(".")[-1].removesuffix("Service").lower()]
        code, _, _ = await outcome(getattr(stub, rpc), _empty_request(method), metadata)
        assert code == grpc.StatusCode.UNIMPLEMENTED, method

    # And B's data is intact.
    still = await ChatClient(channel, "globex").call(
        "GetConversation", chat.GetConversationRequest(conversation_id=victim.conversation_id)
    )
    assert still.conversation.message_count == 2
    history = await ChatClient(channel, "globex").call(
        "ListMessages", chat.ListMessagesRequest(conversation_id=victim.conversation_id)
    )
    # MarkRead and RetryDelivery by the attacker changed nothing.
    assert history.messages[0].delivery_status == c.DELIVERY_STATUS_UNSPECIFIED
    assert history.messages[1].delivery_status in (
        c.DELIVERY_STATUS_QUEUED,
        c.DELIVERY_STATUS_FAILED,
    )


async def outcome(
    callable_: Any, request: Any, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str, list[Any]]:
    """Call a unary or streaming RPC; its status, error details and replies."""
    call = callable_(request, metadata=metadata, timeout=10)
    replies: list[Any] = []
    try:
        # Appended one by one: replies streamed before an error are checked for leaks too.
        if hasattr(call, "__aiter__"):
            async for reply in call:
                replies.append(reply)
        else:
            replies.append(await call)
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", replies
    return grpc.StatusCode.OK, "", replies


def _empty_request(method: str) -> Any:
    from chat.v1 import chat_service_pb2  # noqa: PLC0415

    service, rpc = method.strip("/").split("/")
    modules = {
        "chat.v1.ChatService": chat_service_pb2,
        "chat.v1.IngestService": ingest_service_pb2,
        "chat.v1.DeliveryService": delivery_service_pb2,
        "chat.v1.TenantService": tenant_service_pb2,
        "chat.v1.SessionService": session_service_pb2,
    }
    module = modules[service]
    descriptor = module.DESCRIPTOR.services_by_name[service.split(".")[-1]].methods_by_name[rpc]
    return getattr(module, descriptor.input_type.name)()


#: What a visitor token may call at all; its other calls are refused before any data is read.
VISITOR_METHODS = {
    "/chat.v1.ChatService/SendMessage",
    "/chat.v1.ChatService/GetConversation",
    "/chat.v1.ChatService/ListConversations",
    "/chat.v1.ChatService/ListMessages",
    "/chat.v1.ChatService/StreamConversationEvents",
    "/chat.v1.ChatService/SendTypingIndicator",
    "/chat.v1.ChatService/MarkRead",
    "/chat.v1.ChatService/GetMessageMedia",
}


async def test_a_web_visitor_reaches_only_its_own_web_conversations(
    channel: grpc.aio.Channel,
) -> None:
    # The victim is another user of the visitor's own tenant, on the web channel: the token
    # is globex's, so only the chat:web rules stand between them.
    victim = Victim(await ChatClient(channel, "globex").send("globex secret: merger on friday"))
    token = mint_dev_token(
        secret=SECRET, tenant_id="globex", subject="visitor-walk", scopes=("chat:web",)
    )
    metadata = (("authorization", f"Bearer {token}"),)
    stubs = {
        "chat": chat_service_pb2_grpc.ChatServiceStub(channel),
        "session": session_service_pb2_grpc.SessionServiceStub(channel),
        "tenant": tenant_service_pb2_grpc.TenantServiceStub(channel),
        "ingest": ingest_service_pb2_grpc.IngestServiceStub(channel),
        "delivery": delivery_service_pb2_grpc.DeliveryServiceStub(channel),
        "analytics": analytics_service_pb2_grpc.AnalyticsServiceStub(channel),
        "audit": audit_service_pb2_grpc.AuditServiceStub(channel),
    }
    secrets = (victim.conversation_id, victim.session_id, victim.message_id, "merger")
    for method, (stub_name, rpc, request) in walks(victim).items():
        code, details, replies = await outcome(getattr(stubs[stub_name], rpc), request, metadata)
        text = details + "".join(r.SerializeToString().decode("utf-8", "replace") for r in replies)
        assert not [s for s in secrets if s in text], method
        if method not in VISITOR_METHODS:
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code)
            assert "visitor" in details, details
        elif method == "/chat.v1.ChatService/ListConversations":
            assert code == grpc.StatusCode.OK, code  # its own: none yet
            assert not replies[0].conversations
        elif method in (
            "/chat.v1.ChatService/SendMessage",
            "/chat.v1.ChatService/SendTypingIndicator",
        ):
            # Written as another user ("attacker"): refused before the conversation is read.
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, code)
        else:
            assert code == grpc.StatusCode.NOT_FOUND, (method, code)

    chat_stub = stubs["chat"]
    # Not as another user, nor on another channel, nor into another's conversation, nor with
    # media stored earlier (another user's) or fetched from a URL.
    for request in (
        chat.SendMessageRequest(content={"media": {"media_id": "m-1"}}),  # type: ignore[arg-type]
        chat.SendMessageRequest(content={"media": {"url": "http://127.0.0.1/x"}}),  # type: ignore[arg-type]
        chat.SendMessageRequest(user_id="someone-else", content={"text": {"text": "x"}}),  # type: ignore[arg-type]
        chat.SendMessageRequest(channel=c.CHANNEL_TYPE_SLACK, content={"text": {"text": "x"}}),  # type: ignore[arg-type]
    ):
        code, _, _ = await outcome(chat_stub.SendMessage, request, metadata)
        assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _, _ = await outcome(
        chat_stub.SendMessage,
        chat.SendMessageRequest(
            conversation_id=victim.conversation_id,
            content={"text": {"text": "x"}},  # type: ignore[arg-type]
        ),
        metadata,
    )
    assert code == grpc.StatusCode.NOT_FOUND
    # Its own conversation, as its own web user, works.
    own = await chat_stub.SendMessage(
        chat.SendMessageRequest(content={"text": {"text": "hello"}}),  # type: ignore[arg-type]
        metadata=metadata,
        timeout=10,
    )
    assert own.conversation.user_id == "visitor-walk"
    assert own.conversation.channel == c.CHANNEL_TYPE_WEB
    listed = await chat_stub.ListConversations(
        chat.ListConversationsRequest(), metadata=metadata, timeout=10
    )
    assert [x.id for x in listed.conversations] == [own.conversation.id]
    history = await chat_stub.ListMessages(
        chat.ListMessagesRequest(conversation_id=own.conversation.id), metadata=metadata, timeout=10
    )
    assert [m.sequence for m in history.messages] == [1, 2]
    # Another's message through its own conversation is not there either; its own text has
    # no media to give.
    for message_id, expected in (
        (victim.message_id, grpc.StatusCode.NOT_FOUND),
        (own.message.id, grpc.StatusCode.FAILED_PRECONDITION),
    ):
        code, _, _ = await outcome(
            chat_stub.GetMessageMedia,
            chat.GetMessageMediaRequest(conversation_id=own.conversation.id, message_id=message_id),
            metadata,
        )
        assert code == expected, (message_id, code)
    still = await ChatClient(channel, "globex").call(
        "GetConversation", chat.GetConversationRequest(conversation_id=victim.conversation_id)
    )
    assert still.conversation.message_count == 2
