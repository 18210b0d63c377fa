"""Live events for the conversations' streams, pushed after the data is committed."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import structlog
from google.protobuf import json_format, timestamp_pb2

from chat.v1 import chat_service_pb2, common_pb2
from server.domain.errors import Aborted, StoreError
from server.domain.session import is_live
from server.services.ports import LiveEvents, SessionStore

log = structlog.get_logger("chat.streams")

Event = chat_service_pb2.StreamConversationEventsResponse


def message_event(message: common_pb2.Message) -> Event:
    """A message as a stream event, stamped with its creation time."""
    return Event(event_time=message.create_time, message=message)


def closed_event(conversation: common_pb2.Conversation) -> Event:
    """The stream's last event: the conversation as closed."""
    return Event(
        event_time=conversation.close_time,
        closed=chat_service_pb2.ConversationClosed(conversation=conversation),
    )


def timestamp_of(now: dt.datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(now)
    return stamp


class QuietLiveEvents:
    """Publishes live events after the data is committed; a failure is logged, not raised:
    the data is safe, streams catch up from storage, a cached conversation the failed call did
    not update is replaced by the worker's cache handler or expires, and a session not saved
    only lags (its context updates are lost, its expiry not extended)."""

    def __init__(self, live: LiveEvents) -> None:
        self._live = live

    async def publish(
        self,
        tenant_id: str,
        conversation_id: str,
        events: Sequence[Event],
        *,
        conversation: common_pb2.Conversation | None = None,
        session: common_pb2.Session | None = None,
    ) -> bool:
        """Publish; with ``conversation``, also cache its new state; with ``session``, also
        store it (touched by the caller) unless it changed since it was read: False then.
        True too when Redis failed (logged): there is nothing to apply again."""
        try:
            return await self._live.publish(
                tenant_id, conversation_id, events, conversation=conversation, session=session
            )
        except StoreError as exc:
            log.warning(
                "live events not published",
                conversation_id=conversation_id,
                count=len(events),
                with_session=session is not None,
                error=repr(exc),
            )
            return True


class CommittedPush:
    """After a commit, the committed messages go to the streams with the conversation's new
    state, and the session is kept (touched at ``now``), in one Redis round trip. A Redis
    failure is logged, not raised (QuietLiveEvents): the messages are safe, and the session
    only lags."""

    def __init__(self, *, live: QuietLiveEvents, sessions: SessionStore) -> None:
        self._live = live
        self._sessions = sessions

    async def messages(
        self,
        tenant_id: str,
        conversation: common_pb2.Conversation,
        messages: Sequence[common_pb2.Message],
        session: common_pb2.Session,
        *,
        now: dt.datetime,
        context_updates: Mapping[str, Any] | None = None,
    ) -> None:
        """Push ``messages`` of ``conversation`` and keep ``session``, whose context got
        ``context_updates`` (the responder's) since it was read."""
        self._sessions.touch(session, now=now)
        kept = await self._live.publish(
            tenant_id,
            conversation.id,
            [message_event(m) for m in messages],
            conversation=conversation,
            session=session,
        )
        if not kept:
            await self._apply_again(tenant_id, session.id, context_updates or {}, now=now)

    async def _apply_again(
        self, tenant_id: str, session_id: str, updates: Mapping[str, Any], *, now: dt.datetime
    ) -> None:
        """The session changed meanwhile (its context updated, the session ended or expired,
        another message): this exchange's updates go onto the session as it is now, and an
        ended one stays ended."""

        def change(session: common_pb2.Session) -> common_pb2.Session | None:
            # Ended, or expired meanwhile (the sweep reports it): not brought back.
            if session.status != common_pb2.SESSION_STATUS_ACTIVE or not is_live(session, now):
                return None
            if updates:
                context = json_format.MessageToDict(session.context)
                context.update(updates)
                session.context.Clear()
                session.context.update(context)
            self._sessions.touch(session, now=now)
            return session

        try:
            await self._sessions.update(tenant_id, session_id, change)
        except (StoreError, Aborted) as exc:
            # As when Redis fails: the messages are safe, the session only lags.
            log.warning("session not kept", session_id=session_id, error=repr(exc))
