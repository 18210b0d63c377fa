"""StreamConversationEvents read in the background, for the tests that watch a conversation."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from tests.support.chat_client import ChatClient

Event = chat.StreamConversationEventsResponse
WAIT = 10.0


class Stream:
    """A StreamConversationEvents call read in the background into a queue."""

    def __init__(self, client: ChatClient, conversation_id: str, **fields: Any) -> None:
        self.call = client.stub.StreamConversationEvents(
            chat.StreamConversationEventsRequest(conversation_id=conversation_id, **fields),
            metadata=client.metadata,
        )
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.call:
                await self.events.put(event)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    async def live(self) -> None:
        """Until the response headers arrive: the server sends them once the stream is
        subscribed, so every event after this reaches it."""
        await asyncio.wait_for(self.call.initial_metadata(), WAIT)

    async def next(self) -> Event:
        return await asyncio.wait_for(self.events.get(), WAIT)

    async def messages(self, count: int) -> list[c.Message]:
        """The next ``count`` message events (other kinds are skipped)."""
        found: list[c.Message] = []
        while len(found) < count:
            event = await self.next()
            if event.WhichOneof("event") == "message":
                found.append(event.message)
        return found

    async def wait_ended(self) -> None:
        await asyncio.wait_for(self.ended.wait(), WAIT)

    def cancel(self) -> None:
        self.call.cancel()
