"""IngestService: normalized platform events from the webhook bridge.

An inbound message is stored, with its platform event id (the deduplication record), its
events and a reply job, in one transaction (shared with the messages arriving meanwhile: group
commit); the call returns then, so the bridge can
acknowledge the platform quickly, and the reply is generated afterwards from the durable
reply queue (services/replies.py). A status report moves delivery status forward only; a
typing report goes to the conversation's streams.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from chat.v1 import chat_service_pb2, common_pb2, events_pb2, ingest_service_pb2
from server.domain.conversations import Recording
from server.domain.errors import AlreadyExists, DomainError, InvalidArgument, StoreError
from server.domain.inbound import check_event, conversation_user
from server.domain.messages import MessageRow, ProcessedContent, build_message
from server.domain.queues import ReplyJob
from server.domain.receipts import StatusReport
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
from server.services.receipts import Applied, Receipts

log = structlog.get_logger("chat.ingest")

Result = ingest_service_pb2.IngestResult
ACCEPTED = ingest_service_pb2.INGEST_OUTCOME_ACCEPTED
DUPLICATE = ingest_service_pb2.INGEST_OUTCOME_DUPLICATE
IGNORED = ingest_service_pb2.INGEST_OUTCOME_IGNORED
DEFERRED = ingest_service_pb2.INGEST_OUTCOME_DEFERRED
REJECTED = ingest_service_pb2.INGEST_OUTCOME_REJECTED
#: The reason an event is rejected for when applying it failed on a bug of ours (logged).
UNPROCESSABLE = "UNPROCESSABLE_EVENT"
UNPROCESSABLE_MESSAGE = "the server could not apply this event"
#: Conversations of one batch applied at once: enough to fill a group commit (GroupCommit's
#: max_batch), few enough not to start hundreds of first-contact transactions together.
CONVERSATIONS_AT_ONCE = 64


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
        self._conversations_at_once = asyncio.Semaphore(CONVERSATIONS_AT_ONCE)
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
        """One result per event, in order. The batch is applied as a whole: one read for the
        events ingested before, the status reports in one transaction, and each
        conversation's messages (and typing) in their order, the conversations concurrently
        so their messages share group-committed transactions. Store outages propagate (the
        bridge retries the batch; deduplication makes that safe)."""
        results: list[Result | None] = [None] * len(events)
        todo: list[int] = []
        firsts: set[tuple[int, str]] = set()
        for index, event in enumerate(events):
            problem = check_event(event)
            key = (event.channel, event.platform_event_id)
            if problem:
                results[index] = _rejected(event, "INVALID_EVENT", problem)
            elif key in firsts:  # twice in one batch: the first counts
                results[index] = _outcome(event, DUPLICATE)
            else:
                firsts.add(key)
                todo.append(index)
        # A platform's retry stops here, before its media is fetched or a conversation or a
        # session is started for it; one racing this read is caught when stored.
        seen = await self._log.seen_many(
            tenant_id,
            [
                (events[i].channel, events[i].platform_event_id)
                for i in todo
                if events[i].WhichOneof("kind") != "typing"
            ],
        )
        statuses: list[int] = []
        by_conversation: dict[tuple[int, str], list[int]] = {}
        for index in todo:
            event = events[index]
            kind = event.WhichOneof("kind")
            if kind != "typing" and (event.channel, event.platform_event_id) in seen:
                results[index] = _outcome(event, DUPLICATE)
            elif kind == "status":
                statuses.append(index)
            else:
                key = (event.channel, conversation_user(event))
                by_conversation.setdefault(key, []).append(index)

        async def reports() -> None:
            done = await self._statuses(tenant_id, [events[i] for i in statuses])
            for index, result in zip(statuses, done, strict=True):
                results[index] = result

        async def conversation(indexes: list[int]) -> None:
            async with self._conversations_at_once:
                for run in _runs(indexes, events):
                    if events[run[0]].WhichOneof("kind") == "typing":
                        results[run[0]] = await self._guarded(tenant_id, events[run[0]])
                        continue
                    done = await self._messages_in_a_run(tenant_id, [events[i] for i in run])
                    for index, result in zip(run, done, strict=True):
                        results[index] = result

        work = [conversation(indexes) for indexes in by_conversation.values()]
        if statuses:
            work.append(reports())
        await _all(work)
        return [result for result in results if result is not None]

    async def _guarded(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        """One message's or typing report's result. An event this server fails on (our bug)
        is rejected alone, so it cannot hold back the rest of its batch on every retry of the
        platform's; its writes share one transaction, which the error rolls back. Store
        outages and deliberate errors (DomainError) fail the whole call."""
        try:
            if event.WhichOneof("kind") == "message":
                return await self._message(tenant_id, event)
            return await self._typing(tenant_id, event)
        except InvalidArgument as exc:
            return _rejected(event, exc.reason, str(exc))
        except Exception as exc:  # noqa: BLE001 - a bug of ours; outages are raised again
            self._raise_unless_a_bug(exc)
            _log_bug(exc, [event], tenant_id)
            return _rejected(event, UNPROCESSABLE, UNPROCESSABLE_MESSAGE)

    def _raise_unless_a_bug(self, exc: Exception) -> None:
        if isinstance(exc, DomainError) or self._is_outage(exc):
            raise exc

    async def _message(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        [result] = await self._messages_together(tenant_id, [event])
        return result

    async def _messages_in_a_run(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        """Consecutive messages of one conversation in a batch, stored in one item of the group
        commit; when that fails on a bug of ours, each alone (and the one that fails is
        rejected alone)."""
        if len(events) == 1:
            return [await self._guarded(tenant_id, events[0])]
        try:
            return await self._messages_together(tenant_id, events)
        except InvalidArgument as exc:
            return [_rejected(event, exc.reason, str(exc)) for event in events]
        except Exception as exc:
            self._raise_unless_a_bug(exc)
            log.warning("messages failed together; storing each alone", exc_info=exc)
            return [await self._guarded(tenant_id, event) for event in events]

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
                results[index] = _rejected(event, "INVALID_CONTENT", str(exc))
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
        conversation, session, _ = await self._opener.open_active(
            tenant_id,
            first.platform_user_id,
            user_id=conversation_user(first),
            channel=first.channel,
            channel_conversation_id=first.channel_conversation_id,
            now=now,
        )
        inbound = _Inbound(
            tenant_id=tenant_id,
            conversation=conversation,
            session=session,
            parts=tuple(
                _Part(event, _built(conversation, event, processed, now), processed.search_text)
                for event, processed in parts
            ),
            now=now,
        )
        try:
            stored = await self._commits.submit(inbound)
        except AlreadyExists:
            if len(parts) == 1:
                return [_outcome(parts[0][0], DUPLICATE)]
            # A retry of the platform's, racing this call, stored one of them first: each
            # alone, so that one is the duplicate and the others are stored.
            return [r for part in parts for r in await self._store_messages(tenant_id, [part])]
        except ConversationClosedError:
            self._opener.closed(tenant_id, conversation)
            raise
        self._opener.remember(tenant_id, stored.conversation)
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
        batch is then stored item by item and the retry alone gets AlreadyExists."""

        async def work(tx: Tx) -> list[_Stored | Exception]:
            states = await self._conversations.record_messages_many(
                [
                    Recording(
                        tenant_id=item.tenant_id,
                        conversation_id=item.conversation.id,
                        inbound=len(item.parts),
                        outbound=0,
                        now=item.now,
                        service_url=item.parts[-1].event.service_url,
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
            await self._jobs.enqueue_many(
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
            )
            return outcomes

        return await self._transactions.run(work)

    async def _after_commit(self, item: _Inbound, stored: _Stored) -> None:
        """Wake the relay and the reply queue, push to the streams, keep the session."""
        self._on_events()
        self._on_reply_job()
        await self._push.messages(
            item.tenant_id, stored.conversation, stored.messages, item.session, now=item.now
        )

    async def _finish_orphan(self, item: _Inbound, stored: _Stored) -> None:
        """A message stored after its caller gave up: its after-commit work still runs."""
        try:
            await self._after_commit(item, stored)
        except Exception:
            log.exception("after-commit work failed", conversation_id=stored.conversation.id)

    async def _statuses(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        """The batch's status reports, in one transaction; when that fails on a bug of ours,
        each half on its own, down to the one event that fails, which alone is rejected."""
        if not events:
            return []
        try:
            return await self._apply_statuses(tenant_id, events)
        except Exception as exc:
            self._raise_unless_a_bug(exc)
            if len(events) == 1:
                _log_bug(exc, events, tenant_id)
                return [_rejected(events[0], UNPROCESSABLE, UNPROCESSABLE_MESSAGE)]
            log.warning("status reports failed together; applying them in halves", exc_info=exc)
            half = len(events) // 2
            return [
                *await self._statuses(tenant_id, events[:half]),
                *await self._statuses(tenant_id, events[half:]),
            ]

    async def _apply_statuses(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        now = self._clock()
        active = await self._conversations.find_active_many(
            tenant_id, {(event.channel, conversation_user(event)) for event in events}
        )
        results = [_outcome(event, IGNORED) for event in events]
        reports: dict[int, StatusReport] = {}
        for index, event in enumerate(events):
            report = _report(event, active.get((event.channel, conversation_user(event))), now)
            if report.platform_message_ids or report.watermark is not None:
                reports[index] = report
        pending = list(reports)

        async def apply(tx: Tx) -> list[Applied]:
            applied = await self._receipts.apply_reports(
                tenant_id, [reports[i] for i in pending], now=now, tx=tx
            )
            # A report that changed and parked nothing (a backward move) is not recorded as
            # ingested, so the platform's retry may still apply it.
            done = [i for i, a in zip(pending, applied, strict=True) if a.changes or a.parked]
            if done:
                await self._log.record_many(
                    [(tenant_id, events[i].channel, events[i].platform_event_id) for i in done],
                    now=now,
                    tx=tx,
                )
            return applied

        applied = await self._commit_reports(tenant_id, events, pending, apply, results)
        changes = [change for a in applied for change in a.changes]
        await self._receipts.publish(tenant_id, changes)
        parked: dict[int, list[str]] = {}
        for index, done in zip(pending, applied, strict=True):
            if done.changes:
                results[index] = _outcome(events[index], ACCEPTED)
            elif done.parked:
                results[index] = _outcome(events[index], DEFERRED)
            parked.setdefault(events[index].channel, []).extend(done.parked)
        await self._settle(tenant_id, parked, now=now)
        return results

    async def _commit_reports(
        self,
        tenant_id: str,
        events: Sequence[ingest_service_pb2.InboundEvent],
        pending: list[int],
        apply: Callable[[Tx], Awaitable[list[Applied]]],
        results: list[Result],
    ) -> list[Applied]:
        """Run ``apply`` over the pending reports; a report a racing retry of the platform's
        recorded first is marked DUPLICATE in ``results`` and left out (``pending`` shrinks)."""
        for attempt in range(3):
            if not pending:
                return []
            try:
                return await self._transactions.run(apply)
            except AlreadyExists:
                if attempt == 2:
                    raise
                seen = await self._log.seen_many(
                    tenant_id, [(events[i].channel, events[i].platform_event_id) for i in pending]
                )
                for index in list(pending):
                    if (events[index].channel, events[index].platform_event_id) in seen:
                        results[index] = _outcome(events[index], DUPLICATE)
                        pending.remove(index)
        raise AssertionError("unreachable")

    async def _settle(
        self, tenant_id: str, parked: dict[int, list[str]], *, now: dt.datetime
    ) -> None:
        for channel, ids in parked.items():
            if not ids:
                continue
            try:
                # A send's outcome may have been committed while these receipts were parked.
                await self._receipts.settle_known(
                    tenant_id, common_pb2.ChannelType.ValueType(channel), ids, now=now
                )
            except Exception:
                # Parked and acknowledged: a later delivery outcome or receipt still applies.
                log.exception("parked receipts not settled", tenant_id=tenant_id)

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
class _Part:
    """One inbound message of an item (its sequence is assigned in the transaction)."""

    event: ingest_service_pb2.InboundEvent
    message: common_pb2.Message
    search_text: str


@dataclass(frozen=True, slots=True)
class _Inbound:
    """Inbound messages of one conversation, in their order, ready to store together."""

    tenant_id: str
    conversation: common_pb2.Conversation
    session: common_pb2.Session
    parts: tuple[_Part, ...]
    now: dt.datetime


@dataclass(frozen=True, slots=True)
class _Stored:
    """Inbound messages as stored, and their conversation after them."""

    messages: list[common_pb2.Message]
    conversation: common_pb2.Conversation


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


def _runs(indexes: list[int], events: Sequence[ingest_service_pb2.InboundEvent]) -> list[list[int]]:
    """A conversation's events in order, consecutive messages together, typing alone."""
    runs: list[list[int]] = []
    for index in indexes:
        message = events[index].WhichOneof("kind") == "message"
        if message and runs and events[runs[-1][0]].WhichOneof("kind") == "message":
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def _log_bug(
    exc: Exception, events: Sequence[ingest_service_pb2.InboundEvent], tenant_id: str
) -> None:
    """At error level, with the traceback: a bug of ours."""
    log.error(
        "event not applied",
        exc_info=exc,
        tenant_id=tenant_id,
        channel=events[0].channel,
        platform_event_id=events[0].platform_event_id,
        kind=events[0].WhichOneof("kind"),
    )


def _outcome(event: ingest_service_pb2.InboundEvent, outcome: int) -> Result:
    return Result(platform_event_id=event.platform_event_id, outcome=outcome)  # type: ignore[arg-type]


def _report(
    event: ingest_service_pb2.InboundEvent,
    conversation: common_pb2.Conversation | None,
    now: dt.datetime,
) -> StatusReport:
    """The event's status report, matched within the user's active conversation if any."""
    report = event.status
    watermark = None
    if report.HasField("watermark_time") and conversation is not None:
        watermark = (conversation.id, report.watermark_time.ToDatetime(tzinfo=dt.UTC))
    return StatusReport(
        channel=event.channel,
        status=report.status,
        platform_message_ids=tuple(pid for pid in report.platform_message_ids if pid),
        watermark=watermark,
        conversation_id=conversation.id if conversation is not None else None,
        error=report.error if report.HasField("error") else None,
        status_time=(
            event.event_time.ToDatetime(tzinfo=dt.UTC) if event.HasField("event_time") else now
        ),
        actor_id=event.platform_user_id,
    )


async def _all(work: Sequence[Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines concurrently; the first error cancels the rest and is raised."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in work]
    if not tasks:
        return
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
