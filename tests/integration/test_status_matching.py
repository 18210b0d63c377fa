"""Which messages a platform's status names, on the real database: a platform id names its
message whatever conversation it is in, and only where it names messages of several
conversations (ids unique within a chat only) the reporting user's active one decides."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from server.domain.messages import MessageRow
from server.repositories.messages import MongoMessageRepository
from server.repositories.mongo import Document, Transactions, create_indexes

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
async def database(stack: Endpoints) -> AsyncIterator[AsyncDatabase[Document]]:
    client: AsyncMongoClient[Document] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    database = client[f"statuses_{uuid.uuid4().hex[:8]}"]
    await create_indexes(database)
    yield database
    await client.drop_database(database.name)
    await client.close()


def sent(conversation_id: str, platform_message_id: str, sequence: int = 2) -> c.Message:
    message = c.Message(
        id=uuid.uuid4().hex,
        conversation_id=conversation_id,
        sequence=sequence,
        channel=c.CHANNEL_TYPE_SLACK,
        direction=c.MESSAGE_DIRECTION_OUTBOUND,
        delivery_status=c.DELIVERY_STATUS_SENT,
        platform_message_id=platform_message_id,
    )
    message.create_time.FromDatetime(NOW)
    return message


async def test_an_id_names_its_message_in_any_conversation_and_ties_go_to_the_active_one(
    database: AsyncDatabase[Document],
) -> None:
    transactions = Transactions(client=database.client)
    messages = MongoMessageRepository(database=database)
    closed, active, other = (f"conversation-{n}" for n in range(3))
    # The last reply of a conversation closed since (the user has another one now); a
    # timestamp id Slack gave two messages in two chats; a watermarked earlier message.
    bye = sent(closed, "1700000000.000001")
    mine, theirs = sent(active, "1700000000.000002"), sent(other, "1700000000.000002")
    earlier = sent(active, "1700000000.000003", sequence=1)
    await transactions.run(
        lambda tx: messages.insert_rows(
            [MessageRow("acme", m, "") for m in (bye, mine, theirs, earlier)], tx=tx
        )
    )

    async def read(*ids: str, watermark: tuple[str, dt.datetime] | None = None) -> set[str]:
        changed = await transactions.run(
            lambda tx: messages.apply_status(
                "acme",
                channel=c.CHANNEL_TYPE_SLACK,
                status=c.DELIVERY_STATUS_READ,
                platform_message_ids=ids,
                watermark=watermark,
                conversation_id=active,
                tx=tx,
            )
        )
        return {m.id for m in changed}

    assert await read("1700000000.000001") == {bye.id}
    assert await read("1700000000.000002") == {mine.id}
    assert await read(watermark=(active, NOW)) == {earlier.id}
    assert await read("1700000000.000001", "1700000000.000002") == set()  # forward only
    stored = {
        document["_id"]: document["delivery_status"]
        async for document in database["messages"].find({})
    }
    assert stored == {
        bye.id: c.DELIVERY_STATUS_READ,
        mine.id: c.DELIVERY_STATUS_READ,
        theirs.id: c.DELIVERY_STATUS_SENT,
        earlier.id: c.DELIVERY_STATUS_READ,
    }
