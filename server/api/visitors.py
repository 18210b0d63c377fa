"""What a web chat visitor (a ``chat:web`` token) may do within the methods it reaches: its
own user on the WEB channel, its own conversations. The gateway asks the same, but the server
is the guard that counts: a visitor token taken out of a browser reaches nothing else.

Another's conversation is NOT_FOUND, as another tenant's is (the visitor cannot tell them
apart from ids that do not exist); a request that names another user or channel is
PERMISSION_DENIED with a reason.
"""

from __future__ import annotations

from chat.v1 import chat_service_pb2, common_pb2
from server.auth.principal import Principal
from server.domain.errors import NotFound, PermissionDenied
from server.services.conversations import ConversationService

WEB = common_pb2.CHANNEL_TYPE_WEB


def own_send(caller: Principal, request: chat_service_pb2.SendMessageRequest) -> None:
    """A visitor writes as itself, on the web channel."""
    if not caller.visitor:
        return
    if request.user_id and request.user_id != caller.subject:
        raise PermissionDenied(
            "a web visitor writes as its own user only", reason="VISITOR_USER_MISMATCH"
        )
    if request.channel not in (WEB, common_pb2.CHANNEL_TYPE_UNSPECIFIED):
        raise PermissionDenied(
            "a web visitor writes on the web channel only", reason="VISITOR_CHANNEL_NOT_WEB"
        )
    if request.content.WhichOneof("kind") == "media" and (
        request.content.media.WhichOneof("source") != "data"
    ):
        # Stored media ids name other users' files, and URLs make the server fetch for a
        # browser: a visitor uploads bytes (through the gateway) only.
        raise PermissionDenied(
            "a web visitor sends media as bytes only", reason="VISITOR_MEDIA_SOURCE"
        )
    request.user_id = caller.subject
    request.channel = WEB


async def own_conversation(
    caller: Principal, conversations: ConversationService, conversation_id: str
) -> None:
    """A visitor reaches its own web conversations only (NOT_FOUND for any other)."""
    if not caller.visitor or not conversation_id:
        return
    conversation = await conversations.get_cached(caller.tenant_id, conversation_id)
    if conversation.user_id != caller.subject or conversation.channel != WEB:
        raise NotFound("conversation not found", reason="CONVERSATION_NOT_FOUND")


def own_filters(caller: Principal, request: chat_service_pb2.ListConversationsRequest) -> None:
    """A visitor lists its own web conversations only."""
    if not caller.visitor:
        return
    if request.user_id not in ("", caller.subject) or request.channel not in (
        WEB,
        common_pb2.CHANNEL_TYPE_UNSPECIFIED,
    ):
        raise PermissionDenied(
            "a web visitor lists its own web conversations only", reason="VISITOR_USER_MISMATCH"
        )
    request.user_id = caller.subject
    request.channel = WEB


def own_typing(caller: Principal, request: chat_service_pb2.SendTypingIndicatorRequest) -> None:
    """A visitor types as itself, on the end user's side."""
    if not caller.visitor:
        return
    if request.participant_id != caller.subject or request.direction not in (
        common_pb2.MESSAGE_DIRECTION_UNSPECIFIED,
        common_pb2.MESSAGE_DIRECTION_INBOUND,
    ):
        raise PermissionDenied(
            "a web visitor types as its own user only", reason="VISITOR_USER_MISMATCH"
        )
