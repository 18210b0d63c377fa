"""History: ListMessages (a page of 50) with 10 thousand and with 1 million stored messages.

The measured conversations are created through SendMessage and filled to 500 messages each;
the rest of the collection is filler in other conversations, written straight to MongoDB in the
service's own document shape (SendMessage at this volume would take hours).

The load is a bulk load, as mongorestore does one: the messages' secondary indexes are dropped
before it and the one ListMessages reads (``history``: conversation and sequence) is built
after it, because keeping three indexes up to date per insert is what makes the embedded store
slow to load (about 1,700 documents a second with them, 7,000 without, on 2 vCPUs), and the
million-message load would otherwise take most of `make bench`'s ten minutes. The indexes the
history query does not use (by recency, by platform id) are left out for the rest of the run:
they do not change its plan."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import uuid
from typing import Any

import grpc
from pymongo import AsyncMongoClient

from bench.common import Figure, percentile
from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from server.repositories.mongo import INDEXES, MESSAGES

#: The index ListMessages reads, rebuilt after each bulk load.
HISTORY_INDEX = next(index for index in INDEXES[MESSAGES] if index.document["name"] == "history")

CONVERSATIONS = 20
PER_CONVERSATION = 500
SMALL = 10_000
LARGE = int(os.environ.get("BENCH_HISTORY_MESSAGES", "1000000"))
CALLS = 400
SETTLE_SECONDS = 15
#: Bulk-load batches written at once.
FILL_IN_FLIGHT = 2


def _documents(
    conversation_id: str, first_sequence: int, count: int, now: dt.datetime
) -> list[dict[str, Any]]:
    documents = []
    for sequence in range(first_sequence, first_sequence + count):
        message = common_pb2.Message(
            id=uuid.uuid4().hex,
            conversation_id=conversation_id,
            sequence=sequence,
            direction=common_pb2.MESSAGE_DIRECTION_INBOUND,
            channel=common_pb2.CHANNEL_TYPE_WEB,
            sender_id="history-user",
            content=common_pb2.Content(text=common_pb2.TextContent(text=f"message {sequence}")),
        )
        message.create_time.FromDatetime(now)
        documents.append(
            {
                "_id": message.id,
                "tenant_id": "bench",
                "conversation_id": conversation_id,
                "sequence": sequence,
                "direction": message.direction,
                "channel": message.channel,
                "create_time": now,
                "delivery_status": 0,
                "platform_message_id": "",
                "search_text": f"message {sequence}",
                "pb": message.SerializeToString(),
            }
        )
    return documents


async def _fill(messages: Any, total: int) -> int:
    """Filler conversations of 1000 messages until the collection holds ``total``, loaded
    without the history index, which is built after; the messages the collection holds then.

    Counted once, before the load (the embedded store counts a collection by walking it,
    seconds at a million), and the inserts acknowledged added to it."""
    await _drop_secondary_indexes(messages)
    now = dt.datetime.now(dt.UTC)
    stored: int = await messages.estimated_document_count()
    missing = total - stored
    # The next batch is built while the last ones are written: building is this process's
    # CPU, writing the database's, and the two have a core each.
    writing: set[asyncio.Task[Any]] = set()
    while missing > 0:
        conversation = f"filler-{uuid.uuid4().hex}"
        count = min(missing, 1000)
        batch = _documents(conversation, 1, count, now)
        if len(writing) >= FILL_IN_FLIGHT:
            done, writing = await asyncio.wait(writing, return_when=asyncio.FIRST_COMPLETED)
            stored += sum(len(task.result().inserted_ids) for task in done)
        writing.add(asyncio.create_task(messages.insert_many(batch, ordered=False)))
        missing -= count
    stored += sum(len(result.inserted_ids) for result in await asyncio.gather(*writing))
    await messages.create_indexes([HISTORY_INDEX])
    return stored


async def _drop_secondary_indexes(messages: Any) -> None:
    async for index in await messages.list_indexes():
        if index["name"] != "_id_":
            await messages.drop_index(index["name"])


async def _pages(stub: Any, metadata: Any, conversation_ids: list[str]) -> list[float]:
    """Latencies of the first page and the four after it, over every measured conversation,
    after one unmeasured pass (so both sizes are measured with warm caches)."""
    await _walk(stub, metadata, conversation_ids, [])
    latencies: list[float] = []
    while len(latencies) < CALLS:
        await _walk(stub, metadata, conversation_ids, latencies)
    return latencies


async def _walk(
    stub: Any, metadata: Any, conversation_ids: list[str], latencies: list[float]
) -> None:
    for conversation_id in conversation_ids:
        token = ""
        for _ in range(5):
            started = time.perf_counter()
            page = await stub.ListMessages(
                chat_service_pb2.ListMessagesRequest(
                    conversation_id=conversation_id,
                    page_size=50,
                    page_token=token,
                    order=chat_service_pb2.MESSAGE_ORDER_NEWEST_FIRST,
                ),
                metadata=metadata,
                timeout=30,
            )
            latencies.append(time.perf_counter() - started)
            assert len(page.messages) == 50  # noqa: S101 - a full page, or the figure lies
            token = page.next_page_token


async def measure(
    channel: grpc.aio.Channel, metadata: Any, mongodb_uri: str, database: str
) -> list[Figure]:
    stub = chat_service_pb2_grpc.ChatServiceStub(channel)
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, tz_aware=True)
    try:
        messages = client[database]["messages"]
        now = dt.datetime.now(dt.UTC)
        conversation_ids = []
        for index in range(CONVERSATIONS):
            sent = await stub.SendMessage(
                chat_service_pb2.SendMessageRequest(
                    user_id=f"history-{index}",
                    channel=common_pb2.CHANNEL_TYPE_WEB,
                    content=common_pb2.Content(text=common_pb2.TextContent(text="hello")),
                ),
                metadata=metadata,
                timeout=30,
            )
            conversation_id = sent.conversation.id
            conversation_ids.append(conversation_id)
            start = sent.conversation.last_sequence + 1
            await messages.insert_many(
                _documents(conversation_id, start, PER_CONVERSATION, now), ordered=False
            )
        small_count = await _fill(messages, SMALL)
        small = await _pages(stub, metadata, conversation_ids)
        started = time.perf_counter()
        large_count = await _fill(messages, LARGE)
        fill_seconds = time.perf_counter() - started
        # The storage engine writes its checkpoint after a bulk load; reads are measured after.
        await asyncio.sleep(SETTLE_SECONDS)
        large = await _pages(stub, metadata, conversation_ids)
    finally:
        await client.close()
    ratio = percentile(large, 0.99) / percentile(small, 0.99)
    print(
        f"history: {small_count} then {large_count} messages stored "
        f"(filled in {fill_seconds:.0f} s)"
    )
    return [
        Figure("history_10k_p50", round(percentile(small, 0.5), 2), "ms", "", None),
        Figure("history_10k_p99", round(percentile(small, 0.99), 2), "ms", "", None),
        Figure("history_1m_p50", round(percentile(large, 0.5), 2), "ms", "", None),
        Figure(
            "history_1m_p99",
            round(percentile(large, 0.99), 2),
            "ms",
            "",
            None,
            round(percentile(small, 0.99), 2),
        ),
        Figure(
            "history_p99_ratio_1m_to_10k",
            round(ratio, 2),
            "x",
            "<= 1.5x",
            ratio <= 1.5,
            round(percentile(small, 0.99), 2),
        ),
    ]
