"""The fan-out baseline: a bare grpc.aio server that does only what fan-out needs, so the
service's fan-out is measured against it with the same client (bench/fanout.py).

It serves ChatService's SendMessage and StreamConversationEvents with the contract's messages
and nothing else: SendMessage publishes the message on one Redis pub/sub channel of the
conversation and answers; each process holds one subscription per conversation and hands
every message it hears to each of its streams' queues. No authentication, no storage, no
sequence numbers, no replay: the floor of "one Redis pub/sub message to N streams" on this
stack.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import redis.asyncio as redis

from chat.v1 import chat_service_pb2, common_pb2


class FanOut:
    """SendMessage publishes; StreamConversationEvents receives what is published."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._streams: dict[str, set[asyncio.Queue[bytes]]] = {}
        self._listeners: dict[str, asyncio.Task[None]] = {}

    async def send_message(
        self, request: chat_service_pb2.SendMessageRequest, _context: Any
    ) -> chat_service_pb2.SendMessageResponse:
        conversation_id = request.conversation_id or uuid.uuid4().hex
        message = common_pb2.Message(
            id=uuid.uuid4().hex,
            conversation_id=conversation_id,
            channel=request.channel,
            content=request.content,
        )
        await self._redis.publish(_channel(conversation_id), message.SerializeToString())
        return chat_service_pb2.SendMessageResponse(
            message=message, conversation=common_pb2.Conversation(id=conversation_id)
        )

    async def stream_events(
        self, request: chat_service_pb2.StreamConversationEventsRequest, context: Any
    ) -> AsyncIterator[chat_service_pb2.StreamConversationEventsResponse]:
        conversation_id = request.conversation_id
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        streams = self._streams.setdefault(conversation_id, set())
        streams.add(queue)
        if conversation_id not in self._listeners:
            ready = asyncio.Event()
            self._listeners[conversation_id] = asyncio.create_task(
                self._listen(conversation_id, ready)
            )
            await ready.wait()
        await context.send_initial_metadata(())  # subscribed, as the service tells its callers
        try:
            while True:
                payload = await queue.get()
                yield chat_service_pb2.StreamConversationEventsResponse(
                    message=common_pb2.Message.FromString(payload)
                )
        finally:
            streams.discard(queue)

    async def _listen(self, conversation_id: str, ready: asyncio.Event) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(_channel(conversation_id))
            ready.set()
            async for item in pubsub.listen():
                if item.get("type") != "message":
                    continue
                for queue in self._streams.get(conversation_id, ()):
                    queue.put_nowait(item["data"])


def _channel(conversation_id: str) -> str:
    return f"bench:fanout:{conversation_id}"


async def serve(port: int, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    fan_out = FanOut(client)
    handler = grpc.method_handlers_generic_handler(
        "chat.v1.ChatService",
        {
            "SendMessage": grpc.unary_unary_rpc_method_handler(
                fan_out.send_message,
                request_deserializer=chat_service_pb2.SendMessageRequest.FromString,
                response_serializer=chat_service_pb2.SendMessageResponse.SerializeToString,
            ),
            "StreamConversationEvents": grpc.unary_stream_rpc_method_handler(
                fan_out.stream_events,
                request_deserializer=chat_service_pb2.StreamConversationEventsRequest.FromString,
                response_serializer=chat_service_pb2.StreamConversationEventsResponse.SerializeToString,
            ),
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
