"""Opening a conversation: the user's active one on a channel (or a new one), with its live
session (or a new one), remembered for the user's next message.

SendMessage and the ingestion of a platform's message both start here; the reply queue asks
it for the session it answers in.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from chat.v1 import common_pb2, events_pb2
from server.domain.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
)
from server.events.envelopes import stable_event_id
from server.services.active_conversations import ActiveConversations
from server.services.event_writer import EventWriter
from server.services.ports import (
    ConversationRepository,
    SessionStore,
    TransactionRunner,
    Tx,
)

WEB = common_pb2.CHANNEL_TYPE_WEB


class ConversationOpener:
    """Finds or starts conversations and their sessions; remembers the active ones."""

    def __init__(
        self,
        *,
        conversations: ConversationRepository,
        sessions: SessionStore,
        transactions: TransactionRunner,
        events: EventWriter,
        active: ActiveConversations,
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._conversations = conversations
        self._sessions = sessions
        self._transactions = transactions
        self._events = events
        self._active = active
        self._on_events = on_events

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

    def remember(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
        """Keep a conversation's just-committed state for the user's next message."""
        self._active.remember(tenant_id, conversation)

    def closed(self, tenant_id: str, conversation: common_pb2.Conversation) -> None:
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
            await self._events.within(
                tx,
                tenant_id=tenant_id,
                actor_id=actor_id,
                conversation_id=conversation.id,
                now=now,
                conversation_started=events_pb2.ConversationStarted(conversation=conversation),
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


class ConversationClosedError(Exception):
    """The conversation found for a message closed before the message was stored."""
