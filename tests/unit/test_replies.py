"""ReplyWorker's rules, over in-memory stores: jobs answered in order, replies numbered after
the message and stored with the job's completion, lost leases, retries and giving up."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from chat.v1 import common_pb2
from server.domain.queues import (
    QUEUED,
    REPLY_HOLD_AT_MOST,
    SENDING,
    ClaimedReplyJob,
    Delivery,
    Due,
    ReplyJob,
)
from server.services.composing import ReplyComposer
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.queue_worker import LeasedQueueWorker
from server.services.replies import MAX_ATTEMPTS, ReplyWorker
from tests.support.ports import (
    Clock,
    MemoryStores,
    ScriptedResponder,
    content_processor,
    conversation_opener,
    ingest_service,
    message_event,
)
from tests.support.waiting import eventually

TENANT = "acme"
WHATSAPP = common_pb2.CHANNEL_TYPE_WHATSAPP


@pytest.fixture
def responder() -> ScriptedResponder:
    return ScriptedResponder("Hello!", "How can I help?")


@pytest.fixture
def worker(stores: MemoryStores, clock: Clock, responder: ScriptedResponder) -> ReplyWorker:
    return reply_worker(stores, clock, responder)


def reply_worker(
    stores: MemoryStores, clock: Clock, responder: ScriptedResponder, **options: Any
) -> ReplyWorker:
    return ReplyWorker(
        jobs=stores.reply_jobs,
        opener=conversation_opener(stores),
        composer=ReplyComposer(
            responder=responder, content=content_processor(), sessions=stores.sessions, clock=clock
        ),
        push=CommittedPush(live=QuietLiveEvents(stores.live), sessions=stores.sessions),
        conversations=stores.conversations,
        messages=stores.messages,
        outbox=stores.outbox,
        transactions=stores.transactions,
        clock=clock,
        deliveries=stores.deliveries,
        **options,
    )


async def given_inbound(
    stores: MemoryStores,
    clock: Clock,
    *,
    count: int = 1,
    status: int = 1,
    together: bool = False,
    user: str = "15550001",
) -> tuple[common_pb2.Conversation, list[common_pb2.Message]]:
    """A conversation with ``count`` inbound messages, each waiting for its reply; their jobs
    queued in one call (``together``, as one webhook's messages are) or one call each."""
    conversation = stores.conversations.add(
        TENANT,
        user_id=user,
        channel=WHATSAPP,
        channel_conversation_id=user,
        last_sequence=count,
        status=status,
        now=clock(),
    )
    messages = []
    for sequence in range(1, count + 1):
        message = common_pb2.Message(
            id=f"in-{sequence}" if user == "15550001" else f"{user}-in-{sequence}",
            conversation_id=conversation.id,
            sequence=sequence,
            channel=WHATSAPP,
            direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
            content=common_pb2.Content(text=common_pb2.TextContent(text="hi")),
        )
        message.create_time.FromDatetime(clock())
        stores.messages.add(TENANT, message)
        messages.append(message)

    async def enqueue(tx: object, queued: list[common_pb2.Message]) -> None:
        await stores.reply_jobs.enqueue_many(
            [ReplyJob(TENANT, conversation.id, m.id, m.sequence, clock()) for m in queued],
            tx=tx,
        )

    for queued in [messages] if together else [[m] for m in messages]:
        await stores.transactions.run(lambda tx, queued=queued: enqueue(tx, queued))
    return conversation, messages


async def claim(
    worker: ReplyWorker, stores: MemoryStores, sequence: int, conversation_id: str | None = None
) -> ClaimedReplyJob:
    [job] = [
        j
        for j in stores.reply_jobs.jobs
        if j["sequence"] == sequence and conversation_id in (None, j["conversation_id"])
    ]
    [claimed] = await worker.claim_many([Due(tenant_id=job["tenant_id"], id=job["id"])])
    return claimed


async def test_replies_follow_the_message_and_complete_the_job_in_one_transaction(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock
) -> None:
    conversation, [inbound] = await given_inbound(stores, clock)

    await worker.handle(await claim(worker, stores, 1))

    stored = stores.messages.of(TENANT, conversation.id)
    assert [m.sequence for m in stored] == [1, 2, 3]
    assert [m.reply_to_message_id for m in stored[1:]] == [inbound.id, inbound.id]
    assert stores.reply_jobs.jobs == []
    after = await stores.conversations.get(TENANT, conversation.id)
    assert after is not None
    assert (after.last_sequence, after.outbound_message_count) == (3, 2)
    # Handed to the platform by the delivery queue, in order.
    assert [(d.id, d.sequence) for d in stores.deliveries.all()] == [
        (m.id, m.sequence) for m in stored[1:]
    ]
    [message_tx] = {tx for tx, what in stores.db.writes if what == "messages"}
    assert {what for tx, what in stores.db.writes if tx == message_tx} >= {
        "reply_jobs",
        "conversations",
        "messages",
        "deliveries",
        "outbox",
    }
    assert [e.message.sequence for e in stores.live.events("message")] == [2, 3]


async def test_a_job_of_a_closed_conversation_is_dropped_unanswered(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    conversation, _ = await given_inbound(
        stores, clock, status=common_pb2.CONVERSATION_STATUS_CLOSED
    )

    await worker.handle(await claim(worker, stores, 1))

    assert stores.reply_jobs.jobs == []
    assert len(stores.messages.of(TENANT, conversation.id)) == 1
    assert responder.asked == []
    assert stores.deliveries.all() == []


async def test_a_job_is_held_uncounted_until_the_earlier_one_of_its_conversation_is_done(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    conversation, _ = await given_inbound(stores, clock, count=3)

    await worker.handle(await claim(worker, stores, 2))
    await worker.handle(await claim(worker, stores, 3))

    later = next(j for j in stores.reply_jobs.jobs if j["sequence"] == 2)
    assert later["attempts"] == 0  # waiting is no attempt
    assert later["owner"] == ""
    # Not claimed again and again while it waits: not due before the earlier one is done
    # (or, were that wake lost, REPLY_HOLD_AT_MOST from now).
    assert later["due_time"] == clock() + REPLY_HOLD_AT_MOST
    assert await stores.reply_jobs.due(now=clock(), limit=10) == [
        Due(TENANT, j["id"]) for j in stores.reply_jobs.jobs if j["sequence"] == 1
    ]
    assert responder.asked == []
    assert len(stores.messages.of(TENANT, conversation.id)) == 3

    worker._wake.clear()
    await worker.handle(await claim(worker, stores, 1))
    # The first done wakes the next one, now, and only that one; and the loop, to claim it.
    [woken] = await stores.reply_jobs.due(now=clock(), limit=10)
    assert woken.id == later["id"]
    assert worker._wake.is_set()
    await worker.handle(await claim(worker, stores, 2))
    await worker.handle(await claim(worker, stores, 3))

    assert [m.reply_to_message_id for m in stores.messages.of(TENANT, conversation.id)[3:]] == [
        "in-1",
        "in-1",
        "in-2",
        "in-2",
        "in-3",
        "in-3",
    ]
    assert stores.reply_jobs.jobs == []


async def test_jobs_queued_together_are_held_behind_the_first_of_their_conversation(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock
) -> None:
    conversation, _ = await given_inbound(stores, clock, count=3, together=True)
    other, _ = await given_inbound(stores, clock, count=1, user="15550002")

    def due_sequences() -> list[tuple[str, int]]:
        return [
            (j["conversation_id"], j["sequence"])
            for j in stores.reply_jobs.jobs
            if j["due_time"] <= clock()
        ]

    # No claim of the later two finds them waiting: they are not due before the first is done.
    assert sorted(due_sequences()) == sorted([(conversation.id, 1), (other.id, 1)])
    for sequence in (1, 2, 3):
        await worker.handle(await claim(worker, stores, sequence, conversation.id))
        following = [(conversation.id, sequence + 1)] if sequence < 3 else []
        assert sorted(due_sequences()) == sorted([*following, (other.id, 1)])
    assert [m.reply_to_message_id for m in stores.messages.of(TENANT, conversation.id)[3:]] == [
        "in-1",
        "in-1",
        "in-2",
        "in-2",
        "in-3",
        "in-3",
    ]


async def test_a_job_held_just_after_the_earlier_one_was_done_wakes_itself(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock
) -> None:
    """The earlier job is done (and its wake found nothing held) between the later job's look
    and its hold: the later one must not sit out the whole wait."""
    await given_inbound(stores, clock, count=2)
    first = await claim(worker, stores, 1)
    later = await claim(worker, stores, 2)
    jobs = stores.reply_jobs
    hold = jobs.hold

    async def done_meanwhile(job: ClaimedReplyJob, *, until: dt.datetime) -> None:
        await worker.handle(first)  # completes, wakes: nothing is held yet
        await hold(job, until=until)

    jobs.hold = done_meanwhile  # type: ignore[method-assign]
    await worker.handle(later)

    [waiting] = jobs.jobs
    assert waiting["sequence"] == 2
    assert waiting["due_time"] == clock()  # due now, not a lease from now
    assert [d.id for d in await jobs.due(now=clock(), limit=10)] == [waiting["id"]]


async def test_a_dropped_job_wakes_the_next_one(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock
) -> None:
    await given_inbound(stores, clock, count=2)
    await worker.handle(await claim(worker, stores, 2))  # held behind 1
    del stores.db.messages["in-1"]  # its message gone: job 1 is dropped

    await worker.handle(await claim(worker, stores, 1))

    [waiting] = stores.reply_jobs.jobs
    assert (waiting["sequence"], waiting["due_time"]) == (2, clock())


async def test_a_lost_lease_stores_nothing(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock
) -> None:
    conversation, _ = await given_inbound(stores, clock)
    job = await claim(worker, stores, 1)
    stores.reply_jobs.lose_lease(job.id)

    await worker.handle(job)

    assert len(stores.messages.of(TENANT, conversation.id)) == 1
    after = await stores.conversations.get(TENANT, conversation.id)
    assert after is not None
    assert after.last_sequence == 1
    assert stores.deliveries.all() == []
    [kept] = stores.reply_jobs.jobs
    assert kept["owner"] == "another-process"


async def test_a_failing_job_is_retried_with_backoff(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    await given_inbound(stores, clock)
    responder.error = RuntimeError("the model is down")

    await worker.handle(await claim(worker, stores, 1))
    [first] = stores.reply_jobs.jobs
    assert first["attempts"] == 1
    assert first["due_time"] == clock() + dt.timedelta(seconds=2)

    clock.advance(seconds=2)
    await worker.handle(await claim(worker, stores, 1))
    [second] = stores.reply_jobs.jobs
    assert second["attempts"] == 2
    assert second["due_time"] == clock() + dt.timedelta(seconds=4)


async def test_a_job_failing_its_last_attempt_is_given_up(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    conversation, _ = await given_inbound(stores, clock)
    responder.error = RuntimeError("the model is down")
    stores.db.reply_jobs[stores.reply_jobs.jobs[0]["id"]]["attempts"] = MAX_ATTEMPTS - 2

    await worker.handle(await claim(worker, stores, 1))
    assert len(stores.reply_jobs.jobs) == 1  # attempt MAX_ATTEMPTS - 1: retried
    clock.advance(seconds=120)
    await worker.handle(await claim(worker, stores, 1))

    assert stores.reply_jobs.jobs == []
    assert len(stores.messages.of(TENANT, conversation.id)) == 1


async def test_a_job_given_up_wakes_the_next_one(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    await given_inbound(stores, clock, count=2, together=True)
    responder.error = RuntimeError("the model is down")
    first = stores.reply_jobs.jobs[0]
    stores.db.reply_jobs[first["id"]]["attempts"] = MAX_ATTEMPTS - 1

    await worker.handle(await claim(worker, stores, 1))

    [waiting] = stores.reply_jobs.jobs
    assert (waiting["sequence"], waiting["due_time"]) == (2, clock())


async def test_a_wake_that_fails_leaves_the_reply_stored_and_the_next_job_to_its_deadline(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock
) -> None:
    conversation, _ = await given_inbound(stores, clock, count=2, together=True)

    async def failing(conversations: object, *, now: object) -> int:
        raise ConnectionError("the store went away")

    stores.reply_jobs.wake_next = failing  # type: ignore[method-assign]
    await worker.handle(await claim(worker, stores, 1))

    assert [m.reply_to_message_id for m in stores.messages.of(TENANT, conversation.id)[2:]] == [
        "in-1",
        "in-1",
    ]
    [waiting] = stores.reply_jobs.jobs
    assert (waiting["sequence"], waiting["due_time"]) == (2, clock() + REPLY_HOLD_AT_MOST)


async def test_a_job_for_a_missing_message_is_dropped(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    await given_inbound(stores, clock)
    del stores.db.messages["in-1"]

    await worker.handle(await claim(worker, stores, 1))

    assert stores.reply_jobs.jobs == []
    assert responder.asked == []


def replied(stores: MemoryStores) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(stores.messages.all()) == 3  # the message and its two replies

    return check


class _Claims:
    """Counts the reply queue's claims and the worker's wakes."""

    def __init__(self, stores: MemoryStores, worker: ReplyWorker) -> None:
        self.claims = 0
        self.wakes = 0
        claim_many = stores.reply_jobs.claim_many

        async def counted(*args: object, **kwargs: object) -> list[ClaimedReplyJob]:
            self.claims += 1
            return await claim_many(*args, **kwargs)  # type: ignore[arg-type]

        stores.reply_jobs.claim_many = counted  # type: ignore[method-assign]
        self.wake = worker.wake

    def woken(self) -> None:
        self.wakes += 1
        self.wake()


def counted_reads(stores: MemoryStores) -> list[str]:
    """The reads a reply worker makes for a job, as they are made: its message, its
    conversation, and the queue (whether an earlier job of the conversation waits)."""
    reads: list[str] = []
    for name, repository, method in (
        ("messages", stores.messages, "get_many"),
        ("conversations", stores.conversations, "get_many"),
        ("reply_jobs", stores.reply_jobs, "earlier_waiting"),
    ):
        read = getattr(repository, method)

        async def counted(keys: Any, read: Any = read, name: str = name) -> Any:
            reads.append(name)
            return await read(keys)

        setattr(repository, method, counted)
    return reads


async def test_a_first_messages_job_reads_no_queue_and_a_later_ones_does(
    stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    """Nothing comes before a conversation's first message: its job, claimed, reads its
    message and conversation only; the second message's job also asks the queue."""
    reads = counted_reads(stores)
    worker = reply_worker(stores, clock, responder)  # its reads are the counted ones
    await given_inbound(stores, clock, count=2)

    await worker.answer(await claim(worker, stores, 1))
    first = sorted(reads)
    reads.clear()
    await worker.answer(await claim(worker, stores, 2))

    assert first == ["conversations", "messages"]
    assert sorted(reads) == ["conversations", "messages", "reply_jobs"]
    assert stores.reply_jobs.jobs == []


async def test_a_message_ingested_while_the_worker_has_a_free_slot_is_handed_to_it_leased(
    stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    """The ingest queues the reply job leased to this process's reply worker and hands it
    over once committed, with the message and conversation it stored: answered with no
    claim, no wake (no poll), and neither of the two read, nor the queue (a first contact's
    message has no earlier one to wait for)."""
    reads = counted_reads(stores)
    worker = reply_worker(stores, clock, responder)  # its reads are the counted ones
    counts = _Claims(stores, worker)
    service = ingest_service(stores, clock, reply_slots=worker.reserve, on_reply_job=counts.woken)
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    await asyncio.sleep(0.01)

    [result] = await service.ingest(TENANT, [message_event()])
    await eventually(replied(stores), "the replies")

    assert (counts.claims, counts.wakes, reads) == (0, 0, [])
    assert stores.reply_jobs.jobs == []
    assert [m.reply_to_message_id for m in stores.messages.all()[1:]] == [result.message_id] * 2
    stopping.set()
    worker.wake()
    await running


async def test_a_message_ingested_while_the_worker_has_no_free_slot_is_queued_due(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock
) -> None:
    """No room left in the worker: the job is queued due (no owner), the worker woken, and
    claimed by it."""
    counts = _Claims(stores, worker)
    service = ingest_service(stores, clock, reply_slots=worker.reserve, on_reply_job=counts.woken)
    stopping = asyncio.Event()
    running = asyncio.create_task(worker.run(stopping))
    await asyncio.sleep(0.01)
    busy = worker.reserve(100)  # all its room kept, as by items being queued

    await service.ingest(TENANT, [message_event()])

    assert counts.wakes == 1
    await eventually(replied(stores), "the replies")
    assert counts.claims >= 1  # found due and claimed
    busy.release()
    assert stores.reply_jobs.jobs == []
    stopping.set()
    worker.wake()
    await running


class DeliveryRecorder(LeasedQueueWorker[Delivery]):
    """A delivery worker that records the deliveries handed to it (none is due to it)."""

    def __init__(self) -> None:
        super().__init__(name="deliveries", concurrency=4, lease=dt.timedelta(seconds=30))
        self.handled: list[Delivery] = []

    async def due(self, limit: int) -> list[Due]:
        assert limit > 0
        return []

    async def claim_many(self, items: list[Due]) -> list[Delivery]:
        raise AssertionError(f"nothing is due to this worker: {items}")

    async def handle(self, item: Delivery) -> None:
        self.handled.append(item)


@contextlib.asynccontextmanager
async def delivering(
    stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> AsyncIterator[tuple[ReplyWorker, DeliveryRecorder, list[None]]]:
    """A reply worker whose process runs a delivery worker (a recorder), and its wakes."""
    deliveries = DeliveryRecorder()
    wakes: list[None] = []
    worker = reply_worker(
        stores,
        clock,
        responder,
        delivery_slots=deliveries.reserve,
        on_delivery=lambda: wakes.append(None),
    )
    stopping = asyncio.Event()
    running = asyncio.create_task(deliveries.run(stopping))
    await asyncio.sleep(0.01)
    try:
        yield worker, deliveries, wakes
    finally:
        stopping.set()
        deliveries.wake()
        await running


async def test_a_lone_reply_is_handed_to_the_delivery_worker_leased_with_its_message(
    stores: MemoryStores, clock: Clock
) -> None:
    """A job's one reply to a platform is queued leased to this process's delivery worker
    and handed to it after the commit with its message (no poll, no claim, no read)."""
    async with delivering(stores, clock, ScriptedResponder("Hello!")) as (
        worker,
        deliveries,
        wakes,
    ):
        await given_inbound(stores, clock)
        await worker.handle(await claim(worker, stores, 1))
        await asyncio.sleep(0.01)

    [queued] = stores.deliveries.all()
    assert (queued.state, queued.owner) == (SENDING, deliveries.owner)
    assert queued.due_time == clock() + deliveries.lease
    [handed] = deliveries.handled
    assert handed == queued
    assert handed.message == stores.messages.of(TENANT, queued.conversation_id)[1]
    assert wakes == []


async def test_several_replies_of_one_conversation_are_queued_due(
    stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    """Two replies: each is sent after the one before it, so neither is handed over (the
    second would only be put off while the first is sent); both are queued due and the
    delivery worker woken once."""
    async with delivering(stores, clock, responder) as (worker, deliveries, wakes):
        await given_inbound(stores, clock)
        await worker.handle(await claim(worker, stores, 1))

    assert [(d.state, d.owner) for d in stores.deliveries.all()] == [(QUEUED, "")] * 2
    assert deliveries.handled == []
    assert len(wakes) == 1
