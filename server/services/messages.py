"""SendMessage: an end user's message and the answer to it, in one call.

Validate and process the content, open the conversation and its session (ConversationOpener),
compose the replies (ReplyComposer), then store both messages, the counters, the deliveries,
the events and the idempotency record in one transaction (group-committed with the calls
arriving meanwhile), and push them to the streams (CommittedPush). Nothing is stored when any
step before the commit fails. Ingest and the reply queue are this service's peers over the same
steps.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

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
from server.domain.messages import MessageRow, ProcessedContent, build_message, response_time
from server.domain.violations import Violations
from server.events.envelopes import envelope
from server.processors.content import ContentProcessor
from server.services.composing import ReplyComposer
from server.services.group_commit import GroupCommit
from server.services.idempotency import IdempotentRequests, RequestKey, idempotency_key
from server.services.live import CommittedPush
from server.services.opening import (
    ConversationClosedError,
    ConversationOpener,
    Opened,
    lost_start,
)
from server.services.ports import (
    ConversationRepository,
    DeliveryQueue,
    MessageRepository,
    Outbox,
    TransactionRunner,
    Tx,
)

log = structlog.get_logger("chat.messages")

SEND_MESSAGE = "SendMessage"
MAX_ID_CHARS = 128
#: Platform addresses are longer than our ids (a Teams conversation id runs past 150
#: characters; a Slack or Teams conversation's user is "<chat id>/<user id>").
MAX_ADDRESS_CHARS = 640
MAX_METADATA_ENTRIES = 32
WEB = common_pb2.CHANNEL_TYPE_WEB
CONVERSATION_CLOSED = "CONVERSATION_CLOSED"


@dataclass(frozen=True, slots=True)
class _Exchange:
    """A user's message and the replies to it, ready to be stored."""

    #: The request's idempotency key, recorded with the exchange.
    key: RequestKey
    tenant_id: str
    actor_id: str
    request: chat_service_pb2.SendMessageRequest
    #: The conversation and session (a new conversation is inserted with the exchange).
    opened: Opened
    messages: list[common_pb2.Message]
    search_texts: list[str]
    now: dt.datetime
    #: The responder's context updates (applied to the session already).
    context_updates: dict[str, Any]

    @property
    def conversation(self) -> common_pb2.Conversation:
        return self.opened.conversation


class MessageService:
    """Takes an end user's message and answers it."""

    def __init__(
        self,
        *,
        opener: ConversationOpener,
        composer: ReplyComposer,
        push: CommittedPush,
        requests: IdempotentRequests,
        conversations: ConversationRepository,
        messages: MessageRepository,
        outbox: Outbox,
        transactions: TransactionRunner,
        content: ContentProcessor,
        deliveries: DeliveryQueue | None = None,
        on_events: Callable[[], None] = lambda: None,
        on_delivery: Callable[[], None] = lambda: None,
        on_batch: Callable[[int], None] = lambda _size: None,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self._opener = opener
        self._composer = composer
        self._push = push
        self._requests = requests
        self._deliveries = deliveries
        self._on_delivery = on_delivery
        self._conversations = conversations
        self._messages = messages
        self._outbox = outbox
        self._transactions = transactions
        self._content = content
        self._on_events = on_events
        self._clock = clock
        self._commits: GroupCommit[_Exchange, chat_service_pb2.SendMessageResponse] = GroupCommit(
            self._store,
            # A user's channel, not the conversation: two starts for one user never share a
            # batch (see record_messages_many).
            key=lambda e: (e.tenant_id, e.conversation.user_id, e.conversation.channel),
            trace_key=lambda e: (e.tenant_id, e.conversation.id),
            name="message.store",
            on_batch=on_batch,
            on_orphan=self._finish_orphan,
            on_abandoned=self._abandoned,
            divisible=(AlreadyExists,),
        )

    async def send(
        self, tenant_id: str, actor_id: str, request: chat_service_pb2.SendMessageRequest
    ) -> chat_service_pb2.SendMessageResponse:
        """Store the message, answer it, and return both; ``actor_id`` is the caller."""
        violations = _violations(request)
        if violations and request.content.WhichOneof("kind") != "media":
            # The content's problems in the same answer. Not media's: it may be fetched, so it
            # is processed only for a request that is otherwise valid.
            try:
                await self._content.process_inbound(
                    tenant_id, request.content, channel=request.channel, field="content"
                )
            except InvalidArgument as exc:
                violations.extend(exc.field_violations)
        violations.raise_any()
        # Once per call: the fingerprint encodes and hashes the whole request.
        key = idempotency_key(tenant_id, SEND_MESSAGE, request)
        return await self._requests.once(
            key,
            chat_service_pb2.SendMessageResponse.FromString,
            lambda: self._send(key, actor_id, request),
        )

    async def _send(
        self, key: RequestKey, actor_id: str, request: chat_service_pb2.SendMessageRequest
    ) -> chat_service_pb2.SendMessageResponse:
        tenant_id = key.tenant_id
        processed = await self._content.process_inbound(
            tenant_id, request.content, channel=request.channel, field="content"
        )
        try:
            return await self._exchange(key, actor_id, request, processed)
        except ConversationClosedError:
            # Found by its user and channel, and closed before the message was stored (by
            # another process, say): once more, in a new conversation.
            return await self._exchange(key, actor_id, request, processed, retried=True)

    async def _exchange(
        self,
        key: RequestKey,
        actor_id: str,
        request: chat_service_pb2.SendMessageRequest,
        processed: ProcessedContent,
        *,
        retried: bool = False,
    ) -> chat_service_pb2.SendMessageResponse:
        """One try at storing and answering the message."""
        tenant_id = key.tenant_id
        now = self._clock()
        opened = await self._open(tenant_id, actor_id, request, now)
        try:
            async with self._opener.held(tenant_id, opened):
                exchange = await self._composed(
                    key, actor_id, request, processed, opened=opened, now=now
                )
                opened.submitted = True  # from here the group commit settles it
                response = await self._commits.submit(exchange)
                self._opener.remember(tenant_id, response.conversation)
        except Exception as exc:
            closed = isinstance(exc, FailedPrecondition) and exc.reason == CONVERSATION_CLOSED
            if not (closed or lost_start(exc)) or request.conversation_id or retried:
                raise
            self._opener.closed(tenant_id, opened.conversation)
            raise ConversationClosedError from exc
        await self._after_commit(exchange, response)
        if opened.started:
            log.info("conversation started", conversation_id=opened.conversation.id)
        return response

    async def _composed(
        self,
        key: RequestKey,
        actor_id: str,
        request: chat_service_pb2.SendMessageRequest,
        processed: ProcessedContent,
        *,
        opened: Opened,
        now: dt.datetime,
    ) -> _Exchange:
        """The user's message and the responder's replies to it, ready to be stored."""
        conversation, session = opened.conversation, opened.session
        inbound = build_message(
            conversation,
            processed,
            direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
            sender_id=request.user_id,
            now=now,
            reply_to=request.reply_to_message_id,
            metadata=dict(request.metadata),
        )
        outbound, replies, context_updates = await self._composer.compose(
            key.tenant_id, conversation, inbound, session, now=now
        )
        texts = [processed.search_text] + [r.search_text for r in replies]
        return _Exchange(
            key=key,
            tenant_id=key.tenant_id,
            actor_id=actor_id,
            request=request,
            opened=opened,
            messages=[inbound, *outbound],
            search_texts=texts,
            now=now,
            context_updates=context_updates,
        )

    async def _after_commit(
        self, exchange: _Exchange, response: chat_service_pb2.SendMessageResponse
    ) -> None:
        """Wake the relay and the delivery queue, push to the streams, keep the session."""
        self._on_events()
        if response.conversation.channel != WEB:
            self._on_delivery()
        await self._push.messages(
            exchange.tenant_id,
            response.conversation,
            [response.message, *response.replies],
            response.session,
            now=exchange.now,
            context_updates=exchange.context_updates,
        )

    async def _abandoned(self, exchange: _Exchange) -> None:
        """A message the group commit dropped after its caller gave up: what opening left
        for it (a new conversation's session) is settled."""
        await self._opener.abandoned(exchange.tenant_id, exchange.opened)

    async def _finish_orphan(
        self, exchange: _Exchange, response: chat_service_pb2.SendMessageResponse
    ) -> None:
        """An exchange committed after its caller gave up: its after-commit work still runs."""
        try:
            await self._after_commit(exchange, response)
        except Exception:
            log.exception("after-commit work failed", conversation_id=exchange.conversation.id)

    async def _open(
        self,
        tenant_id: str,
        actor_id: str,
        request: chat_service_pb2.SendMessageRequest,
        now: dt.datetime,
    ) -> Opened:
        """The conversation the request names, or the user's active one on the channel (or a
        new one), with its session."""
        if not request.conversation_id:
            return await self._opener.open_active(
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
        return await self._opener.open_found(tenant_id, actor_id, found, now=now)

    async def _store(
        self, exchanges: list[_Exchange]
    ) -> list[chat_service_pb2.SendMessageResponse | Exception]:
        """Store exchanges of distinct conversations in one transaction: a bulk statement per
        collection, whatever their number (see GroupCommit). A new conversation is inserted
        with its first exchange, after its ConversationStarted and SessionStarted events."""

        async def work(tx: Tx) -> list[chat_service_pb2.SendMessageResponse | Exception]:
            states = await self._conversations.record_messages_many(
                [
                    Recording(
                        tenant_id=e.tenant_id,
                        conversation_id=e.conversation.id,
                        inbound=1,
                        outbound=len(e.messages) - 1,
                        now=e.now,
                        start=e.conversation if e.opened.started else None,
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
                {
                    "message_sent": events_pb2.MessageSent(
                        message=m, response_time=response_time(inbound, m)
                    )
                }
                for m in replies
            ]
        events.append(
            {"conversation_updated": events_pb2.ConversationUpdated(conversation=updated)}
        )
        response = chat_service_pb2.SendMessageResponse(
            message=inbound, replies=replies, conversation=updated, session=exchange.opened.session
        )
        await self._requests.record(
            exchange.key,
            response,
            now=now,
            tx=tx,
        )
        envelopes = [
            *exchange.opened.events,
            *(
                envelope(
                    tenant_id=tenant_id,
                    actor_id=exchange.actor_id,
                    conversation_id=updated.id,
                    now=now,
                    **e,
                )
                for e in events
            ),
        ]
        return response, envelopes


def _violations(request: chat_service_pb2.SendMessageRequest) -> Violations:
    """Every problem of the request's own fields (its content is checked when processed)."""
    violations = Violations()
    violations.text("user_id", request.user_id, limit=MAX_ADDRESS_CHARS, required=True)
    violations.text("request_id", request.request_id, limit=MAX_ID_CHARS)
    violations.text("conversation_id", request.conversation_id, limit=MAX_ID_CHARS)
    violations.text(
        "channel_conversation_id", request.channel_conversation_id, limit=MAX_ADDRESS_CHARS
    )
    violations.text("reply_to_message_id", request.reply_to_message_id, limit=MAX_ID_CHARS)
    violations.enum("channel", request.channel, common_pb2.ChannelType.DESCRIPTOR, required=True)
    if len(request.metadata) > MAX_METADATA_ENTRIES:
        violations.add("metadata", f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in request.metadata.items():
        if not key or len(key) > 64 or len(value) > 1024:
            violations.add(f"metadata[{key[:64]}]", "keys 1-64 characters, values at most 1024")
    return violations
