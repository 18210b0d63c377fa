"""ReplyWorker's rules, over in-memory stores: jobs answered in order, replies numbered after
the message and stored with the job's completion, lost leases, retries and giving up."""

from __future__ import annotations

import datetime as dt

import pytest

from chat.v1 import common_pb2
from server.domain.queues import ClaimedReplyJob, Due, ReplyJob
from server.services.composing import ReplyComposer
from server.services.live import CommittedPush, QuietLiveEvents
from server.services.replies import MAX_ATTEMPTS, ReplyWorker
from tests.support.ports import (
    Clock,
    MemoryStores,
    ScriptedResponder,
    content_processor,
    conversation_opener,
)

TENANT = "acme"
WHATSAPP = common_pb2.CHANNEL_TYPE_WHATSAPP


@pytest.fixture
def responder() -> ScriptedResponder:
    return ScriptedResponder("Hello!", "How can I help?")


@pytest.fixture
def worker(stores: MemoryStores, clock: Clock, responder: ScriptedResponder) -> ReplyWorker:
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
    )


async def given_inbound(
    stores: MemoryStores, clock: Clock, *, count: int = 1, status: int = 1
) -> tuple[common_pb2.Conversation, list[common_pb2.Message]]:
    """A conversation with ``count`` inbound messages, each waiting for its reply."""
    conversation = stores.conversations.add(
        TENANT,
        user_id="15550001",
        channel=WHATSAPP,
        channel_conversation_id="15550001",
        last_sequence=count,
        status=status,
        now=clock(),
    )
    messages = []
    for sequence in range(1, count + 1):
        message = common_pb2.Message(
            id=f"in-{sequence}",
            conversation_id=conversation.id,
            sequence=sequence,
            channel=WHATSAPP,
            direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
            content=common_pb2.Content(text=common_pb2.TextContent(text="hi")),
        )
        message.create_time.FromDatetime(clock())
        stores.messages.add(TENANT, message)
        messages.append(message)

    async def enqueue(tx: object) -> None:
        await stores.reply_jobs.enqueue_many(
            [ReplyJob(TENANT, conversation.id, m.id, m.sequence, clock()) for m in messages],
            tx=tx,
        )

    await stores.transactions.run(enqueue)
    return conversation, messages


async def claim(worker: ReplyWorker, stores: MemoryStores, sequence: int) -> ClaimedReplyJob:
    [job] = [j for j in stores.reply_jobs.jobs if j["sequence"] == sequence]
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


async def test_a_job_waits_uncounted_while_an_earlier_one_of_its_conversation_waits(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    conversation, _ = await given_inbound(stores, clock, count=2)

    await worker.handle(await claim(worker, stores, 2))

    later = next(j for j in stores.reply_jobs.jobs if j["sequence"] == 2)
    assert later["attempts"] == 0  # waiting is no attempt
    assert later["owner"] == ""
    assert clock() < later["due_time"] <= clock() + dt.timedelta(seconds=1)
    assert responder.asked == []
    assert len(stores.messages.of(TENANT, conversation.id)) == 2

    await worker.handle(await claim(worker, stores, 1))
    clock.advance(seconds=1)
    await worker.handle(await claim(worker, stores, 2))

    assert [m.reply_to_message_id for m in stores.messages.of(TENANT, conversation.id)[2:]] == [
        "in-1",
        "in-1",
        "in-2",
        "in-2",
    ]


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


async def test_a_job_for_a_missing_message_is_dropped(
    worker: ReplyWorker, stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    await given_inbound(stores, clock)
    del stores.db.messages["in-1"]

    await worker.handle(await claim(worker, stores, 1))

    assert stores.reply_jobs.jobs == []
    assert responder.asked == []
