"""Reading what the service published to Kafka."""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf.message import DecodeError

from chat.v1 import events_pb2
from server.worker.main import CONSUMED_TOPICS


async def published(
    bootstrap: str,
    topic: str,
    conversation_ids: set[str],
    *,
    at_least: int,
    within: float = 30,
    settle: float = 0.5,
) -> list[events_pb2.EventEnvelope]:
    """Every record of these conversations on the topic, repeats included, in broker order:
    read until ``at_least`` came, then, ``settle`` seconds later, to the end of the topic (so
    a repeat published in the meantime is there too)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: list[events_pb2.EventEnvelope] = []
    deadline = time.monotonic() + within

    async def read() -> None:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                try:
                    event = events_pb2.EventEnvelope.FromString(record.value)
                except DecodeError:
                    continue  # another test's poison record (test_worker writes some)
                if event.conversation_id in conversation_ids:
                    found.append(event)

    try:
        while len(found) < at_least and time.monotonic() < deadline:
            await read()
        await asyncio.sleep(settle)
        ends = await consumer.end_offsets(list(consumer.assignment()))
        while time.monotonic() < deadline:
            positions = [await consumer.position(partition) for partition in ends]
            if all(p >= end for p, end in zip(positions, ends.values(), strict=True)):
                break
            await read()
    finally:
        await consumer.stop()
    return found


async def group_at_end(bootstrap: str) -> str:
    """A new consumer group whose offsets are at the end of every topic: its workers handle
    only what this test publishes, not every event of the test session before it."""
    group = f"test-{uuid.uuid4().hex}"
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(topic, partition)
            for topic in CONSUMED_TOPICS
            for partition in consumer.partitions_for_topic(topic) or ()
        ]
        ends = await consumer.end_offsets(partitions)
        consumer.assign(partitions)
        await consumer.commit(dict(ends.items()))
    finally:
        await consumer.stop()
    return group
