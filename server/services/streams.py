"""The live side of a conversation: StreamConversationEvents, typing indicators and read
receipts.

A stream subscribes first, then reads storage, so nothing falls between the two. Messages
carry their sequence: one already seen is skipped, and a gap (a message published late, or
lost with a pub/sub connection) is filled from MongoDB before the next one is sent. So a
subscriber sees every message once, in order, whichever process stored it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

import structlog

from chat.v1 import chat_service_pb2, common_pb2, events_pb2
from server.domain.errors import (
    FailedPrecondition,
    HubClosingError,
    NotFound,
    ResourceExhausted,
    StoreError,
    SubscriberTooSlowError,
    Unauthenticated,
    Unavailable,
)
from server.events.envelopes import envelope
from server.services.idempotency import IdempotentRequests, RequestKey, fingerprint_of
from server.services.live import QuietLiveEvents, closed_event, message_event, timestamp_of
from server.services.ports import (
    ConversationRepository,
    LiveSubscription,
    LiveSubscriptions,
    MessageRepository,
    Outbox,
    TransactionRunner,
    Tx,
)

log = structlog.get_logger("chat.streams")

Event = chat_service_pb2.StreamConversationEventsResponse
MARK_READ = "MarkRead"
CATCH_UP_PAGE = 200
#: A quiet stream checks storage this often: a publish lost after its commit (Redis briefly
#: down) is found within this time, including the conversation being closed.
IDLE_CHECK_SECONDS = 30.0
ACTIVE = common_pb2.CONVERSATION_STATUS_ACTIVE


class StreamService:
    """Streams, typing and read receipts of a tenant's conversations."""

    def __init__(
        self,
        *,
        conversations: ConversationRepository,
        messages: MessageRepository,
        subscriptions: LiveSubscriptions,
        live: QuietLiveEvents,
        outbox: Outbox,
        requests: IdempotentRequests,
        transactions: TransactionRunner,
        clock: Callable[[], dt.datetime],
        on_events: Callable[[], None] = lambda: None,
    ) -> None:
        self._conversations = conversations
        self._messages = messages
        self._subscriptions = subscriptions
        self._live = live
        self._outbox = outbox
        self._requests = requests
        self._transactions = transactions
        self._clock = clock
        self._on_events = on_events

    async def stream(  # noqa: PLR0912 - one loop; a helper generator costs a layer per event
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        after_sequence: int | None,
        expires_at: float,
        on_live: Callable[[], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Missed messages after ``after_sequence`` (when set), then live events, until the
        conversation closes, the caller leaves, or the token expires. ``on_live`` is awaited
        once the stream is subscribed and knows where it starts: every event after that
        reaches it (the API sends the response headers then)."""
        await self._conversation(tenant_id, conversation_id)
        try:
            subscription = await self._subscriptions.subscribe(tenant_id, conversation_id)
        except StoreError:
            raise Unavailable(
                "live events are unavailable; retry shortly", reason="LIVE_EVENTS_UNAVAILABLE"
            ) from None
        try:
            # Subscribed: from here on nothing is missed, so storage is read now.
            current = await self._conversation(tenant_id, conversation_id)
            last = current.last_sequence if after_sequence is None else after_sequence
            if on_live is not None:
                await on_live()  # the starting point is fixed: whatever comes next is sent
            async for message in self._stored(tenant_id, conversation_id, last, None):
                last = message.sequence
                yield message_event(message)
            if current.status != ACTIVE:
                yield closed_event(current)
                return
            while True:
                event = await _next(subscription, expires_at)
                if event is None:  # events may have been lost, or it is quiet: check storage
                    async for message in self._stored(tenant_id, conversation_id, last, None):
                        last = message.sequence
                        yield message_event(message)
                    current = await self._conversation(tenant_id, conversation_id)
                    if current.status != ACTIVE:
                        yield closed_event(current)
                        return
                    continue
                kind = event.WhichOneof("event")
                if kind == "message":
                    sequence = event.message.sequence
                    if sequence <= last:
                        continue  # seen already (replayed, or published late)
                    if sequence > last + 1:  # a gap: what was missed comes from storage
                        async for message in self._stored(
                            tenant_id, conversation_id, last, sequence
                        ):
                            last = message.sequence
                            yield message_event(message)
                    last = sequence
                yield event
                if kind == "closed":
                    return
        finally:
            await self._subscriptions.unsubscribe(subscription)

    async def typing(
        self,
        tenant_id: str,
        conversation_id: str,
        *,
        participant_id: str,
        typing: bool,
        direction: common_pb2.MessageDirection.ValueType,
    ) -> common_pb2.Conversation:
        """Tell the conversation's streams that someone started or stopped typing; the
        conversation."""
        conversation = await self._conversation(tenant_id, conversation_id)
        if conversation.status != ACTIVE:
            raise FailedPrecondition("conversation is closed", reason="CONVERSATION_CLOSED")
        event = Event(
            event_time=timestamp_of(self._clock()),
            typing=chat_service_pb2.TypingIndicator(
                participant_id=participant_id, typing=typing, direction=direction
            ),
        )
        await self._live.publish(tenant_id, conversation_id, [event])
        return conversation

    async def mark_read(
        self,
        tenant_id: str,
        actor_id: str,
        conversation_id: str,
        *,
        up_to_sequence: int,
        request_id: str,
    ) -> chat_service_pb2.MarkReadResponse:
        """Outbound messages up to the sequence become READ (MessageDelivered each), once."""
        request = chat_service_pb2.MarkReadRequest(
            conversation_id=conversation_id, up_to_sequence=up_to_sequence
        )
        key = RequestKey(tenant_id, MARK_READ, request_id, fingerprint_of(request))
        return await self._requests.once(
            key,
            chat_service_pb2.MarkReadResponse.FromString,
            lambda: self._mark_read(key, actor_id, conversation_id, up_to_sequence),
        )

    async def _mark_read(
        self, key: RequestKey, actor_id: str, conversation_id: str, up_to_sequence: int
    ) -> chat_service_pb2.MarkReadResponse:
        tenant_id = key.tenant_id
        conversation = await self._conversation(tenant_id, conversation_id)
        now = self._clock()

        async def mark(tx: Tx) -> tuple[chat_service_pb2.MarkReadResponse, list[Event]]:
            changed = await self._messages.mark_read(
                tenant_id, conversation_id, up_to_sequence=up_to_sequence, tx=tx
            )
            stamp = timestamp_of(now)
            await self._outbox.add(
                [
                    envelope(
                        tenant_id=tenant_id,
                        actor_id=actor_id,
                        conversation_id=conversation_id,
                        now=now,
                        message_delivered=events_pb2.MessageDelivered(
                            message_id=message.id,
                            conversation_id=conversation_id,
                            channel=conversation.channel,
                            status=common_pb2.DELIVERY_STATUS_READ,
                            platform_message_id=message.platform_message_id,
                            status_time=stamp,
                        ),
                    )
                    for message in changed
                ],
                now=now,
                tx=tx,
            )
            response = chat_service_pb2.MarkReadResponse(updated_count=len(changed))
            await self._requests.record(key, response, now=now, tx=tx)
            events = [
                Event(
                    event_time=stamp,
                    delivery_status=chat_service_pb2.DeliveryStatusUpdate(
                        message_id=message.id,
                        sequence=message.sequence,
                        status=common_pb2.DELIVERY_STATUS_READ,
                    ),
                )
                for message in changed
            ]
            return response, events

        response, events = await self._transactions.run(mark)
        if events:
            self._on_events()
            await self._live.publish(tenant_id, conversation_id, events)
        return response

    async def _conversation(self, tenant_id: str, conversation_id: str) -> common_pb2.Conversation:
        conversation = await self._conversations.get(tenant_id, conversation_id)
        if conversation is None:
            raise NotFound("conversation not found", reason="CONVERSATION_NOT_FOUND")
        return conversation

    async def _stored(
        self, tenant_id: str, conversation_id: str, after: int, before: int | None
    ) -> AsyncIterator[common_pb2.Message]:
        """Stored messages with after < sequence (< before, when given), in order."""
        while before is None or after + 1 < before:
            page = await self._messages.history(
                tenant_id,
                conversation_id,
                after_sequence=after,
                newest_first=False,
                limit=CATCH_UP_PAGE,
            )
            for message in page:
                if before is not None and message.sequence >= before:
                    return
                after = message.sequence
                yield message
            if len(page) < CATCH_UP_PAGE:
                return


async def _next(subscription: LiveSubscription, expires_at: float) -> Event | None:
    """The next live event; None after IDLE_CHECK_SECONDS without one, so the stream looks
    at storage (a publish that failed after its commit is found that way)."""
    remaining = expires_at - time.time()
    if remaining <= 0:
        raise Unauthenticated("token expired; reconnect with a new one", reason="TOKEN_EXPIRED")
    try:
        event = await subscription.next(
            idle_seconds=IDLE_CHECK_SECONDS, deadline=time.monotonic() + remaining
        )
    except SubscriberTooSlowError:
        raise ResourceExhausted(
            "the stream fell too far behind; reconnect with after_sequence",
            retry_after_seconds=0,
            reason="SUBSCRIBER_TOO_SLOW",
        ) from None
    except HubClosingError:
        raise Unavailable(
            "the server is shutting down; reconnect with after_sequence", reason="SHUTTING_DOWN"
        ) from None
    if event is None and expires_at - time.time() <= 0:
        raise Unauthenticated("token expired; reconnect with a new one", reason="TOKEN_EXPIRED")
    return event
