"""Data written straight through the repositories, for tests that need a lot of it fast."""

from __future__ import annotations

import datetime as dt
import uuid

from pymongo import AsyncMongoClient

from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from server.domain.conversations import Recording
from server.domain.messages import MessageRow
from server.repositories.conversations import MongoConversationRepository
from server.repositories.messages import MongoMessageRepository
from server.repositories.mongo import Transactions


async def seed_conversation(
    stack: Endpoints, tenant: str, count: int, *, database_name: str = "chat"
) -> str:
    """A conversation of ``count`` messages, written straight through the repositories."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongodb_uri)
    try:
        database = client[database_name]
        conversations = MongoConversationRepository(database=database)
        messages = MongoMessageRepository(database=database)
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        transactions = Transactions(client=client)

        async def seed(tx: object) -> str:
            conversation = await conversations.insert_active(
                tenant,
                user_id="export-" + uuid.uuid4().hex[:8],
                channel=c.CHANNEL_TYPE_WEB,
                channel_conversation_id="",
                now=now,
                tx=tx,
            )
            await conversations.record_messages_many(
                [Recording(tenant, conversation.id, count, 0, now)], tx=tx
            )
            return conversation.id

        conversation_id = await transactions.run(seed)
        for start in range(0, count, 1000):
            batch = []
            for sequence in range(start + 1, min(count, start + 1000) + 1):
                message = c.Message(
                    id=f"{conversation_id}-{sequence}",
                    conversation_id=conversation_id,
                    sequence=sequence,
                    direction=c.MESSAGE_DIRECTION_INBOUND,
                    type=c.MESSAGE_TYPE_TEXT,
                    channel=c.CHANNEL_TYPE_WEB,
                    sender_id="u",
                    content=c.Content(text=c.TextContent(text=f'line {sequence}, "quoted"\nnext')),
                )
                message.create_time.FromDatetime(now)
                batch.append(message)
            await transactions.run(
                lambda tx, batch=batch: messages.insert_rows(  # type: ignore[misc]
                    [MessageRow(tenant, message, "") for message in batch], tx=tx
                )
            )
        return conversation_id
    finally:
        await client.close()
