"""The gateway's calls to the chat server, each made with the visitor's own token (the server
holds a ``chat:web`` token to the visitor's own web conversations), and their errors
translated once into what a browser may see."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import grpc

from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from webhook_bridge.web.visitors import Visitor

ResponseT = TypeVar("ResponseT")

#: SendMessage waits for the responder's replies; a slow responder is answered within this.
SEND_TIMEOUT_SECONDS = 30.0
CALL_TIMEOUT_SECONDS = 5.0
#: A media download, bytes included (a slow browser holds the call open while it reads).
MEDIA_TIMEOUT_SECONDS = 60.0
#: Codes a client may retry (the widget keeps the message pending and sends it again).
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
#: Codes whose details the server wrote for callers (domain errors); others get a fixed text.
_SHOWN = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


class ChatCallError(Exception):
    """A call the server refused or could not answer: an UPPER_SNAKE code and a reason."""

    def __init__(self, code: str, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.retryable = retryable


def call_error(exc: grpc.aio.AioRpcError) -> ChatCallError:
    """What the browser is told of a failed call (never an INTERNAL error's own words)."""
    status = exc.code()
    reason = (exc.details() or status.name.lower())[:300] if status in _SHOWN else ""
    if status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        reason = "the chat service is unavailable; retrying"
    return ChatCallError(
        status.name, reason or "the chat service could not do this", retryable=status in RETRYABLE
    )


def _metadata(visitor: Visitor) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {visitor.token}"),)


class VisitorChat:
    """ChatService as one visitor."""

    def __init__(self, *, channel: grpc.aio.Channel) -> None:
        self._stub = chat_service_pb2_grpc.ChatServiceStub(channel)

    async def active_conversation(self, visitor: Visitor) -> common_pb2.Conversation | None:
        """The visitor's active web conversation, if it has one."""
        request = chat_service_pb2.ListConversationsRequest(
            page_size=1, status=common_pb2.CONVERSATION_STATUS_ACTIVE
        )
        try:
            reply = await self._stub.ListConversations(
                request,
                metadata=_metadata(visitor),
                timeout=CALL_TIMEOUT_SECONDS,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc) from None
        return reply.conversations[0] if reply.conversations else None

    async def send(
        self, visitor: Visitor, request: chat_service_pb2.SendMessageRequest
    ) -> chat_service_pb2.SendMessageResponse:
        """SendMessage as the visitor."""
        try:
            response: chat_service_pb2.SendMessageResponse = await self._stub.SendMessage(
                request,
                metadata=_metadata(visitor),
                timeout=SEND_TIMEOUT_SECONDS,
                wait_for_ready=True,
            )
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc) from None
        return response

    async def typing(self, visitor: Visitor, conversation_id: str, typing: bool) -> None:
        """SendTypingIndicator as the visitor."""
        try:
            await self._stub.SendTypingIndicator(
                chat_service_pb2.SendTypingIndicatorRequest(
                    conversation_id=conversation_id,
                    participant_id=visitor.subject,
                    typing=typing,
                ),
                metadata=_metadata(visitor),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc) from None

    async def mark_read(self, visitor: Visitor, conversation_id: str, up_to: int) -> None:
        """MarkRead as the visitor."""
        try:
            await self._stub.MarkRead(
                chat_service_pb2.MarkReadRequest(
                    conversation_id=conversation_id, up_to_sequence=up_to
                ),
                metadata=_metadata(visitor),
                timeout=CALL_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            raise call_error(exc) from None

    async def media(
        self, visitor: Visitor, conversation_id: str, message_id: str
    ) -> AsyncGenerator[chat_service_pb2.GetMessageMediaResponse]:
        """GetMessageMedia as the visitor: the description first, then the bytes."""
        call = self._stub.GetMessageMedia(
            chat_service_pb2.GetMessageMediaRequest(
                conversation_id=conversation_id, message_id=message_id
            ),
            metadata=_metadata(visitor),
            timeout=MEDIA_TIMEOUT_SECONDS,
        )
        async for part in _relayed(call):
            yield part

    async def events(
        self, visitor: Visitor, conversation_id: str, after_sequence: int
    ) -> AsyncIterator[chat_service_pb2.StreamConversationEventsResponse]:
        """The conversation's events after ``after_sequence``, then live ones."""
        call = self._stub.StreamConversationEvents(
            chat_service_pb2.StreamConversationEventsRequest(
                conversation_id=conversation_id, after_sequence=after_sequence
            ),
            metadata=_metadata(visitor),
            wait_for_ready=True,
        )
        async for event in _relayed(call):
            yield event


async def _relayed(
    call: grpc.aio.UnaryStreamCall[Any, ResponseT],
) -> AsyncGenerator[ResponseT]:
    """A server stream's responses, its failure as a ChatCallError; the call is cancelled when
    the consumer stops early."""
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as exc:
        raise call_error(exc) from None
    finally:
        call.cancel()
