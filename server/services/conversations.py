"""Conversations: read, list, close, and page through history."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import AsyncIterator, Callable

import structlog
from google.protobuf import duration_pb2

from chat.v1 import common_pb2, events_pb2
from server.domain.clock import utc_now
from server.domain.conversations import ConversationFilter
from server.domain.errors import NotFound, StoreError
from server.services.active_conversations import ActiveConversations
from server.services.event_writer import EventWriter
from server.services.export import Chunk, chunks
from server.services.live import QuietLiveEvents, closed_event
from server.services.ports import (
    ConversationCache,
    ConversationRepository,
    MessageRepository,
    TransactionRunner,
    Tx,
)
from server.services.sessions import SessionService

log = structlog.get_logger("chat.conversations")


def query_digest(query: str) -> str:
    """How a search is named in the audit log: never the text, which may be personal."""
    return "sha256:" + hashlib.sha256(query.encode()).hexdigest()


class ConversationService:
    """Everything about conversations except sending messages."""

    def __init__(
        self,
        *,
        conversations: ConversationRepository,
        messages: MessageRepository,
        sessions: SessionService,
        transactions: TransactionRunner,
        live: QuietLiveEvents,
        cache: ConversationCache,
        active: ActiveConversations,
        events: EventWriter,
        on_events: Callable[[], None] = lambda: None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._live = live
        self._cache = cache
        self._active = active
        self._events = events
        self._conversations = conversations
        self._messages = messages
        self._sessions = sessions
        self._transactions = transactions
        self._on_events = on_events
        self._clock = clock

    async def get(self, tenant_id: str, conversation_id: str) -> common_pb2.Conversation:
        """One conversation; NOT_FOUND for a missing one or another tenant's."""
        conversation = await self._conversations.get(tenant_id, conversation_id)
        if conversation is None:
            raise NotFound("conversation not found", reason="CONVERSATION_NOT_FOUND")
        return conversation

    async def get_cached(self, tenant_id: str, conversation_id: str) -> common_pb2.Conversation:
        """Like get, served from the Redis cache when it holds the conversation (writes drop
        the entry, so a caller reads its own writes); Redis trouble falls back to MongoDB."""
        try:
            cached = await self._cache.get(tenant_id, conversation_id)
        except StoreError as exc:
            log.warning("conversation cache unavailable", error=repr(exc))
            return await self.get(tenant_id, conversation_id)
        if cached is not None:
            return cached
        conversation = await self.get(tenant_id, conversation_id)
        try:
            await self._cache.fill(tenant_id, conversation)
        except StoreError as exc:
            log.warning("conversation cache unavailable", error=repr(exc))
        return conversation

    async def list_page(
        self,
        tenant_id: str,
        filters: ConversationFilter,
        *,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[common_pb2.Conversation]:
        """A page of conversations, newest first."""
        return await self._conversations.list(tenant_id, filters, after=after, limit=limit)

    async def close(
        self, tenant_id: str, actor_id: str, conversation_id: str, *, reason: str
    ) -> common_pb2.Conversation:
        """Close it (ConversationEnded, once) and end its session; closed ones come back as
        they are."""
        now = self._clock()

        async def close(tx: Tx) -> common_pb2.Conversation | None:
            closed = await self._conversations.close(
                tenant_id, conversation_id, reason=reason, now=now, tx=tx
            )
            if closed is None:
                return None
            duration = duration_pb2.Duration()
            duration.FromTimedelta(now - closed.create_time.ToDatetime(tzinfo=dt.UTC))
            ended = events_pb2.ConversationEnded(
                conversation=closed,
                duration=duration,
                message_count=closed.message_count,
                reason=reason,
            )
            await self._events.within(
                tx,
                tenant_id=tenant_id,
                actor_id=actor_id,
                conversation_id=closed.id,
                now=now,
                conversation_ended=ended,
            )
            return closed

        closed = await self._transactions.run(close)
        if closed is None:
            return await self.get(tenant_id, conversation_id)  # closed before, or not found
        self._active.closed(tenant_id, closed)
        self._on_events()
        await self._live.publish(tenant_id, closed.id, [closed_event(closed)], conversation=closed)
        try:
            await self._sessions.end_current(tenant_id, actor_id, closed.id)
        except Exception as exc:  # noqa: BLE001 - the close is committed; the session may lag
            # Its session, not ended now (a store down, the session contended), expires and is
            # reported then; the caller hears of the close it asked for.
            log.warning("session not ended with its conversation", error=repr(exc))
        return closed

    async def search(
        self,
        tenant_id: str,
        needle: str,
        *,
        actor_id: str,
        first_page: bool,
        conversation_id: str,
        channel: int,
        created_from: dt.datetime | None,
        created_to: dt.datetime | None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[common_pb2.Message]:
        """Messages of the tenant containing ``needle``, newest first."""
        if conversation_id:
            await self.get(tenant_id, conversation_id)  # NOT_FOUND rather than an empty page
        if first_page:  # one search, however many pages it is read in
            await self._record_access(
                tenant_id,
                actor_id,
                conversation_id,
                events_pb2.DataAccessed(
                    action=events_pb2.DATA_ACCESS_ACTION_SEARCH,
                    resource_type="messages",
                    resource_id=conversation_id,
                    detail=query_digest(needle),
                ),
            )
        return await self._messages.search(
            tenant_id,
            needle,
            conversation_id=conversation_id,
            channel=channel,
            created_from=created_from,
            created_to=created_to,
            after=after,
            limit=limit,
        )

    async def export(
        self, tenant_id: str, actor_id: str, conversation_id: str, *, csv_format: bool
    ) -> AsyncIterator[Chunk]:
        """The conversation as a file, in chunks (NOT_FOUND before the first chunk)."""
        await self.get(tenant_id, conversation_id)
        await self._record_access(
            tenant_id,
            actor_id,
            conversation_id,
            events_pb2.DataAccessed(
                action=events_pb2.DATA_ACCESS_ACTION_EXPORT,
                resource_type="conversation",
                resource_id=conversation_id,
                detail="csv" if csv_format else "jsonl",
            ),
        )
        async for chunk in chunks(
            self._messages.all_in_order(tenant_id, conversation_id), csv_format=csv_format
        ):
            yield chunk

    async def _record_access(
        self,
        tenant_id: str,
        actor_id: str,
        conversation_id: str,
        accessed: events_pb2.DataAccessed,
    ) -> None:
        """Write the access to the outbox (for the audit log) before any data is returned:
        no access goes unrecorded."""
        await self._events.write(
            tenant_id=tenant_id,
            actor_id=actor_id,
            conversation_id=conversation_id,
            now=self._clock(),
            data_accessed=accessed,
        )

    async def history(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int | None,
        newest_first: bool,
        limit: int,
    ) -> list[common_pb2.Message]:
        """A page of the conversation's messages in sequence order."""
        await self.get(tenant_id, conversation_id)  # NOT_FOUND before an empty page
        return await self._messages.history(
            tenant_id,
            conversation_id,
            after_sequence=after_sequence,
            newest_first=newest_first,
            limit=limit,
        )
