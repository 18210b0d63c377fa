"""Which messages a platform's status names, on the real database: where ids are unique
(WhatsApp), an id names its message whatever conversation it is in; where they are unique
within a chat only (Teams), the reporting user's active conversation's."""

from __future__ import annotations

import datetime as dt
import uuid

from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2 as c
from server.domain.messages import MessageRow
from server.repositories.messages import MongoMessageRepository
from server.repositories.mongo import Document, Transactions

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


def sent(
    conversation_id: str, platform_message_id: str, channel: int, sequence: int = 2
) -> c.Message:
    message = c.Message(
        id=uuid.uuid4().hex,
        conversation_id=conversation_id,
        sequence=sequence,
        channel=channel,  # type: ignore[arg-type]
        direction=c.MESSAGE_DIRECTION_OUTBOUND,
        delivery_status=c.DELIVERY_STATUS_SENT,
        platform_message_id=platform_message_id,
    )
    message.create_time.FromDatetime(NOW)
    return message


WHATSAPP, TEAMS = c.CHANNEL_TYPE_WHATSAPP, c.CHANNEL_TYPE_TEAMS


async def test_unique_ids_name_their_message_anywhere_and_per_chat_ids_the_active_ones(
    scratch_database: AsyncDatabase[Document],
) -> None:
    transactions = Transactions(client=scratch_database.client)
    messages = MongoMessageRepository(database=scratch_database)
    closed, active, other = (f"conversation-{n}" for n in range(3))
    # WhatsApp: the last reply of a conversation closed since (the user has another one now).
    # Teams: an id given to messages of two chats, and one only another user's chat has.
    bye = sent(closed, "wamid.bye", WHATSAPP)
    mine, theirs = sent(active, "1700000000100", TEAMS), sent(other, "1700000000100", TEAMS)
    foreign = sent(other, "1700000000200", TEAMS, sequence=3)
    earlier = sent(active, "1700000000050", TEAMS, sequence=1)
    await transactions.run(
        lambda tx: messages.insert_rows(
            [MessageRow("acme", m, "") for m in (bye, mine, theirs, foreign, earlier)], tx=tx
        )
    )

    async def read(
        channel: int, *ids: str, watermark: tuple[str, dt.datetime] | None = None
    ) -> set[str]:
        changed = await transactions.run(
            lambda tx: messages.apply_status(
                "acme",
                channel=channel,
                status=c.DELIVERY_STATUS_READ,
                platform_message_ids=ids,
                watermark=watermark,
                conversation_id=active,
                tx=tx,
            )
        )
        return {m.id for m in changed}

    assert await read(WHATSAPP, "wamid.bye") == {bye.id}
    assert await read(TEAMS, "1700000000100", "1700000000200") == {mine.id}
    assert await read(TEAMS, watermark=(active, NOW)) == {earlier.id}
    assert await read(TEAMS, "1700000000100") == set()  # forward only
    stored = {
        document["_id"]: document["delivery_status"]
        async for document in scratch_database["messages"].find({})
    }
    assert stored == {
        bye.id: c.DELIVERY_STATUS_READ,
        mine.id: c.DELIVERY_STATUS_READ,
        theirs.id: c.DELIVERY_STATUS_SENT,
        foreign.id: c.DELIVERY_STATUS_SENT,
        earlier.id: c.DELIVERY_STATUS_READ,
    }
