"""IngestService: normalized platform events from the webhook bridge, a batch at a time.

A batch is applied within the call, or, when the bridge asks (``apply_later``: a webhook too
large to apply within the platform's deadline), stored whole in the inbox in one write and
applied shortly after by the InboxWorker (ingest_inbox.py), a tenant's batches in the order
they were stored. While a tenant's batches wait there, a batch carrying messages joins them
rather than overtake them, so a user's messages keep their order.

Inbound messages are stored with their deduplication records, events and reply jobs in
group-committed transactions (ingest_messages.py), and the call returns then, so the bridge
can acknowledge the platform quickly; the reply comes afterwards from the durable reply queue.
Status reports move delivery status forward only, all of a batch's in one transaction
(ingest_statuses.py). A typing report goes to the conversation's streams.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from chat.v1 import chat_service_pb2, common_pb2, ingest_service_pb2
from server.domain.errors import StoreError
from server.domain.inbound import check_event, conversation_user
from server.domain.queues import ClaimedReplyJob
from server.processors.content import ContentProcessor
from server.services.ingest_messages import MessageIngest
from server.services.ingest_outcomes import (
    ACCEPTED,
    DUPLICATE,
    IGNORED,
    QUEUED,
    UNPROCESSABLE,
    UNPROCESSABLE_MESSAGE,
    Result,
    log_bug,
    outcome,
    raise_unless_a_bug,
    rejected,
)
from server.services.ingest_statuses import StatusIngest
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.opening import ConversationOpener
from server.services.ports import (
    ConversationRepository,
    IngestInbox,
    IngestLog,
    MessageRepository,
    Outbox,
    ReplyJobQueue,
    TransactionRunner,
)
from server.services.queue_worker import Reservation
from server.services.receipts import Receipts
from server.tracing.spans import continuing

log = structlog.get_logger("chat.ingest")

#: Conversations of one batch applied at once: enough to fill a group commit (GroupCommit's
#: max_batch), few enough not to start hundreds of first-contact transactions together.
CONVERSATIONS_AT_ONCE = 64


class IngestService:
    """Applies a batch of platform events: each its result, none held back by another."""

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
        inbox: IngestInbox,
        reply_jobs: ReplyJobQueue,
        live: QuietLiveEvents,
        clock: Callable[[], dt.datetime],
        on_events: Callable[[], None] = lambda: None,
        on_reply_job: Callable[[], None] = lambda: None,
        reply_slots: Callable[[int], Reservation[ClaimedReplyJob]] | None = None,
        receipts: Receipts,
        on_batch: Callable[[int], None] = lambda _size: None,
        on_queued: Callable[[], None] = lambda: None,
        is_outage: Callable[[Exception], bool] = lambda exc: isinstance(exc, StoreError),
    ) -> None:
        """``is_outage`` tells a store that cannot be reached (the whole call fails, and the
        platform retries it) from a bug in applying one event (that event alone is rejected).
        ``on_queued`` wakes the inbox's worker; ``reply_slots`` reserves room in this
        process's reply worker, which takes the jobs queued for it leased (``on_reply_job``
        wakes it for the others)."""
        self._is_outage = is_outage
        self._inbox = inbox
        self._clock = clock
        self._on_queued = on_queued
        self._conversations_at_once = asyncio.Semaphore(CONVERSATIONS_AT_ONCE)
        self._conversations = conversations
        self._log = ingest_log
        self._live = live
        self._messages = MessageIngest(
            opener=opener,
            push=push,
            conversations=conversations,
            messages=messages,
            outbox=outbox,
            transactions=transactions,
            content=content,
            ingest_log=ingest_log,
            reply_jobs=reply_jobs,
            clock=clock,
            on_events=on_events,
            on_reply_job=on_reply_job,
            on_batch=on_batch,
            is_outage=is_outage,
            reply_slots=reply_slots,
        )
        self._statuses = StatusIngest(
            conversations=conversations,
            receipts=receipts,
            ingest_log=ingest_log,
            transactions=transactions,
            clock=clock,
            is_outage=is_outage,
        )

    async def ingest(
        self,
        tenant_id: str,
        events: Sequence[ingest_service_pb2.InboundEvent],
        *,
        apply_later: bool = False,
    ) -> list[Result]:
        """One result per event, in order: applied now, or QUEUED in the inbox when the
        caller asks, or when messages would overtake the tenant's batches waiting there.
        Store outages propagate (the bridge retries the batch; deduplication makes that
        safe)."""
        if apply_later or (
            any(event.WhichOneof("kind") == "message" for event in events)
            and await self._inbox.waiting(tenant_id)
        ):
            return await self._queue(tenant_id, events)
        return await self.apply(tenant_id, events)

    async def _queue(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        """Store the valid events in the inbox in one write; invalid ones are rejected now."""
        results, todo = _screen(events)
        if todo:
            request = ingest_service_pb2.IngestEventsRequest(events=[events[i] for i in todo])
            await self._inbox.enqueue(
                tenant_id, request.SerializeToString(), count=len(todo), now=self._clock()
            )
            self._on_queued()
        for index in todo:
            results[index] = outcome(events[index], QUEUED)
        return [result for result in results if result is not None]

    async def apply(
        self, tenant_id: str, events: Sequence[ingest_service_pb2.InboundEvent]
    ) -> list[Result]:
        """One result per event, in order. The batch is applied as a whole: one read for the
        events ingested before, the status reports in one transaction, and each
        conversation's messages (and typing) in their order, the conversations concurrently
        so their messages share group-committed transactions. Store outages propagate."""
        results, todo = _screen(events)
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
                results[index] = outcome(event, DUPLICATE)
            elif kind == "status":
                statuses.append(index)
            else:
                key = (event.channel, conversation_user(event))
                by_conversation.setdefault(key, []).append(index)

        async def reports() -> None:
            done = await self._statuses.apply(tenant_id, [events[i] for i in statuses])
            for index, result in zip(statuses, done, strict=True):
                results[index] = result

        async def conversation(indexes: list[int]) -> None:
            async with self._conversations_at_once:
                for run in _runs(indexes, events):
                    # An event of a webhook the bridge sent in another's call continues its
                    # own webhook's trace (a run of several webhooks' messages, the first's).
                    with continuing("ingest.webhook", events[run[0]].traceparent):
                        if events[run[0]].WhichOneof("kind") == "typing":
                            results[run[0]] = await self._guarded(tenant_id, events[run[0]])
                            continue
                        done = await self._messages.run(tenant_id, [events[i] for i in run])
                    for index, result in zip(run, done, strict=True):
                        results[index] = result

        work = [conversation(indexes) for indexes in by_conversation.values()]
        if statuses:
            work.append(reports())
        await _all(work)
        return [result for result in results if result is not None]

    async def _guarded(self, tenant_id: str, event: ingest_service_pb2.InboundEvent) -> Result:
        """A typing report's result; one this server fails on (our bug) is rejected alone.
        Store outages and deliberate errors (DomainError) fail the whole call."""
        try:
            return await self._typing(tenant_id, event)
        except Exception as exc:  # noqa: BLE001 - a bug of ours; outages are raised again
            raise_unless_a_bug(exc, self._is_outage)
            log_bug(exc, [event], tenant_id)
            return rejected(event, UNPROCESSABLE, UNPROCESSABLE_MESSAGE)

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


def _screen(
    events: Sequence[ingest_service_pb2.InboundEvent],
) -> tuple[list[Result | None], list[int]]:
    """The results of the events that are invalid or repeated within the batch, and the
    indexes of the others, in order."""
    results: list[Result | None] = [None] * len(events)
    todo: list[int] = []
    firsts: set[tuple[int, str]] = set()
    for index, event in enumerate(events):
        problem = check_event(event)
        key = (event.channel, event.platform_event_id)
        if problem:
            results[index] = rejected(event, "INVALID_EVENT", problem)
        elif key in firsts:  # twice in one batch: the first counts
            results[index] = outcome(event, DUPLICATE)
        else:
            firsts.add(key)
            todo.append(index)
    return results, todo


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
