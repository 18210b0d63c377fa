"""The reads a queue worker makes for the items it claimed together, one query for all, on the
real store: whether an earlier reply job or delivery of each item's conversation still waits
(the order each conversation keeps), and the items' messages and conversations. Each answer is
the item's own: other conversations, later items, finished deliveries and other tenants do not
count."""

from __future__ import annotations

import datetime as dt

from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2
from server.domain.messages import MessageRow
from server.domain.queues import (
    FAILED,
    QUEUED,
    SENDING,
    SENT,
    Outgoing,
    Position,
    ReplyJob,
    Waiting,
    earlier_clears,
)
from server.repositories.conversations import MongoConversationRepository
from server.repositories.deliveries import MongoDeliveries
from server.repositories.ingest import MongoReplyJobs
from server.repositories.messages import MongoMessageRepository
from server.repositories.mongo import Document, Transactions

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


async def in_transaction(mongo_client: AsyncMongoClient[Document], work: object) -> None:
    await Transactions(client=mongo_client).run(work)  # type: ignore[arg-type]


async def test_earlier_reply_jobs_are_found_per_conversation_and_tenant(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    jobs = MongoReplyJobs(database=scratch_database)
    queued = [
        ReplyJob("tenant-a", "c1", "m1", 3, NOW),
        ReplyJob("tenant-a", "c1", "m2", 5, NOW),
        ReplyJob("tenant-a", "c2", "m3", 4, NOW),
        ReplyJob("tenant-b", "c3", "m4", 1, NOW),
    ]

    async def work(tx: object) -> None:
        await jobs.enqueue_many(queued, tx=tx)  # type: ignore[arg-type]

    await in_transaction(mongo_client, work)
    asked = [
        Position("tenant-a", "c1", 3),  # the first of its conversation
        Position("tenant-a", "c1", 5),  # behind 3
        Position("tenant-a", "c2", 9),  # behind 4
        Position("tenant-a", "c2", 4),  # itself only
        Position("tenant-b", "c3", 2),  # behind 1
        Position("tenant-a", "c3", 2),  # c3 is tenant-b's: nothing of tenant-a waits there
        Position("tenant-b", "c1", 9),  # c1 is tenant-a's
    ]
    found = await jobs.earlier_waiting(asked)
    assert found == {
        Position("tenant-a", "c1", 5): True,
        Position("tenant-a", "c2", 9): True,
        Position("tenant-b", "c3", 2): True,
    }
    assert await jobs.earlier_waiting([]) == {}


async def test_the_earliest_waiting_delivery_before_each_position(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    deliveries = MongoDeliveries(database=scratch_database)

    def messages(conversation: str, sequences: range) -> list[common_pb2.Message]:
        return [
            common_pb2.Message(id=f"{conversation}-{n}", conversation_id=conversation, sequence=n)
            for n in sequences
        ]

    async def work(tx: object) -> None:
        await deliveries.enqueue_many(
            [
                Outgoing("tenant-a", messages("c1", range(1, 6)), "user-1", "", NOW),
                Outgoing("tenant-a", messages("c2", range(1, 3)), "user-2", "", NOW),
                Outgoing("tenant-b", messages("c3", range(1, 3)), "user-3", "", NOW),
            ],
            tx=tx,  # type: ignore[arg-type]
        )

    await in_transaction(mongo_client, work)
    collection = scratch_database["deliveries"]

    async def state(delivery_id: str, tenant: str, **fields: object) -> None:
        await collection.update_one({"_id": delivery_id, "tenant_id": tenant}, {"$set": fields})

    # c1: 1 sent, 2 failed, 3 retrying later, 4 being sent, 5 queued.
    await state("c1-1", "tenant-a", state=SENT)
    await state("c1-2", "tenant-a", state=FAILED)
    await state("c1-3", "tenant-a", state=QUEUED, due_time=NOW + dt.timedelta(seconds=30))
    await state("c1-4", "tenant-a", state=SENDING)
    # c2: 1 being sent.
    await state("c2-1", "tenant-a", state=SENDING)

    asked = [
        Position("tenant-a", "c1", 3),  # only sent and failed ones before it
        Position("tenant-a", "c1", 5),  # 3 (due later) is the earliest waiting
        Position("tenant-a", "c2", 2),  # 1 is being sent
        Position("tenant-a", "c2", 1),
        Position("tenant-b", "c3", 2),  # 1 waits, queued and due now
        Position("tenant-a", "c3", 2),  # c3 is tenant-b's
    ]
    found = await deliveries.first_waiting_before(asked)
    assert set(found) == {
        Position("tenant-a", "c1", 5),
        Position("tenant-a", "c2", 2),
        Position("tenant-b", "c3", 2),
    }
    later = NOW + dt.timedelta(seconds=30)
    assert found[Position("tenant-a", "c1", 5)] == Waiting(sending=False, due_time=later)
    assert found[Position("tenant-a", "c2", 2)].sending  # its due time is its lease's
    assert found[Position("tenant-b", "c3", 2)] == Waiting(sending=False, due_time=NOW)
    assert await deliveries.first_waiting_before([]) == {}

    # What the worker makes of them: wait for the retry, or look again soon.
    soon = dt.timedelta(milliseconds=200)
    assert earlier_clears(None, now=NOW, soon=soon) is None
    assert earlier_clears(found[Position("tenant-a", "c1", 5)], now=NOW, soon=soon) == (
        NOW + dt.timedelta(seconds=30)
    )
    assert earlier_clears(found[Position("tenant-a", "c2", 2)], now=NOW, soon=soon) == NOW + soon
    assert earlier_clears(found[Position("tenant-b", "c3", 2)], now=NOW, soon=soon) == NOW + soon


async def test_messages_and_conversations_are_read_together_each_in_its_tenant(
    mongo_client: AsyncMongoClient[Document], scratch_database: AsyncDatabase[Document]
) -> None:
    conversations = MongoConversationRepository(database=scratch_database)
    messages = MongoMessageRepository(database=scratch_database)

    async def start(tenant: str, user: str) -> str:
        async def work(tx: object) -> str:
            conversation = await conversations.insert_active(
                tenant,
                user_id=user,
                channel=common_pb2.CHANNEL_TYPE_WEB,
                channel_conversation_id="",
                now=NOW,
                tx=tx,  # type: ignore[arg-type]
            )
            return conversation.id

        return await Transactions(client=mongo_client).run(work)  # type: ignore[arg-type]

    first = await start("tenant-a", "user-1")
    second = await start("tenant-b", "user-2")
    found = await conversations.get_many(
        [("tenant-a", first), ("tenant-b", second), ("tenant-b", first), ("tenant-a", "gone")]
    )
    assert {key: c.user_id for key, c in found.items()} == {
        ("tenant-a", first): "user-1",
        ("tenant-b", second): "user-2",
    }
    assert await conversations.get_many([]) == {}

    async def write(tx: object) -> None:
        await messages.insert_rows(
            [
                MessageRow("tenant-a", common_pb2.Message(id="m1", conversation_id=first), ""),
                MessageRow("tenant-b", common_pb2.Message(id="m2", conversation_id=second), ""),
            ],
            tx=tx,  # type: ignore[arg-type]
        )

    await in_transaction(mongo_client, write)
    read = await messages.get_many([("tenant-a", "m1"), ("tenant-b", "m2"), ("tenant-a", "m2")])
    assert {key: m.conversation_id for key, m in read.items()} == {
        ("tenant-a", "m1"): first,
        ("tenant-b", "m2"): second,
    }
    assert await messages.get_many([]) == {}
