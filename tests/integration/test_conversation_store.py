"""The conversation store's message recording on the real database: only active conversations
of the tenant take messages, also when a close races the recording."""

from __future__ import annotations

import datetime as dt

from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2 as c
from server.domain.conversations import Recording
from server.repositories.conversations import MongoConversationRepository
from server.repositories.mongo import (
    ACTIVE,
    CLOSED,
    CONVERSATIONS,
    Document,
    Transactions,
)


async def started(
    repository: MongoConversationRepository, transactions: Transactions, user_id: str
) -> c.Conversation:
    now = dt.datetime.now(dt.UTC)
    return await transactions.run(
        lambda tx: repository.insert_active(
            "acme",
            user_id=user_id,
            channel=c.CHANNEL_TYPE_WEB,
            channel_conversation_id=user_id,
            now=now,
            tx=tx,
        )
    )


async def test_only_active_conversations_of_the_tenant_take_messages(
    scratch_database: AsyncDatabase[Document],
) -> None:
    transactions = Transactions(client=scratch_database.client)
    repository = MongoConversationRepository(database=scratch_database)
    open_, closed, other = [await started(repository, transactions, u) for u in "abc"]
    await scratch_database[CONVERSATIONS].update_one(
        {"_id": closed.id}, {"$set": {"status": CLOSED}}
    )
    now = dt.datetime.now(dt.UTC)
    recordings = [
        Recording("acme", open_.id, 1, 2, now),
        Recording("acme", closed.id, 1, 1, now),
        Recording("globex", other.id, 1, 1, now),  # another tenant's conversation
        Recording("acme", "missing", 1, 1, now),
    ]
    states = await transactions.run(lambda tx: repository.record_messages_many(recordings, tx=tx))
    assert states[1:] == [None, None, None]
    assert states[0] is not None
    assert (states[0].last_sequence, states[0].inbound_message_count) == (3, 1)
    for untouched in (closed, other):
        document = await scratch_database[CONVERSATIONS].find_one({"_id": untouched.id})
        assert document is not None
        assert document["last_sequence"] == 0


async def test_conversations_counted_alike_take_the_latest_time_of_their_group(
    scratch_database: AsyncDatabase[Document],
) -> None:
    """A batch's conversations whose counters move alike are updated together: each is
    counted once, a closed one among them is left alone, and their times are the latest of
    the group's (never moved back); a conversation counted differently keeps its own."""
    transactions = Transactions(client=scratch_database.client)
    repository = MongoConversationRepository(database=scratch_database)
    first, closed, third, fourth, ahead = [
        await started(repository, transactions, u) for u in ("u1", "u2", "u3", "u4", "u5")
    ]
    later = dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    await scratch_database[CONVERSATIONS].update_one(
        {"_id": closed.id}, {"$set": {"status": CLOSED}}
    )
    await scratch_database[CONVERSATIONS].update_one(
        {"_id": ahead.id}, {"$set": {"update_time": later, "last_activity_time": later}}
    )
    base = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).replace(microsecond=0)
    times = [base + dt.timedelta(milliseconds=n) for n in (5, 1, 9, 3, 2)]
    recordings = [
        Recording("acme", first.id, 1, 1, times[0]),
        Recording("acme", closed.id, 1, 1, times[1]),
        Recording("acme", third.id, 1, 1, times[2]),
        Recording("acme", fourth.id, 1, 2, times[3]),  # counted otherwise: its own statement
        Recording("acme", ahead.id, 1, 1, times[4]),
    ]
    states = await transactions.run(lambda tx: repository.record_messages_many(recordings, tx=tx))
    assert states[1] is None
    counted = [s for s in states if s is not None]
    assert [(s.id, s.last_sequence, s.message_count) for s in counted] == [
        (first.id, 2, 2),
        (third.id, 2, 2),
        (fourth.id, 3, 3),
        (ahead.id, 2, 2),
    ]
    first_state, third_state, fourth_state, ahead_state = counted
    for state in (first_state, third_state):
        assert state.update_time.ToDatetime(tzinfo=dt.UTC) == times[2]
        assert state.last_activity_time.ToDatetime(tzinfo=dt.UTC) == times[2]
    # Times only move forward: one already later keeps its own.
    assert ahead_state.update_time.ToDatetime(tzinfo=dt.UTC) == later
    assert ahead_state.last_activity_time.ToDatetime(tzinfo=dt.UTC) == later
    assert fourth_state.update_time.ToDatetime(tzinfo=dt.UTC) == times[3]
    assert (fourth_state.inbound_message_count, fourth_state.outbound_message_count) == (1, 2)
    document = await scratch_database[CONVERSATIONS].find_one({"_id": closed.id})
    assert document is not None
    assert (document["last_sequence"], document["message_count"]) == (0, 0)


async def test_a_close_committed_during_the_recording_retries_it(
    scratch_database: AsyncDatabase[Document],
) -> None:
    """The close commits after the recording's transaction took its snapshot (the conversation
    active in it) and before the recording writes: the write conflicts, the transaction runs
    again and finds it closed. (The snapshot is taken by the transaction's first statement;
    in the service, the batch's earlier statements.)"""
    transactions = Transactions(client=scratch_database.client)
    repository = MongoConversationRepository(database=scratch_database)
    conversation = await started(repository, transactions, "racer")
    attempts = 0

    async def record(tx: AsyncClientSession) -> list[c.Conversation | None]:
        nonlocal attempts
        attempts += 1
        seen = await scratch_database[CONVERSATIONS].find_one({"_id": conversation.id}, session=tx)
        assert seen is not None
        if attempts == 1:  # another client closes it, outside this transaction
            assert seen["status"] == ACTIVE
            await scratch_database[CONVERSATIONS].update_one(
                {"_id": conversation.id}, {"$set": {"status": CLOSED}}
            )
        now = dt.datetime.now(dt.UTC)
        return await repository.record_messages_many(
            [Recording("acme", conversation.id, 1, 1, now)], tx=tx
        )

    states = await transactions.run(record)
    assert states == [None]
    assert attempts == 2  # the first attempt's write conflicted; the retry found it closed
    document = await scratch_database[CONVERSATIONS].find_one({"_id": conversation.id})
    assert document is not None
    assert (document["status"], document["last_sequence"]) == (CLOSED, 0)
