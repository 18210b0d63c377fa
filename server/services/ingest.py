"""IngestService: normalized platform events from the webhook bridge.

An inbound message is stored, with its platform event id (the deduplication record), its
events and a reply job, in one transaction (shared with the messages arriving meanwhile: group
commit); the call returns then, so the bridge can
acknowledge the platform quickly, and the reply is generated afterwards from the durable
reply queue (services/replies.py). A status report moves delivery status forward only; a
typing report goes to the conversation's streams.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from chat.v1 import chat_service_pb2, common_pb2, events_pb2, ingest_service_pb2
from server.domain.conversations import Recording
from server.domain.errors import AlreadyExists, DomainError, InvalidArgument, StoreError
from server.domain.inbound import check_event, conversation_user
from server.domain.messages import MessageRow, ProcessedContent, build_message
from server.domain.queues import ReplyJob
from server.events.envelopes import envelope
from server.processors.content import ContentProcessor
from server.services.group_commit import GroupCommit
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.opening import ConversationClosedError, ConversationOpener
from server.services.ports import (
    ConversationRepository,
    IngestLog,
    MessageRepository,
    Outbox,
    ReplyJobQueue,
    TransactionRunner,
    Tx,
)
from server.services.receipts import Receipts, StatusChange

log = structlog.get_logger("chat.ingest")

Result = ingest_service_pb2.IngestResult
ACCEPTED = ingest_service_pb2.INGEST_OUTCOME_ACCEPTED
DUPLICATE = ingest_service_pb2.INGEST_OUTCOME_DUPLICATE
IGNORED = ingest_service_pb2.INGEST_OUTCOME_IGNORED
DEFERRED = ingest_service_pb2.INGEST_OUTCOME_DEFERRED
REJECTED = ingest_service_pb2.INGEST_OUTCOME_REJECTED
#: The reason an event is rejected for when applying it failed on a bug of ours (logged).
UNPROCESSABLE = "UNPROCESSABLE_EVENT"


class IngestService:
    """Applies one batch of platform events, each on its own."""

    def __init__(
        self,
        *,
        opener: ConversationOpener,
        push: CommittedPush,
        conversations: ConversationRepository,
        messages: MessageRepository,
        outbox: Outbox,
        transactions: TransactionRunner,
        content: ContentProcessor,
        ingest_log: IngestLog,
        reply_jobs: ReplyJobQueue,
        live: QuietLiveEvents,
        clock: Callable[[], dt.datetime],
        on_events: Callable[[], None] = lambda: None,
        on_reply_job: Callable[[], None] = lambda: None,
        receipts: Receipts,
        on_batch: Callable[[int], None] = lambda _size: None,
        is_outage: Callable[[Exception], bool] = lambda exc: isinstance(exc, StoreError),
    ) -> None:
        """``is_outage`` tells a store that cannot be reached (the whole call fails, and the
        platform retries it) from a bug in applying one event (that event alone is rejected)."""
        self._opener = opener
        self._is_outage = is_outage
        self._push = push
        self._receipts = receipts
        self._conversations = conversations
        self._messages = messages
        self._outbox = outbox
        self._transactions = transactions
        self._content = content
        self._log = ingest_log
        self._jobs = reply_jobs
        self._live = live
        self._clock = clock
        self._on_events = on_events
        self._on_reply_job = on_reply_job
        self._commits: GroupCommit[_Inbound, _Stored] = GroupCommit(
            self._store,
            key=lambda item: (item.tenant_id, item.conversation.id),
            on_batch=on_batch,
            on_orphan=self._finish_orphan,
            divisible=(AlreadyExists,),
        )

    async def ingest(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        """One result per event, in order. Store outages propagate (the bridge retries the
        batch; deduplication makes that safe)."""
        return [await self._guarded(tenant_id, event) for event in events]

    async def _guarded(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        """One event's result. An event this server fails on (our bug) is rejected alone, so it
        cannot hold back the rest of its batch on every retry of the platform's; its writes
        share one transaction, which the error rolls back. Store outages and deliberate errors
        (DomainError) fail the whole call."""
        try:
            return await self._one(tenant_id, event)
        except InvalidArgument as exc:
            return _rejected(event, exc.reason, str(exc))
        except DomainError:
            raise
        except Exception as exc:
            if self._is_outage(exc):
                raise
            log.exception(
                "event not applied",
                tenant_id=tenant_id,
                channel=event.channel,
                platform_event_id=event.platform_event_id,
                kind=event.WhichOneof("kind"),
            )
            return _rejected(event, UNPROCESSABLE, "the server could not apply this event")

    async def _one(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        problem = check_event(event)
        if problem:
            return _rejected(event, "INVALID_EVENT", problem)
        kind = event.WhichOneof("kind")
        if kind == "message":
            return await self._message(tenant_id, event)
        if kind == "status":
            return await self._status(tenant_id, event)
        return await self._typing(tenant_id, event)

    async def _message(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        # A platform's retry stops here, before its media is fetched or a conversation or a
        # session is started for it; one racing this check is caught when stored (_store).
        if await self._log.seen(tenant_id, event.channel, event.platform_event_id):
            return Result(platform_event_id=event.platform_event_id, outcome=DUPLICATE)
        inbound_event = event.message
        try:
            processed = await self._content.process_inbound(
                tenant_id, inbound_event.content, channel=event.channel, field="message.content"
            )
        except DomainError as exc:
            return _rejected(event, "INVALID_CONTENT", str(exc))
        for _ in range(2):  # a conversation closing meanwhile: once more, in a new one
            try:
                return await self._store_message(tenant_id, event, processed)
            except ConversationClosedError:
                continue
        raise InvalidArgument("the conversation closed while the message was stored")

    async def _store_message(
        self,
        tenant_id: str,
        event: ingest_service_pb2.InboundEvent,
        processed: ProcessedContent,
    ) -> Result:
        inbound_event = event.message
        now = self._clock()
        actor = event.platform_user_id
        user_id = conversation_user(event)
        conversation, session, _ = await self._opener.open_active(
            tenant_id,
            actor,
            user_id=user_id,
            channel=event.channel,
            channel_conversation_id=event.channel_conversation_id,
            now=now,
        )
        metadata = {
            key: value
            for key, value in (
                ("platform_account_id", event.platform_account_id),
                ("service_url", event.service_url),
                ("user_display_name", event.user_display_name),
                ("reply_to_platform_message_id", inbound_event.reply_to_platform_message_id),
            )
            if value
        }
        message = build_message(
            conversation,
            processed,
            direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
            sender_id=event.platform_user_id,
            now=now,
            reply_to="",
            metadata=metadata,
        )
        message.platform_message_id = inbound_event.platform_message_id
        inbound = _Inbound(
            tenant_id=tenant_id,
            event=event,
            conversation=conversation,
            session=session,
            message=message,
            search_text=processed.search_text,
            now=now,
        )
        try:
            stored = await self._commits.submit(inbound)
        except AlreadyExists:
            return Result(platform_event_id=event.platform_event_id, outcome=DUPLICATE)
        except ConversationClosedError:
            self._opener.closed(tenant_id, conversation)
            raise
        self._opener.remember(tenant_id, stored.conversation)
        await self._after_commit(inbound, stored)
        return Result(
            platform_event_id=event.platform_event_id,
            outcome=ACCEPTED,
            message_id=stored.message.id,
        )

    async def _store(self, batch: list[_Inbound]) -> list[_Stored | Exception]:
        """Store inbound messages of distinct conversations in one transaction, a bulk
        statement per collection (see GroupCommit): each with its deduplication record, its
        events and its reply job. A message whose conversation closed meanwhile is left out. A
        retry that raced the check in _message fails the batch on the log's unique key; the
        batch is then stored item by item and the retry alone gets AlreadyExists."""

        async def work(tx: Tx) -> list[_Stored | Exception]:
            states = await self._conversations.record_messages_many(
                [
                    Recording(
                        tenant_id=item.tenant_id,
                        conversation_id=item.conversation.id,
                        inbound=1,
                        outbound=0,
                        now=item.now,
                        service_url=item.event.service_url,
                    )
                    for item in batch
                ],
                tx=tx,
            )
            outcomes: list[_Stored | Exception] = []
            stored: list[tuple[_Inbound, _Stored]] = []
            for item, updated in zip(batch, states, strict=True):
                if updated is None:
                    outcomes.append(ConversationClosedError())
                    continue
                message = common_pb2.Message()
                message.CopyFrom(item.message)
                message.sequence = updated.last_sequence
                done = _Stored(message=message, conversation=updated)
                outcomes.append(done)
                stored.append((item, done))
            if not stored:
                return outcomes
            await self._log.record_many(
                [(i.tenant_id, i.event.channel, i.event.platform_event_id) for i, _ in stored],
                now=max(i.now for i, _ in stored),
                tx=tx,
            )
            await self._messages.insert_rows(
                [MessageRow(i.tenant_id, o.message, i.search_text) for i, o in stored],
                tx=tx,
            )
            await self._outbox.add(
                [
                    _envelope(i.tenant_id, i.event.platform_user_id, o.conversation.id, i.now, **p)
                    for i, o in stored
                    for p in (
                        {"message_received": _received(o.message)},
                        {
                            "conversation_updated": events_pb2.ConversationUpdated(
                                conversation=o.conversation
                            )
                        },
                    )
                ],
                now=max(i.now for i, _ in stored),
                tx=tx,
            )
            await self._jobs.enqueue_many(
                [
                    ReplyJob(
                        tenant_id=i.tenant_id,
                        conversation_id=o.conversation.id,
                        message_id=o.message.id,
                        sequence=o.message.sequence,
                        now=i.now,
                    )
                    for i, o in stored
                ],
                tx=tx,
            )
            return outcomes

        return await self._transactions.run(work)

    async def _after_commit(self, item: _Inbound, stored: _Stored) -> None:
        """Wake the relay and the reply queue, push to the streams, keep the session."""
        self._on_events()
        self._on_reply_job()
        await self._push.messages(
            item.tenant_id, stored.conversation, [stored.message], item.session, now=item.now
        )

    async def _finish_orphan(self, item: _Inbound, stored: _Stored) -> None:
        """A message stored after its caller gave up: its after-commit work still runs."""
        try:
            await self._after_commit(item, stored)
        except Exception:
            log.exception("after-commit work failed", conversation_id=stored.conversation.id)

    async def _status(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        report = event.status
        if await self._log.seen(tenant_id, event.channel, event.platform_event_id):
            return Result(platform_event_id=event.platform_event_id, outcome=DUPLICATE)
        conversation = await self._conversations.find_active(
            tenant_id, conversation_user(event), event.channel
        )
        watermark = None
        if report.HasField("watermark_time") and conversation is not None:
            watermark = (conversation.id, report.watermark_time.ToDatetime(tzinfo=dt.UTC))
        ids = [platform_id for platform_id in report.platform_message_ids if platform_id]
        if not ids and watermark is None:
            return Result(platform_event_id=event.platform_event_id, outcome=IGNORED)
        now = self._clock()
        error = report.error if report.HasField("error") else None
        status_time = (
            event.event_time.ToDatetime(tzinfo=dt.UTC) if event.HasField("event_time") else now
        )

        async def apply(tx: Tx) -> tuple[list[StatusChange], list[str]]:
            await self._log.record(
                tenant_id, event.channel, event.platform_event_id, now=now, tx=tx
            )
            changes = await self._receipts.apply(
                tenant_id,
                channel=event.channel,
                status=report.status,
                platform_message_ids=ids,
                watermark=watermark,
                conversation_id=conversation.id if conversation is not None else None,
                error=error,
                status_time=status_time,
                actor_id=event.platform_user_id,
                now=now,
                tx=tx,
            )
            if changes and len(ids) <= 1:
                return changes, []
            # Messages the platform reports on before their sends are recorded: the receipt
            # waits for them. With nothing parked or changed (a backward move) nothing is
            # recorded as ingested, so the platform's retry may still apply it.
            parked = await self._receipts.park_unknown(
                tenant_id,
                channel=event.channel,
                status=report.status,
                platform_message_ids=ids,
                conversation_id=conversation.id if conversation is not None else "",
                error=error,
                status_time=status_time,
                actor_id=event.platform_user_id,
                now=now,
                tx=tx,
            )
            if not parked and not changes:
                raise _NothingChangedError
            return changes, parked

        try:
            changes, parked = await self._transactions.run(apply)
        except AlreadyExists:
            return Result(platform_event_id=event.platform_event_id, outcome=DUPLICATE)
        except _NothingChangedError:
            return Result(platform_event_id=event.platform_event_id, outcome=IGNORED)
        await self._receipts.publish(tenant_id, changes)
        if not parked:
            return Result(platform_event_id=event.platform_event_id, outcome=ACCEPTED)
        try:
            # A send's outcome may have been committed while this receipt was parked.
            await self._receipts.settle_known(tenant_id, event.channel, parked, now=now)
        except Exception:
            # Parked and acknowledged: a later delivery outcome or receipt still applies.
            log.exception("parked receipts not settled", tenant_id=tenant_id)
        outcome = ACCEPTED if changes else DEFERRED
        return Result(platform_event_id=event.platform_event_id, outcome=outcome)

    async def _typing(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        conversation = await self._conversations.find_active(
            tenant_id, conversation_user(event), event.channel
        )
        if conversation is None:
            return Result(platform_event_id=event.platform_event_id, outcome=IGNORED)
        typing = chat_service_pb2.StreamConversationEventsResponse(
            event_time=event.event_time,
            typing=chat_service_pb2.TypingIndicator(
                participant_id=event.platform_user_id,
                typing=event.typing.typing,
                direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
            ),
        )
        await self._live.publish(tenant_id, conversation.id, [typing])
        return Result(platform_event_id=event.platform_event_id, outcome=ACCEPTED)


@dataclass(frozen=True, slots=True)
class _Inbound:
    """An inbound message ready to store (its sequence is assigned in the transaction)."""

    tenant_id: str
    event: ingest_service_pb2.InboundEvent
    conversation: common_pb2.Conversation
    session: common_pb2.Session
    message: common_pb2.Message
    search_text: str
    now: dt.datetime


@dataclass(frozen=True, slots=True)
class _Stored:
    """An inbound message as stored, and its conversation after it."""

    message: common_pb2.Message
    conversation: common_pb2.Conversation


class _NothingChangedError(Exception):
    """A status report that changed no message (aborts its transaction)."""


def _rejected(event: ingest_service_pb2.InboundEvent, reason: str, message: str) -> Result:
    return Result(
        platform_event_id=event.platform_event_id,
        outcome=REJECTED,
        error_reason=reason,
        error_message=message[:500],
    )


def _received(message: common_pb2.Message) -> events_pb2.MessageReceived:
    return events_pb2.MessageReceived(message=message)


def _envelope(
    tenant_id: str, actor_id: str, conversation_id: str, now: dt.datetime, **payload: Any
) -> events_pb2.EventEnvelope:
    return envelope(
        tenant_id=tenant_id,
        actor_id=actor_id,
        conversation_id=conversation_id,
        now=now,
        **payload,
    )
