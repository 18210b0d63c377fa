"""IngestService calls as the webhook bridge makes them, and reading what they stored and what
the bot replied."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import grpc
from pymongo import AsyncMongoClient

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from chat.v1 import ingest_service_pb2 as ingest
from chat.v1 import ingest_service_pb2_grpc
from devstack.tokens import mint_dev_token
from server.domain.queues import QUEUED, SENDING
from tests.support.chat_client import SECRET, ChatClient
from tests.support.waiting import eventually

Mongo = AsyncMongoClient[dict[str, Any]]
WHATSAPP = c.CHANNEL_TYPE_WHATSAPP
WAIT = 20.0


class Bridge:
    """IngestService calls as the webhook bridge would make them (scope chat:ingest)."""

    def __init__(self, channel: grpc.aio.Channel, tenant: str) -> None:
        self.stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
        token = mint_dev_token(
            secret=SECRET, tenant_id=tenant, subject="chat-bridge", scopes=("chat:ingest",)
        )
        self.metadata = (("authorization", f"Bearer {token}"),)

    async def ingest(self, *events: ingest.InboundEvent) -> list[ingest.IngestResult]:
        response = await self.stub.IngestEvents(
            ingest.IngestEventsRequest(events=events), metadata=self.metadata, timeout=10
        )
        return list(response.results)


def text_event(user: str, text: str, event_id: str | None = None) -> ingest.InboundEvent:
    event_id = "wamid." + uuid.uuid4().hex if event_id is None else event_id
    return ingest.InboundEvent(
        platform_event_id=event_id,
        channel=WHATSAPP,
        platform_user_id=user,
        user_display_name="Ana",
        channel_conversation_id=user,
        platform_account_id="106540352242922",
        message=ingest.InboundMessage(
            platform_message_id=event_id, content=c.Content(text=c.TextContent(text=text))
        ),
    )


async def history(client: ChatClient, conversation_id: str) -> list[c.Message]:
    page = await client.call(
        "ListMessages", chat.ListMessagesRequest(conversation_id=conversation_id)
    )
    return list(page.messages)


async def conversation_of(mongo: Mongo, message_id: str, database: str = "chat") -> str:
    document = await mongo[database]["messages"].find_one({"_id": message_id})
    assert document is not None
    return str(document["conversation_id"])


async def deliveries_settled(mongo: Mongo, conversation_id: str) -> None:
    """Until no delivery of the conversation waits. The tests' tenants have no WhatsApp
    credentials, so each reply's delivery fails at once; its status goes to the streams open
    at that moment, and a stream opened after this no longer receives it."""

    async def settled() -> bool:
        waiting = await mongo["chat"]["deliveries"].count_documents(
            {"conversation_id": conversation_id, "state": {"$in": [QUEUED, SENDING]}}
        )
        return waiting == 0

    await eventually(settled, "the replies' deliveries to settle", within=WAIT)


async def replied(client: ChatClient, conversation_id: str, count: int) -> list[c.Message]:
    deadline = time.monotonic() + WAIT
    while True:
        messages = await history(client, conversation_id)
        if len(messages) >= count:
            return messages
        assert time.monotonic() < deadline, f"no reply: {messages}"
        await asyncio.sleep(0.1)
