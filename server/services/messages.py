"""SendMessage: the message pipeline.

Validate and process the content, find or start the conversation, load or start the session,
generate the reply, then store both messages, the counters, the events and the idempotency
record in one transaction. Nothing is stored when any step before the commit fails.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from google.protobuf import json_format

from chat.v1 import chat_service_pb2, common_pb2, events_pb2
from server.domain.clock import utc_now
from server.domain.conversations import Recording
from server.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
)
from server.domain.messages import MessageRow, ProcessedContent, _took, build_message
from server.events.envelopes import envelope, stable_event_id
from server.processors.content import ContentProcessor
from server.repositories.deliveries import MongoDeliveries
from server.services.active_conversations import ActiveConversations
from server.services.event_writer import EventWriter
from server.services.group_commit import GroupCommit
from server.services.ports import (
    ConversationRepository,
    IdempotencyStore,
    MessageRepository,
    Outbox,
    SessionStore,
    TransactionRunner,
    Tx,
)
from server.services.responder import RESPONDER_ID, Responder
from server.services.streams import QuietLiveEvents, message_event

log = structlog.get_logger("chat.messages")

SEND_MESSAGE = "SendMessage"
MAX_ID_CHARS = 128
#: Platform addresses are longer than our ids (a Teams conversation id runs past 150
#: characters; a Slack or Teams conversation's user is "<chat id>/<user id>").
MAX_ADDRESS_CHARS = 640
MAX_METADATA_ENTRIES = 32
MAX_REPLIES = 5
WEB = common_pb2.CHANNEL_TYPE_WEB
CONVERSATION_CLOSED = "CONVERSATION_CLOSED"


class ConversationClosedError(Exception):
    """The conversation found for a message closed before the message was stored."""


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A user's message and the replies to it, ready to be stored."""

    tenant_id: str
    actor_id: str
    request: chat_service_pb2.SendMessageRequest
    conversation: common_pb2.Conversation
    session: common_pb2.Session
    messages: list[common_pb2.Message]
    search_texts: list[str]
    now: dt.datetime


class MessageService:
    """Takes an end user's message and answers it."""

    def __init__(
        self,
        *,
        conversations: ConversationRepository,
        messages: MessageRepository,
        sessions: SessionStore,
        outbox: Outbox,
        idempotency: IdempotencyStore,
        transactions: TransactionRunner,
        content: ContentProcessor,
        responder: Responder,
        events: EventWriter,
        live: QuietLiveEvents,
        deliveries: MongoDeliveries | None = None,
        on_events: Callable[[], None] = lambda: None,
        on_delivery: Callable[[], None] = lambda: None,
        on_batch: Callable[[int], None] = lambda _size: None,
        active: ActiveConversations,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._live = live
        self._active = active
        self._deliveries = deliveries
        self._on_delivery = on_delivery
        self._conversations = conversations
        self._messages = messages
        self._sessions = sessions
        self._outbox = outbox
        self._idempotency = idempotency
        self._transactions = transactions
        self._content = content
        self._responder = responder
        self._events = events
        self._on_events = on_events
        self._clock = clock
        self._commits: GroupCommit[_Exchange, chat_service_pb2.SendMessageResponse] = GroupCommit(
            self._store,
            key=lambda e: (e.tenant_id, e.conversation.id),
            on_batch=on_batch,
            on_orphan=self._finish_orphan,
            divisible=(AlreadyExists,),
        )

    async def send(
        self, tenant_id: str, actor_id: str, request: chat_service_pb2.SendMessageRequest
    ) -> chat_service_pb2.SendMessageResponse:
        """Store the message, answer it, and return both; ``actor_id`` is the caller."""
        _validate(request)
        if request.request_id:
            stored = await self._idempotency.get(tenant_id, SEND_MESSAGE, request.request_id)
            if stored is not None:
                return chat_service_pb2.SendMessageResponse.FromString(stored)
        processed = await self._content.process_inbound(
            tenant_id, request.content, channel=request.channel, field="content"
        )
        try:
            return await self._exchange(tenant_id, actor_id, request, processed)
        except ConversationClosedError:
            # Found by its user and channel, and closed before the message was stored (by
            # another process, say): once more, in a new conversation.
            return await self._exchange(tenant_id, actor_id, request, processed, retried=True)

    async def _exchange(
        self,
        tenant_id: str,
        actor_id: str,
        request: chat_service_pb2.SendMessageRequest,
        processed: ProcessedContent,
        *,
        retried: bool = False,
    ) -> chat_service_pb2.SendMessageResponse:
        """One try at storing and answering the message."""
        now = self._clock()
        conversation, session, started = await self._open(tenant_id, actor_id, request, now)
        inbound = build_message(
            conversation,
            processed,
            direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
            sender_id=request.user_id,
            now=now,
            reply_to=request.reply_to_message_id,
            metadata=dict(request.metadata),
        )
        outbound, replies = await self.compose_replies(
            tenant_id, conversation, inbound, session, now=now
        )
        texts = [processed.search_text] + [r.search_text for r in replies]
        try:
            response = await self._commits.submit(
                _Exchange(
                    tenant_id=tenant_id,
                    actor_id=actor_id,
                    request=request,
                    conversation=conversation,
                    session=session,
                    messages=[inbound, *outbound],
                    search_texts=texts,
                    now=now,
                )
            )
        except AlreadyExists:
            # A concurrent retry with the same request id committed first: answer as it did.
            stored = await self._idempotency.get(tenant_id, SEND_MESSAGE, request.request_id)
            if stored is None:
                raise
            return chat_service_pb2.SendMessageResponse.FromString(stored)
        except FailedPrecondition as exc:
            if exc.reason != CONVERSATION_CLOSED or request.conversation_id or retried:
                raise
            self._active.closed(tenant_id, conversation)
            raise ConversationClosedError from exc
        self._active.remember(tenant_id, response.conversation)
        await self._after_commit(tenant_id, response, now=now)
        if started:
            log.info("conversation started", conversation_id=conversation.id)
        return response

    async def _after_commit(
        self,
        tenant_id: str,
        response: chat_service_pb2.SendMessageResponse,
        *,
        now: dt.datetime,
    ) -> None:
        """Wake the relay and the delivery queue, push to the streams, keep the session."""
        self._on_events()
        if response.conversation.channel != WEB:
            self._on_delivery()
        await self.publish_committed(
            tenant_id,
            response.conversation,
            [response.message, *response.replies],
            response.session,
            now=now,
        )

    async def _finish_orphan(
        self, exchange: _Exchange, response: chat_service_pb2.SendMessageResponse
    ) -> None:
        """An exchange committed after its caller gave up: its after-commit work still runs."""
        try:
            await self._after_commit(exchange.tenant_id, response, now=exchange.now)
        except Exception:
            log.exception("after-commit work failed", conversation_id=exchange.conversation.id)

    async def session_for(
        self,
        tenant_id: str,
        actor_id: str,
        conversation: common_pb2.Conversation,
        *,
        now: dt.datetime,
    ) -> common_pb2.Session:
        """The conversation's session, started (SessionStarted) when it has none."""
        session, created = await self._sessions.get_or_create(tenant_id, conversation, now=now)
        if created:
            await self._events.write(
                tenant_id=tenant_id,
                actor_id=actor_id,
                conversation_id=conversation.id,
                now=now,
                event_id=stable_event_id(tenant_id, session.id, "started"),
                session_started=events_pb2.SessionStarted(session=session),
            )
        return session

    async def publish_committed(
        self,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        messages: Sequence[common_pb2.Message],
        session: common_pb2.Session,
        *,
        now: dt.datetime,
    ) -> None:
        """Push committed messages to the streams with the conversation's new state, and
        keep the session (touched at ``now``), in one Redis round trip. A Redis failure is
        logged, not raised (QuietLiveEvents): the messages are safe, and the session only
        lags."""
        self._sessions.touch(session, now=now)
        await self._live.publish(
            tenant_id,
            conversation.id,
            [message_event(m) for m in messages],
            conversation=conversation,
            session=session,
        )

    async def compose_replies(
        self,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        inbound: common_pb2.Message,
        session: common_pb2.Session,
        *,
        now: dt.datetime,
    ) -> tuple[list[common_pb2.Message], list[ProcessedContent]]:
        """Ask the responder, and build its replies (sequences not yet assigned); the
        session's context is updated in place and touched."""
        context = json_format.MessageToDict(session.context)
        reply = await self._responder.reply(
            tenant_id=tenant_id, conversation=conversation, message=inbound, context=context
        )
        replies = await self._replies(tenant_id, conversation.channel, reply.contents)
        # Replies are stamped when they exist: the difference is the bot's response time.
        replied = max(self._clock(), now)
        outbound = [
            build_message(
                conversation,
                processed_reply,
                direction=common_pb2.MESSAGE_DIRECTION_OUTBOUND,
                sender_id=RESPONDER_ID,
                now=replied,
                reply_to=inbound.id,
                metadata={},
            )
            for processed_reply in replies
        ]
        context.update(reply.context_updates)
        session.context.Clear()
        session.context.update(context)
        self._sessions.touch(session, now=now)
        return outbound, replies

    async def _replies(
        self, tenant_id: str, channel: int, contents: Sequence[common_pb2.Content]
    ) -> list[ProcessedContent]:
        """The responder's contents, processed for the channel; a content the channel cannot
        take is left out (and logged) rather than failing the user's message."""
        replies = []
        for index, content in enumerate(contents[:MAX_REPLIES]):
            try:
                replies.append(
                    await self._content.process_outbound(
                        tenant_id, content, channel=channel, field=f"replies[{index}]"
                    )
                )
            except (InvalidArgument, NotFound) as exc:
                log.warning("reply left out", index=index, error=str(exc), reason=exc.reason)
        return replies

    async def _open(
        self,
        tenant_id: str,
        actor_id: str,
        request: chat_service_pb2.SendMessageRequest,
        now: dt.datetime,
    ) -> tuple[common_pb2.Conversation, common_pb2.Session, bool]:
        """The conversation the request names, or the user's active one on the channel (or a
        new one), with its session; True when the conversation was started now."""
        if not request.conversation_id:
            return await self.open_active(
                tenant_id,
                actor_id,
                user_id=request.user_id,
                channel=request.channel,
                channel_conversation_id=request.channel_conversation_id,
                now=now,
            )
        found = await self._conversations.get(tenant_id, request.conversation_id)
        if found is None:
            raise NotFound("conversation not found", reason="CONVERSATION_NOT_FOUND")
        if found.user_id != request.user_id or found.channel != request.channel:
            raise InvalidArgument(
                "the conversation belongs to another user or channel",
                field_violations=[
                    FieldViolation("conversation_id", "does not match user_id and channel")
                ],
            )
        if found.status != common_pb2.CONVERSATION_STATUS_ACTIVE:
            raise FailedPrecondition("conversation is closed", reason=CONVERSATION_CLOSED)
        return found, await self.session_for(tenant_id, actor_id, found, now=now), False

    async def open_active(
        self,
        tenant_id: str,
        actor_id: str,
        *,
        user_id: str,
        channel: int,
        channel_conversation_id: str,
        now: dt.datetime,
    ) -> tuple[common_pb2.Conversation, common_pb2.Session, bool]:
        """The user's active conversation on the channel (or a new one) and its live session
        (or a new one); True when the conversation was started now. A remembered conversation
        whose session is live costs no MongoDB read (see ActiveConversations)."""
        recalled = self._active.recall(tenant_id, user_id, channel)
        if recalled is not None:
            session = await self._sessions.current(tenant_id, recalled.id, now=now)
            if session is not None:
                return recalled, session, False
            self._active.forget(tenant_id, recalled)
        conversation, started = await self._find_or_start(
            tenant_id,
            actor_id,
            user_id=user_id,
            channel=channel,
            channel_conversation_id=channel_conversation_id,
            now=now,
        )
        session = await self.session_for(tenant_id, actor_id, conversation, now=now)
        self._active.remember(tenant_id, conversation)
        return conversation, session, started

    def remember_active(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """Keep a conversation's just-committed state for the user's next message."""
        self._active.remember(tenant_id, conversation)

    def closed_active(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """A conversation was found closed: it is not the user's active one any more."""
        self._active.closed(tenant_id, conversation)

    async def _find_or_start(
        self,
        tenant_id: str,
        actor_id: str,
        *,
        user_id: str,
        channel: int,
        channel_conversation_id: str,
        now: dt.datetime,
    ) -> tuple[common_pb2.Conversation, bool]:
        """The user's active conversation on the channel, or a new one (ConversationStarted);
        True when it was started now. A platform conversation needs its address to start."""
        active = await self._conversations.find_active(tenant_id, user_id, channel)
        if active is not None:
            return active, False
        if channel != WEB and not channel_conversation_id:
            raise InvalidArgument(
                "a new conversation on a platform channel needs its address",
                field_violations=[
                    FieldViolation("channel_conversation_id", "required for a new conversation")
                ],
            )

        async def start(tx: Tx) -> common_pb2.Conversation:
            conversation = await self._conversations.insert_active(
                tenant_id,
                user_id=user_id,
                channel=channel,
                channel_conversation_id=channel_conversation_id,
                now=now,
                tx=tx,
            )
            started = events_pb2.ConversationStarted(conversation=conversation)
            await self._outbox.add(
                [
                    envelope(
                        tenant_id=tenant_id,
                        actor_id=actor_id,
                        conversation_id=conversation.id,
                        now=now,
                        conversation_started=started,
                    )
                ],
                now=now,
                tx=tx,
            )
            return conversation

        try:
            conversation = await self._transactions.run(start)
        except AlreadyExists:
            # Another first message of this user started it a moment ago.
            active = await self._conversations.find_active(tenant_id, user_id, channel)
            if active is None:
                raise
            return active, False
        self._on_events()
        return conversation, True

    async def _store(
        self, exchanges: list[_Exchange]
    ) -> list[chat_service_pb2.SendMessageResponse | Exception]:
        """Store exchanges of distinct conversations in one transaction: a bulk statement per
        collection, whatever their number (see GroupCommit)."""

        async def work(tx: Tx) -> list[chat_service_pb2.SendMessageResponse | Exception]:
            states = await self._conversations.record_messages_many(
                [
                    Recording(
                        tenant_id=e.tenant_id,
                        conversation_id=e.conversation.id,
                        inbound=1,
                        outbound=len(e.messages) - 1,
                        now=e.now,
                    )
                    for e in exchanges
                ],
                tx=tx,
            )
            outcomes: list[chat_service_pb2.SendMessageResponse | Exception] = []
            rows: list[MessageRow] = []
            envelopes: list[events_pb2.EventEnvelope] = []
            for exchange, updated in zip(exchanges, states, strict=True):
                if updated is None:
                    outcomes.append(
                        FailedPrecondition("conversation is closed", reason=CONVERSATION_CLOSED)
                    )
                    continue
                response, events = await self._exchange_writes(tx, exchange, updated)
                rows += [
                    MessageRow(exchange.tenant_id, message, text)
                    for message, text in zip(
                        (response.message, *response.replies), exchange.search_texts, strict=True
                    )
                ]
                envelopes += events
                outcomes.append(response)
            if rows:
                await self._messages.insert_rows(rows, tx=tx)
                await self._outbox.add(envelopes, now=max(e.now for e in exchanges), tx=tx)
            return outcomes

        return await self._transactions.run(work)

    async def _exchange_writes(
        self, tx: Tx, exchange: _Exchange, updated: common_pb2.Conversation
    ) -> tuple[chat_service_pb2.SendMessageResponse, list[events_pb2.EventEnvelope]]:
        """One exchange's messages numbered, its deliveries queued and its idempotency record
        written; its response and its events (written by the caller with the others)."""
        tenant_id, now, messages = exchange.tenant_id, exchange.now, exchange.messages
        first = updated.last_sequence - len(messages) + 1
        stored = [common_pb2.Message() for _ in messages]
        for offset, (copy, message) in enumerate(zip(stored, messages, strict=True)):
            copy.CopyFrom(message)
            copy.sequence = first + offset
        if updated.channel != WEB and self._deliveries is not None:
            await self._deliveries.enqueue(
                tenant_id,
                stored[1:],
                recipient_id=updated.channel_conversation_id,
                # Never from the request (the Teams bot token goes to this URL): from the
                # conversation, which has it from the bridge's verified activities.
                service_url=updated.metadata.get("service_url", ""),
                now=now,
                tx=tx,
            )
        inbound, replies = stored[0], stored[1:]
        events: list[dict[str, Any]] = [
            {"message_received": events_pb2.MessageReceived(message=inbound)}
        ]
        if updated.channel == WEB:  # handed to the channel: returned and pushed to subscribers
            events += [
                {"message_sent": events_pb2.MessageSent(message=m, response_time=_took(inbound, m))}
                for m in replies
            ]
        events.append(
            {"conversation_updated": events_pb2.ConversationUpdated(conversation=updated)}
        )
        response = chat_service_pb2.SendMessageResponse(
            message=inbound, replies=replies, conversation=updated, session=exchange.session
        )
        if exchange.request.request_id:
            await self._idempotency.put(
                tenant_id,
                SEND_MESSAGE,
                exchange.request.request_id,
                response.SerializeToString(),
                now=now,
                tx=tx,
            )
        envelopes = [
            envelope(
                tenant_id=tenant_id,
                actor_id=exchange.actor_id,
                conversation_id=updated.id,
                now=now,
                **e,
            )
            for e in events
        ]
        return response, envelopes


def _validate(request: chat_service_pb2.SendMessageRequest) -> None:
    violations: list[FieldViolation] = []
    if not request.user_id:
        violations.append(FieldViolation("user_id", "required"))
    limits = {
        "user_id": MAX_ADDRESS_CHARS,
        "request_id": MAX_ID_CHARS,
        "conversation_id": MAX_ID_CHARS,
        "channel_conversation_id": MAX_ADDRESS_CHARS,
        "reply_to_message_id": MAX_ID_CHARS,
    }
    for name, limit in limits.items():
        if len(getattr(request, name)) > limit:
            violations.append(FieldViolation(name, f"at most {limit} characters"))
    if request.channel not in common_pb2.ChannelType.values() or not request.channel:
        violations.append(FieldViolation("channel", "required: one of the ChannelType values"))
    if len(request.metadata) > MAX_METADATA_ENTRIES:
        violations.append(FieldViolation("metadata", f"at most {MAX_METADATA_ENTRIES} entries"))
    for key, value in request.metadata.items():
        if not key or len(key) > 64 or len(value) > 1024:
            violations.append(
                FieldViolation(f"metadata[{key[:64]}]", "keys 1-64 characters, values at most 1024")
            )
    if violations:
        raise InvalidArgument("the request is invalid", field_violations=violations)
