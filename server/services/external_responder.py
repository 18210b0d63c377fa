"""Replies from an external ResponderService over gRPC, with a deadline and a fallback.

A slow, failing or unreachable responder never fails SendMessage: the user gets the fallback
reply, and the failure goes to the log.
"""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from google.protobuf import json_format, struct_pb2

from chat.v1 import common_pb2, responder_service_pb2, responder_service_pb2_grpc
from server.services.composing import MAX_REPLIES
from server.services.ports import MessageRepository
from server.services.responder import Reply, Responder, RuleBasedResponder

log = structlog.get_logger("chat.responder")

HISTORY = 20

FALLBACK_TEXT = "Sorry, I can't answer right now. Please try again in a moment."


class GrpcResponder:
    """Calls ResponderService.GenerateReply on ``channel``."""

    def __init__(
        self,
        *,
        channel: grpc.aio.Channel,
        messages: MessageRepository,
        timeout_seconds: float,
    ) -> None:
        self._stub = responder_service_pb2_grpc.ResponderServiceStub(channel)
        self._messages = messages
        self._timeout = timeout_seconds

    async def reply(
        self,
        *,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        message: common_pb2.Message,
        context: dict[str, Any],
    ) -> Reply:
        """The external responder's replies, or the fallback."""
        recent = await self._messages.history(
            tenant_id, conversation.id, after_sequence=None, newest_first=True, limit=HISTORY
        )
        session_context = struct_pb2.Struct()
        session_context.update(context)
        request = responder_service_pb2.GenerateReplyRequest(
            tenant_id=tenant_id,
            conversation=conversation,
            message=message,
            history=list(reversed(recent)),
            session_context=session_context,
        )
        try:
            response = await self._stub.GenerateReply(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "responder failed; sending the fallback reply",
                code=exc.code().name,
                conversation_id=conversation.id,
            )
            return fallback()
        # Empty contents are dropped; zero replies is a valid answer (nothing to say).
        replies = tuple(c for c in response.replies if c.WhichOneof("kind"))[:MAX_REPLIES]
        return Reply(contents=replies, context_updates=_updates(response.context_updates))


def fallback() -> Reply:
    """What the user gets when the responder cannot answer."""
    return Reply(contents=(common_pb2.Content(text=common_pb2.TextContent(text=FALLBACK_TEXT)),))


def _updates(updates: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(updates)


def responder_for(
    target: str | None, messages: MessageRepository, *, timeout_seconds: float
) -> tuple[Responder, grpc.aio.Channel | None]:
    """The external ResponderService at ``target`` (CHAT_RESPONDER_TARGET), or the rules when
    none is set; and the channel to close at the end."""
    if not target:
        return RuleBasedResponder(), None
    channel = grpc.aio.insecure_channel(target)
    return GrpcResponder(
        channel=channel, messages=messages, timeout_seconds=timeout_seconds
    ), channel
