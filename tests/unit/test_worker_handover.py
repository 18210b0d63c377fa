"""A revocation hands a partition over at the next record boundary: the batch in hand stops
there, its handled records committed, so the next owner neither redoes nor skips any; a stop
does the same; and a revocation that waits too long gives up (the records then go again,
idempotently)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from chat.v1 import events_pb2
from server.events.envelopes import envelope
from server.worker.consumer import EventConsumer, Handover
from server.worker.router import EventRouter, Registration, RetryPolicy

TP = TopicPartition("chat.messages.v1", 3)


class Gate:
    """A handler that records each event and waits until let through."""

    name = "gate"

    def __init__(self) -> None:
        self.handled: list[str] = []
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def handle(self, event: events_pb2.EventEnvelope) -> None:
        self.handled.append(event.conversation_id)
        self.entered.set()
        await self.open.wait()


class Kafka:
    """The consumer's calls the batch loop makes: commits."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets)


class Quiet:
    def handled(self, handler: str, event_type: str, seconds: float) -> None: ...

    def failed(self, handler: str, event_type: str) -> None: ...

    def dead_lettered(self, handler: str, event_type: str) -> None: ...

    def lags(self, behind: Any) -> None: ...


def record(offset: int) -> ConsumerRecord[bytes, bytes]:
    value = envelope(
        tenant_id="t",
        conversation_id=f"c{offset}",
        actor_id="a",
        now=dt.datetime.now(dt.UTC),
        message_received=events_pb2.MessageReceived(),
    ).SerializeToString()
    return ConsumerRecord(
        topic=TP.topic,
        partition=TP.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"t:c",
        value=value,
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=len(value),
        headers=(),
    )


def consumer_with(gate: Gate) -> tuple[EventConsumer, Kafka]:
    router = EventRouter(
        [Registration(gate, frozenset({"message_received"}))],
        retry=RetryPolicy(attempts=1, base_delay_seconds=0, max_delay_seconds=0),
        observer=Quiet(),
    )
    consumer = EventConsumer(
        bootstrap_servers="unused:9092",
        group_id="g",
        topics=[TP.topic],
        router=router,
        observer=Quiet(),
        sink=Quiet(),  # type: ignore[arg-type]
    )
    kafka = Kafka()
    consumer._consumer = kafka  # type: ignore[assignment]
    return consumer, kafka


async def test_a_revocation_stops_the_batch_at_the_next_record_and_commits_what_was_handled() -> (
    None
):
    gate = Gate()
    consumer, kafka = consumer_with(gate)
    handover = consumer._handover
    batch = [record(offset) for offset in range(10, 15)]

    async def in_hand() -> None:
        async with handover.handling:
            await consumer._partition(TP, batch)

    loop = asyncio.create_task(in_hand())
    await gate.entered.wait()  # the first record (offset 10) is being handled
    revocation = asyncio.create_task(handover.revoke([TP]))
    await asyncio.sleep(0.01)
    assert not revocation.done()  # waits for the record in hand
    gate.open.set()
    assert await revocation is True
    await loop
    assert gate.handled == ["c10"]  # none after the revocation
    assert kafka.commits == [{TP: 11}]  # the next owner starts right after it
    assert not handover.revoking(TP)  # a later assignment of it runs whole batches again


async def test_a_stop_ends_the_batch_at_the_next_record_and_commits_what_was_handled() -> None:
    gate = Gate()
    consumer, kafka = consumer_with(gate)
    stop = asyncio.Event()
    consumer._stop = stop
    loop = asyncio.create_task(consumer._partition(TP, [record(offset) for offset in range(5)]))
    await gate.entered.wait()  # offset 0 in hand
    stop.set()
    gate.open.set()
    await loop
    assert gate.handled == ["c0"]  # the rest wait for the partition's next owner
    assert kafka.commits == [{TP: 1}]


async def test_a_batch_not_revoked_runs_whole_and_commits_its_end() -> None:
    gate = Gate()
    gate.open.set()
    consumer, kafka = consumer_with(gate)
    await consumer._partition(TP, [record(offset) for offset in range(3)])
    assert gate.handled == ["c0", "c1", "c2"]
    assert kafka.commits == [{TP: 3}]


async def test_a_revocation_that_waits_too_long_gives_up() -> None:
    handover = Handover(wait_seconds=0.05)
    await handover.handling.acquire()  # a batch stuck on a store outage
    assert await handover.revoke([TP]) is False
    assert not handover.revoking(TP)
    handover.handling.release()
    assert await handover.revoke([TP]) is True
