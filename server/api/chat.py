"""ChatService: proto in, service call, proto out."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2

from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from server.api import visitors
from server.api.pages import (
    cursor_int,
    decode_time_cursor,
    decode_token,
    encode_time_cursor,
    encode_token,
    page_size,
)
from server.api.times import checked_range, range_violations
from server.auth.principal import current_principal
from server.channels.base import TYPING, TYPING_OFF
from server.domain.clock import utc_now
from server.domain.conversations import ConversationFilter
from server.domain.violations import Violations
from server.interceptors.request_context import send_headers
from server.normalizers.text import normalize_text
from server.services.conversations import ConversationService
from server.services.idempotency import IdempotentRequests, idempotency_key
from server.services.message_media import MessageMediaService
from server.services.messages import MAX_ADDRESS_CHARS, MessageService
from server.services.platform_actions import PlatformActions
from server.services.streams import StreamService

T = TypeVar("T", common_pb2.Conversation, common_pb2.Message)
CLOSE_CONVERSATION = "CloseConversation"

MAX_REASON_CHARS = 256
MAX_QUERY_CHARS = 256
MAX_ID_CHARS = 128
_CONTENT_TYPES = {
    chat_service_pb2.EXPORT_FORMAT_JSONL: "application/x-ndjson",
    chat_service_pb2.EXPORT_FORMAT_CSV: "text/csv",
}


class ChatServicer(chat_service_pb2_grpc.ChatServiceServicer):
    """ChatService."""

    def __init__(
        self,
        *,
        messages: MessageService,
        conversations: ConversationService,
        streams: StreamService,
        media: MessageMediaService,
        actions: PlatformActions | None = None,
        requests: IdempotentRequests,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._requests = requests
        self._clock = clock
        self._messages = messages
        self._conversations = conversations
        self._streams = streams
        self._media = media
        self._actions = actions

    async def SendMessage(
        self, request: chat_service_pb2.SendMessageRequest, context: Any
    ) -> chat_service_pb2.SendMessageResponse:
        caller = current_principal()
        visitors.own_send(caller, request)
        await visitors.own_conversation(caller, self._conversations, request.conversation_id)
        return await self._messages.send(caller.tenant_id, caller.subject, request)

    async def GetConversation(
        self, request: chat_service_pb2.GetConversationRequest, context: Any
    ) -> chat_service_pb2.GetConversationResponse:
        _require_id("conversation_id", request.conversation_id)
        caller = current_principal()
        await visitors.own_conversation(caller, self._conversations, request.conversation_id)
        conversation = await self._conversations.get_cached(
            caller.tenant_id, request.conversation_id
        )
        return chat_service_pb2.GetConversationResponse(conversation=conversation)

    async def ListConversations(
        self, request: chat_service_pb2.ListConversationsRequest, context: Any
    ) -> chat_service_pb2.ListConversationsResponse:
        visitors.own_filters(current_principal(), request)
        violations = Violations()
        _check_filters(violations, request.user_id, request.channel, request.status)
        limit = violations.attempt(lambda: page_size(request.page_size), fallback=0)
        window = request.last_activity_time_range
        violations.extend(range_violations(window, "last_activity_time_range"))
        query = {
            "rpc": "ListConversations",
            "user": request.user_id,
            "channel": request.channel,
            "status": request.status,
            "range": window.SerializeToString().hex(),
        }
        after = violations.attempt(
            lambda: decode_time_cursor(request.page_token, query), fallback=None
        )
        violations.raise_any()
        activity_from, activity_to = checked_range(window, "last_activity_time_range")
        filters = ConversationFilter(
            user_id=request.user_id,
            channel=request.channel,
            status=request.status,
            activity_from=activity_from,
            activity_to=activity_to,
        )
        page = await self._conversations.list_page(
            current_principal().tenant_id, filters, after=after, limit=limit + 1
        )
        page, token = _newest_first_page(page, limit, query)
        return chat_service_pb2.ListConversationsResponse(conversations=page, next_page_token=token)

    async def CloseConversation(
        self, request: chat_service_pb2.CloseConversationRequest, context: Any
    ) -> chat_service_pb2.CloseConversationResponse:
        violations = Violations()
        violations.text(
            "conversation_id", request.conversation_id, limit=MAX_ID_CHARS, required=True
        )
        violations.text("reason", request.reason, limit=MAX_REASON_CHARS)
        violations.raise_any()
        caller = current_principal()

        async def close() -> chat_service_pb2.CloseConversationResponse:
            conversation = await self._conversations.close(
                caller.tenant_id, caller.subject, request.conversation_id, reason=request.reason
            )
            return chat_service_pb2.CloseConversationResponse(conversation=conversation)

        # Closing is idempotent in effect (a closed conversation comes back as it is); the
        # record makes a request_id used for another conversation or reason refused.
        return await self._requests.once_then_record(
            idempotency_key(caller.tenant_id, CLOSE_CONVERSATION, request),
            chat_service_pb2.CloseConversationResponse.FromString,
            close,
            clock=self._clock,
        )

    async def ListMessages(
        self, request: chat_service_pb2.ListMessagesRequest, context: Any
    ) -> chat_service_pb2.ListMessagesResponse:
        violations = Violations()
        violations.text(
            "conversation_id", request.conversation_id, limit=MAX_ID_CHARS, required=True
        )
        violations.enum("order", request.order, chat_service_pb2.MessageOrder.DESCRIPTOR)
        limit = violations.attempt(lambda: page_size(request.page_size), fallback=0)
        newest_first = request.order == chat_service_pb2.MESSAGE_ORDER_NEWEST_FIRST
        query = {
            "rpc": "ListMessages",
            "conversation": request.conversation_id,
            "newest_first": newest_first,
        }
        cursor = violations.attempt(lambda: decode_token(request.page_token, query), fallback=None)
        violations.raise_any()
        caller = current_principal()
        await visitors.own_conversation(caller, self._conversations, request.conversation_id)
        page = await self._conversations.history(
            caller.tenant_id,
            request.conversation_id,
            after_sequence=cursor_int(cursor, "seq") if cursor is not None else None,
            newest_first=newest_first,
            limit=limit + 1,
        )
        token = ""
        if len(page) > limit:
            page = page[:limit]
            token = encode_token(query, {"seq": page[-1].sequence})
        return chat_service_pb2.ListMessagesResponse(messages=page, next_page_token=token)

    async def SearchMessages(
        self, request: chat_service_pb2.SearchMessagesRequest, context: Any
    ) -> chat_service_pb2.SearchMessagesResponse:
        violations = Violations()
        needle = normalize_text(request.query[: 4 * MAX_QUERY_CHARS + 1]).text
        violations.text("conversation_id", request.conversation_id, limit=MAX_ID_CHARS)
        _check_filters(violations, "", request.channel, 0)
        if not 1 <= len(needle) <= MAX_QUERY_CHARS:
            violations.add("query", f"1 to {MAX_QUERY_CHARS} visible characters")
        limit = violations.attempt(lambda: page_size(request.page_size), fallback=0)
        window = request.create_time_range
        violations.extend(range_violations(window, "create_time_range"))
        query = {
            "rpc": "SearchMessages",
            "q": needle,
            "conversation": request.conversation_id,
            "channel": request.channel,
            "range": window.SerializeToString().hex(),
        }
        after = violations.attempt(
            lambda: decode_time_cursor(request.page_token, query), fallback=None
        )
        violations.raise_any()
        created_from, created_to = checked_range(window, "create_time_range")
        caller = current_principal()
        page = await self._conversations.search(
            caller.tenant_id,
            needle,
            actor_id=caller.subject,
            first_page=not request.page_token,
            conversation_id=request.conversation_id,
            channel=request.channel,
            created_from=created_from,
            created_to=created_to,
            after=after,
            limit=limit + 1,
        )
        page, token = _newest_first_page(page, limit, query)
        return chat_service_pb2.SearchMessagesResponse(messages=page, next_page_token=token)

    async def ExportConversation(
        self, request: chat_service_pb2.ExportConversationRequest, context: Any
    ) -> AsyncIterator[chat_service_pb2.ExportConversationResponse]:
        violations = Violations()
        violations.text(
            "conversation_id", request.conversation_id, limit=MAX_ID_CHARS, required=True
        )
        violations.enum(
            "format",
            request.format,
            chat_service_pb2.ExportFormat.DESCRIPTOR,
            required=True,
            allowed=_CONTENT_TYPES,
        )
        violations.raise_any()
        content_type = _CONTENT_TYPES[request.format]
        caller = current_principal()
        async for chunk in self._conversations.export(
            caller.tenant_id,
            caller.subject,
            request.conversation_id,
            csv_format=request.format == chat_service_pb2.EXPORT_FORMAT_CSV,
        ):
            yield chat_service_pb2.ExportConversationResponse(
                data=chunk.data, content_type=content_type, message_count=chunk.message_count
            )
            content_type = ""  # on the first chunk only

    async def StreamConversationEvents(  # type: ignore[override]  # writes, returns None
        self, request: chat_service_pb2.StreamConversationEventsRequest, context: Any
    ) -> None:
        # Written with context.write rather than yielded: each yielded response would be
        # handed up through the interceptor chain's generators (interceptors/call_chain.py)
        # on its way out; a written one goes straight to the call, and with a thousand
        # streams that hand-up costs more than the writes.
        violations = Violations()
        violations.text(
            "conversation_id", request.conversation_id, limit=MAX_ID_CHARS, required=True
        )
        after = request.after_sequence if request.HasField("after_sequence") else None
        if after is not None and after < 0:
            violations.add("after_sequence", "0 or more")
        violations.raise_any()
        caller = current_principal()
        await visitors.own_conversation(caller, self._conversations, request.conversation_id)
        events = self._streams.stream(
            caller.tenant_id,
            request.conversation_id,
            after_sequence=after,
            expires_at=caller.expires_at,
            # The headers tell the caller the stream is live: nothing published after is missed.
            on_live=lambda: send_headers(context),
        )
        async with contextlib.aclosing(events):  # a cancelled call unsubscribes at once
            async for event in events:
                await context.write(event)

    async def SendTypingIndicator(
        self, request: chat_service_pb2.SendTypingIndicatorRequest, context: Any
    ) -> chat_service_pb2.SendTypingIndicatorResponse:
        violations = Violations()
        violations.text(
            "conversation_id", request.conversation_id, limit=MAX_ID_CHARS, required=True
        )
        violations.text("participant_id", request.participant_id, limit=MAX_ID_CHARS, required=True)
        violations.enum("direction", request.direction, common_pb2.MessageDirection.DESCRIPTOR)
        violations.raise_any()
        caller = current_principal()
        visitors.own_typing(caller, request)
        await visitors.own_conversation(caller, self._conversations, request.conversation_id)
        tenant_id = caller.tenant_id
        # Unset means the end user, the usual caller of a web widget.
        direction = request.direction or common_pb2.MESSAGE_DIRECTION_INBOUND
        conversation = await self._streams.typing(
            tenant_id,
            request.conversation_id,
            participant_id=request.participant_id,
            typing=request.typing,
            direction=direction,
        )
        if direction == common_pb2.MESSAGE_DIRECTION_OUTBOUND and self._actions is not None:
            # The service side types: shown on the platform too, where it has an indicator.
            self._actions.schedule(
                tenant_id, conversation, TYPING if request.typing else TYPING_OFF
            )
        return chat_service_pb2.SendTypingIndicatorResponse()

    async def MarkRead(
        self, request: chat_service_pb2.MarkReadRequest, context: Any
    ) -> chat_service_pb2.MarkReadResponse:
        violations = Violations()
        violations.text(
            "conversation_id", request.conversation_id, limit=MAX_ID_CHARS, required=True
        )
        if request.up_to_sequence <= 0:
            violations.add("up_to_sequence", "required, positive")
        violations.text("request_id", request.request_id, limit=MAX_ID_CHARS)
        violations.raise_any()
        caller = current_principal()
        await visitors.own_conversation(caller, self._conversations, request.conversation_id)
        return await self._streams.mark_read(
            caller.tenant_id,
            caller.subject,
            request.conversation_id,
            up_to_sequence=request.up_to_sequence,
            request_id=request.request_id,
        )

    async def GetMessageMedia(
        self, request: chat_service_pb2.GetMessageMediaRequest, context: Any
    ) -> AsyncIterator[chat_service_pb2.GetMessageMediaResponse]:
        violations = Violations()
        violations.text(
            "conversation_id", request.conversation_id, limit=MAX_ID_CHARS, required=True
        )
        violations.text("message_id", request.message_id, limit=MAX_ID_CHARS, required=True)
        violations.raise_any()
        caller = current_principal()
        await visitors.own_conversation(caller, self._conversations, request.conversation_id)
        media = await self._media.get(caller.tenant_id, request.conversation_id, request.message_id)
        # The description goes first, alone: a gateway can answer its headers before the bytes.
        yield chat_service_pb2.GetMessageMediaResponse(
            mime_type=media.mime_type, file_name=media.file_name, size_bytes=media.size_bytes
        )
        # Closed on every exit, a cancelled call included: the GridFS cursor goes with it.
        async with contextlib.aclosing(media.chunks) as chunks:
            async for chunk in chunks:
                yield chat_service_pb2.GetMessageMediaResponse(data=chunk)


def _newest_first_page(page: list[T], limit: int, query: dict[str, Any]) -> tuple[list[T], str]:
    """Cut a page fetched with one extra row; the token continues after its last record,
    by (create_time, id), the order of pages sorted newest first."""
    if len(page) <= limit:
        return page, ""
    page = page[:limit]
    last = page[-1]
    created: timestamp_pb2.Timestamp = last.create_time
    return page, encode_time_cursor(query, created.ToDatetime(tzinfo=dt.UTC), last.id)


def _require_id(field: str, value: str) -> None:
    violations = Violations()
    violations.text(field, value, limit=MAX_ID_CHARS, required=True)
    violations.raise_any()


def _check_filters(violations: Violations, user_id: str, channel: int, status: int) -> None:
    violations.text("user_id", user_id, limit=MAX_ADDRESS_CHARS)
    violations.enum("channel", channel, common_pb2.ChannelType.DESCRIPTOR)
    violations.enum("status", status, common_pb2.ConversationStatus.DESCRIPTOR)
