"""Inbound messages of IngestEvents: each conversation's messages of a batch stored together,
in their order, with their deduplication records, events and reply jobs, in one transaction
shared with the messages arriving meanwhile (group commit). The reply is generated afterwards
from the durable reply queue (services/replies.py)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from chat.v1 import common_pb2, events_pb2, ingest_service_pb2
from server.domain.conversations import Recording
from server.domain.errors import AlreadyExists, DomainError, InvalidArgument
from server.domain.inbound import conversation_user
from server.domain.messages import MessageRow, ProcessedContent, build_message
from server.domain.queues import ClaimedReplyJob, ReplyJob
from server.events.envelopes import envelope
from server.processors.content import ContentProcessor
from server.services.group_commit import GroupCommit
from server.services.ingest_outcomes import (
    ACCEPTED,
    DUPLICATE,
    UNPROCESSABLE,
    UNPROCESSABLE_MESSAGE,
    Result,
    log_bug,
    outcome,
    raise_unless_a_bug,
    rejected,
)
from server.services.live import CommittedPush
from server.services.opening import (
    ConversationClosedError,
    ConversationOpener,
    Opened,
    lost_start,
)
from server.services.ports import (
    ConversationRepository,
    IngestLog,
    MessageRepository,
    Outbox,
    ReplyJobQueue,
    TransactionRunner,
    Tx,
)
from server.services.queue_worker import Reservation

log = structlog.get_logger("chat.ingest")


class MessageIngest:
    """Inbound messages of IngestEvents."""

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
        clock: Callable[[], dt.datetime],
        on_events: Callable[[], None],
        on_reply_job: Callable[[], None],
        on_batch: Callable[[int], None],
        is_outage: Callable[[Exception], bool],
        reply_slots: Callable[[int], Reservation[ClaimedReplyJob]] | None = None,
    ) -> None:
        self._opener = opener
        self._push = push
        self._conversations = conversations
        self._messages = messages
        self._outbox = outbox
        self._transactions = transactions
        self._content = content
        self._log = ingest_log
        self._jobs = reply_jobs
        self._clock = clock
        self._on_events = on_events
        self._on_reply_job = on_reply_job
        #: Room in the reply worker: jobs queued leased to it are handed over after the commit.
        self._reply_slots = reply_slots or (lambda _wanted: Reservation.none())
        self._is_outage = is_outage
        self._commits: GroupCommit[_Inbound, _Stored] = GroupCommit(
            self._store,
            # A user's channel, not the conversation: two starts for one user never share a
            # batch (see record_messages_many).
            key=lambda item: (item.tenant_id, item.conversation.user_id, item.conversation.channel),
            trace_key=lambda item: (item.tenant_id, item.conversation.id),
            name="ingest.apply",
            on_batch=on_batch,
            on_orphan=self._finish_orphan,
            on_abandoned=self._abandoned,
            divisible=(AlreadyExists,),
        )

    async def _one(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        """One message's result. One this server fails on (our bug) is rejected alone, so it
        cannot hold back the rest of its batch on every retry of the platform's; its writes
        share one transaction, which the error rolls back. Store outages and deliberate errors
        (DomainError) fail the whole call."""
        try:
            [result] = await self._messages_together(tenant_id, [event])
        except InvalidArgument as exc:
            return rejected(event, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug of ours; outages are raised again
            raise_unless_a_bug(exc, self._is_outage)
            log_bug(exc, [event], tenant_id)
            return rejected(event, UNPROCESSABLE, UNPROCESSABLE_MESSAGE)
        return result

    async def run(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        """Consecutive messages of one conversation in a batch, stored in one item of the group
        commit; when that fails on a bug of ours, each alone (and the one that fails is
        rejected alone)."""
        if len(events) == 1:
            return [await self._one(tenant_id, events[0])]
        try:
            return await self._messages_together(tenant_id, events)
        except InvalidArgument as exc:
            return [rejected(event, exc.reason, str(exc)) for event in events]
        except Exception as exc:
            raise_unless_a_bug(exc, self._is_outage)
            log.warning("messages failed together; storing each alone", exc_info=exc)
            return [await self._one(tenant_id, event) for event in events]

    async def _messages_together(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        results: list[Result | None] = [None] * len(events)
        parts: list[tuple[int, ProcessedContent]] = []
        for index, event in enumerate(events):
            try:
                processed = await self._content.process_inbound(
                    tenant_id, event.message.content, channel=event.channel, field="message.content"
                )
            except DomainError as exc:
                results[index] = rejected(event, "INVALID_CONTENT", str(exc))
                continue
            parts.append((index, processed))
        if parts:
            stored = await self._store_in_an_open_conversation(
                tenant_id, [(events[i], processed) for i, processed in parts]
            )
            for (index, _), result in zip(parts, stored, strict=True):
                results[index] = result
        return [result for result in results if result is not None]

    async def _store_in_an_open_conversation(
        self,
        tenant_id: str,
        parts: list[tuple[ingest_service_pb2.InboundEvent, ProcessedContent]],
    ) -> list[Result]:
        for _ in range(2):  # a conversation closing meanwhile: once more, in a new one
            try:
                return await self._store_messages(tenant_id, parts)
            except ConversationClosedError:
                continue
        raise InvalidArgument("the conversation closed while the message was stored")

    async def _store_messages(
        self,
        tenant_id: str,
        parts: list[tuple[ingest_service_pb2.InboundEvent, ProcessedContent]],
    ) -> list[Result]:
        """Messages of one conversation (in their order), stored together."""
        now = self._clock()
        first = parts[0][0]
        opened = await self._opener.open_active(
            tenant_id,
            first.platform_user_id,
            user_id=conversation_user(first),
            channel=first.channel,
            channel_conversation_id=first.channel_conversation_id,
            now=now,
        )
        conversation = opened.conversation
        try:
            async with self._opener.held(tenant_id, opened):
                inbound = _Inbound(
                    tenant_id=tenant_id,
                    opened=opened,
                    parts=tuple(
                        _Part(
                            event,
                            _built(conversation, event, processed, now),
                            processed.search_text,
                        )
                        for event, processed in parts
                    ),
                    now=now,
                )
                opened.submitted = True  # from here the group commit settles it
                stored = await self._commits.submit(inbound)
                self._opener.remember(tenant_id, stored.conversation)
        except Exception as exc:
            if isinstance(exc, ConversationClosedError) or lost_start(exc):
                self._opener.closed(tenant_id, conversation)
                raise ConversationClosedError from exc
            if not isinstance(exc, AlreadyExists):
                raise
            if len(parts) == 1:
                return [outcome(parts[0][0], DUPLICATE)]
            # A retry of the platform's, racing this call, stored one of them first: each
            # alone, so that one is the duplicate and the others are stored.
            return [r for part in parts for r in await self._store_messages(tenant_id, [part])]
        await self._after_commit(inbound, stored)
        return [
            Result(
                platform_event_id=part.event.platform_event_id,
                outcome=ACCEPTED,
                message_id=message.id,
            )
            for part, message in zip(inbound.parts, stored.messages, strict=True)
        ]

    async def _store(self, batch: list[_Inbound]) -> list[_Stored | Exception]:
        """Store inbound messages of distinct conversations in one transaction, a bulk
        statement per collection (see GroupCommit): each with its deduplication record, its
        events and its reply job. A message whose conversation closed meanwhile is left out. A
        retry that raced the check in _message fails the batch on the log's unique key; the
        batch is then stored item by item and the retry alone gets AlreadyExists. A new
        conversation is inserted with its first messages, after its ConversationStarted and
        SessionStarted events; one whose user started another meanwhile fails alone, with
        AlreadyExists (ALREADY_ACTIVE), the same way. The first reply job of each
        conversation is queued leased to this process's reply worker while it has room, and
        handed to it with its message and conversation once committed (no poll, no claim, no
        read); the others are queued due, and the worker woken for them."""
        # Room for each conversation's first job; those behind it wait for it anyway.
        reservation = self._reply_slots(len(batch))
        leased: list[ClaimedReplyJob] = []
        due = 0
        #: Each stored message, by id, with its conversation as committed.
        known: dict[str, tuple[common_pb2.Message, common_pb2.Conversation]] = {}

        async def work(tx: Tx) -> list[_Stored | Exception]:
            nonlocal leased, due, known
            leased, due = [], 0
            states = await self._conversations.record_messages_many(
                [
                    Recording(
                        tenant_id=item.tenant_id,
                        conversation_id=item.conversation.id,
                        inbound=len(item.parts),
                        outbound=0,
                        now=item.now,
                        service_url=item.parts[-1].event.service_url,
                        start=item.conversation if item.opened.started else None,
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
                messages = []
                # The conversation's last sequence is its last message's.
                first = updated.last_sequence - len(item.parts) + 1
                for sequence, part in enumerate(item.parts, start=first):
                    message = common_pb2.Message()
                    message.CopyFrom(part.message)
                    message.sequence = sequence
                    messages.append(message)
                done = _Stored(messages=messages, conversation=updated)
                outcomes.append(done)
                stored.append((item, done))
            if not stored:
                return outcomes
            newest = max(i.now for i, _ in stored)
            await self._log.record_many(
                [
                    (i.tenant_id, part.event.channel, part.event.platform_event_id)
                    for i, _ in stored
                    for part in i.parts
                ],
                now=newest,
                tx=tx,
            )
            await self._messages.insert_rows(
                [
                    MessageRow(i.tenant_id, message, part.search_text)
                    for i, o in stored
                    for part, message in zip(i.parts, o.messages, strict=True)
                ],
                tx=tx,
            )
            events: list[events_pb2.EventEnvelope] = []
            for i, o in stored:
                actor = i.parts[-1].event.platform_user_id
                events += i.opened.events
                events += [
                    _envelope(i.tenant_id, actor, o.conversation.id, i.now, message_received=m)
                    for m in map(_received, o.messages)
                ]
                after = events_pb2.ConversationUpdated(conversation=o.conversation)
                events.append(
                    _envelope(
                        i.tenant_id, actor, o.conversation.id, i.now, conversation_updated=after
                    )
                )
            await self._outbox.add(events, now=newest, tx=tx)
            leased = await self._jobs.enqueue_many(
                [
                    ReplyJob(
                        tenant_id=i.tenant_id,
                        conversation_id=o.conversation.id,
                        message_id=m.id,
                        sequence=m.sequence,
                        now=i.now,
                    )
                    for i, o in stored
                    for m in o.messages
                ],
                tx=tx,
                leasing=reservation.leasing(self._clock()),
            )
            # Each conversation's first job is due (the others are held behind it).
            due = len(stored) - len(leased)
            known = {m.id: (m, o.conversation) for _, o in stored for m in o.messages}
            return outcomes

        try:
            outcomes = await self._transactions.run(work)
            # Handed over with the message and conversation as committed: the worker reads
            # neither.
            reservation.hand_over([_knowing(job, *known[job.message_id]) for job in leased])
        finally:
            reservation.release()  # the room not handed over (all of it, when not committed)
        if due:
            self._on_reply_job()
        return outcomes

    async def _after_commit(self, item: _Inbound, stored: _Stored) -> None:
        """Wake the relay, push to the streams, keep the session."""
        self._on_events()
        await self._push.messages(
            item.tenant_id, stored.conversation, stored.messages, item.opened.session, now=item.now
        )

    async def _abandoned(self, item: _Inbound) -> None:
        """A message the group commit dropped after its caller gave up: what opening left
        for it (a new conversation's session) is settled."""
        await self._opener.abandoned(item.tenant_id, item.opened)

    async def _finish_orphan(self, item: _Inbound, stored: _Stored) -> None:
        """A message stored after its caller gave up: its after-commit work still runs."""
        try:
            await self._after_commit(item, stored)
        except Exception:
            log.exception("after-commit work failed", conversation_id=stored.conversation.id)


@dataclass(frozen=True, slots=True)
class _Part:
    """One inbound message of an item (its sequence is assigned in the transaction)."""

    event: ingest_service_pb2.InboundEvent
    message: common_pb2.Message
    search_text: str


@dataclass(frozen=True, slots=True)
class _Inbound:
    """Inbound messages of one conversation, in their order, ready to store together."""

    tenant_id: str
    opened: Opened
    parts: tuple[_Part, ...]
    now: dt.datetime

    @property
    def conversation(self) -> common_pb2.Conversation:
        return self.opened.conversation


@dataclass(frozen=True, slots=True)
class _Stored:
    """Inbound messages as stored, and their conversation after them."""

    messages: list[common_pb2.Message]
    conversation: common_pb2.Conversation


def _knowing(
    job: ClaimedReplyJob, message: common_pb2.Message, conversation: common_pb2.Conversation
) -> ClaimedReplyJob:
    """A job handed over with copies of its message and conversation (the worker's own: the
    reply may fetch the message's media into it, while the call's copy is pushed)."""
    own_message = common_pb2.Message()
    own_message.CopyFrom(message)
    own_conversation = common_pb2.Conversation()
    own_conversation.CopyFrom(conversation)
    return dataclasses.replace(job, message=own_message, conversation=own_conversation)


def _built(
    conversation: common_pb2.Conversation,
    event: ingest_service_pb2.InboundEvent,
    processed: ProcessedContent,
    now: dt.datetime,
) -> common_pb2.Message:
    """The inbound message an event carries, in its conversation (no sequence yet)."""
    metadata = {
        key: value
        for key, value in (
            ("platform_account_id", event.platform_account_id),
            ("service_url", event.service_url),
            ("user_display_name", event.user_display_name),
            ("reply_to_platform_message_id", event.message.reply_to_platform_message_id),
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
    message.platform_message_id = event.message.platform_message_id
    return message


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
