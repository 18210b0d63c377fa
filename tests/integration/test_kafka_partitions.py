"""Six partitions, three workers joining and leaving: each conversation's events are handled in
order, and none twice in effect.

The records are keyed by tenant and conversation, so one conversation's events share a
partition. A worker that leaves hands its partitions over; the next owner starts from the last
committed offset. A revocation stops the batch in hand at the next record and commits what was
handled, so no two workers handle one partition at once: each conversation's events are
handled in the order published, none skipped. (Before any wait, seen here on Tansu: worker b
handled a conversation's events 0-13, a then 0-1, b 14-17, then b again from 2. While the
revocation waited for the whole batch, up to 200 records a partition, a loaded CI machine once
handed a partition over with its batch of 160 records handled but not committed, and the next
owner redid events 19-58 of one conversation.)
A commit can still fail when the broker has moved the group on before the worker's revocation
(Tansu did on a loaded CI machine: "commit skipped: partition reassigned", then c handled
event 9 and d handled it again): the next owner redoes what was handled since the last commit,
as at-least-once delivery allows, at most a batch's worth. The handlers' applied-event records
(handled_events) make such a repeat a no-op; the count of effects checks none applied twice.

This runs on a broker of its own (Tansu, as the session's), whose topics have six partitions
instead of the session's three.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import itertools
import os
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner
from pymongo import AsyncMongoClient

from chat.v1 import common_pb2 as c
from chat.v1 import events_pb2
from devstack.stack import EmbeddedStack, Endpoints
from server.events.envelopes import envelope
from server.relay.publisher import KafkaEventPublisher
from server.settings import Settings
from server.worker.main import CONSUMED_TOPICS, run
from server.worker.router import Registration
from tests.support import waiting
from tests.support.kafka_events import group_at_end
from tests.support.servers import tenants_file

PARTITIONS = 6
#: Conversations in each partition: enough to interleave, few enough that the workers keep up
#: on a small machine.
PER_PARTITION = 4
eventually = functools.partial(waiting.eventually, within=60, interval=0.2)


@pytest.fixture(scope="module")
def six_partitions(stack: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap of a broker of this module's own, its topics in six partitions (the
    session's MongoDB and Redis, given by URL, are not started again)."""
    broker = EmbeddedStack(
        data_dir=tmp_path_factory.mktemp("kafka6"),
        environ={**os.environ, **stack.as_env(), "CHAT_KAFKA_BOOTSTRAP": ""},
        kafka_partitions=PARTITIONS,
    )
    yield broker.start().kafka_bootstrap
    broker.stop()


class Recorder:
    """An extra handler of one worker: which conversation's event it saw, in what order."""

    def __init__(self, worker: str, tenant: str, seen: list[tuple[str, str, int]]) -> None:
        self.name = f"order-recorder-{worker}"
        self.worker = worker
        self.tenant = tenant
        self.seen = seen

    async def handle(self, event: events_pb2.EventEnvelope) -> None:
        if event.tenant_id == self.tenant:
            index = int(event.message_received.message.sender_id.rpartition("-")[2])
            self.seen.append((self.worker, event.conversation_id, index))


class Worker:
    """chat-worker in this process; ``close`` leaves the group as a stopped worker does."""

    def __init__(self, settings: Settings, recorder: Recorder) -> None:
        self.stop = asyncio.Event()
        registration = Registration(recorder, frozenset({"message_received"}))
        self.task = asyncio.create_task(run(settings, stop=self.stop, extra=[registration]))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client
    await client.close()


def received(tenant: str, conversation: str, index: int) -> events_pb2.EventEnvelope:
    message = c.Message(
        id=uuid.uuid4().hex,
        conversation_id=conversation,
        channel=c.CHANNEL_TYPE_WHATSAPP,
        direction=c.MESSAGE_DIRECTION_INBOUND,
        sender_id=f"user-{index}",  # the recorder reads the index back from here
    )
    now = dt.datetime.now(dt.UTC)
    message.create_time.FromDatetime(now)
    return envelope(
        tenant_id=tenant,
        conversation_id=conversation,
        actor_id="u1",
        now=now,
        message_received=events_pb2.MessageReceived(message=message),
    )


async def partition_counts(bootstrap: str) -> set[int]:
    """How many partitions the consumed topics have (one number when all have as many)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=f"test-{uuid.uuid4().hex}")
    await consumer.start()
    try:
        await consumer.topics()
        return {len(consumer.partitions_for_topic(topic) or ()) for topic in CONSUMED_TOPICS}
    finally:
        await consumer.stop()


def spread(tenant: str) -> list[str]:
    """Conversation ids, PER_PARTITION of them keyed to each partition (as the producer's
    partitioner places them), so every partition has work and owners to change."""
    chosen: dict[int, list[str]] = defaultdict(list)
    n = 0
    while len(chosen) < PARTITIONS or min(map(len, chosen.values())) < PER_PARTITION:
        conversation = f"conv-{n}"
        partition = DefaultPartitioner()(
            f"{tenant}:{conversation}".encode(), list(range(PARTITIONS)), []
        )
        if len(chosen[partition]) < PER_PARTITION:
            chosen[partition].append(conversation)
        n += 1
    return sorted(c for conversations in chosen.values() for c in conversations)


#: How many rounds the traffic may run ahead of the workers' handling.
AHEAD = 3


class Traffic:
    """Publishes one event to each conversation a round, until stopped; never more than
    ``AHEAD`` rounds ahead of the handling (``handled``). Without that, a slow machine piled up
    a backlog the workers took minutes to clear (CI once: 2,400 published, 1,100 handled when
    the traffic stopped), which the test then waited out instead of testing."""

    def __init__(
        self, bootstrap: str, tenant: str, conversations: list[str], handled: Callable[[], int]
    ) -> None:
        self.rounds = 0
        self._tenant = tenant
        self._conversations = conversations
        self._handled = handled
        self._stop = asyncio.Event()
        self._publisher = KafkaEventPublisher(bootstrap_servers=bootstrap, client_id="test")
        self._task = asyncio.create_task(self._publish())

    async def _publish(self) -> None:
        while not self._stop.is_set():
            if (self.rounds - AHEAD) * len(self._conversations) > self._handled():
                await asyncio.sleep(0.05)
                continue
            for conversation in self._conversations:
                await self._publisher.publish(received(self._tenant, conversation, self.rounds))
            self.rounds += 1
            await asyncio.sleep(0.2)

    async def stop(self) -> int:
        """Stop after the current round; the number of events published."""
        self._stop.set()
        try:
            await self._task
        finally:
            await self._publisher.close()
        return self.rounds * len(self._conversations)


async def effects(mongo: AsyncMongoClient[dict[str, Any]], tenant: str) -> tuple[int, int]:
    """Messages counted by the analytics handler, entries written by the audit handler."""
    documents = mongo["chat"]["analytics_minutes"].find({"tenant_id": tenant})
    counted = sum([document.get("messages_in", 0) async for document in documents])
    return counted, await mongo["chat"]["audit_log"].count_documents({"tenant_id": tenant})


def checking(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


def assert_applied_in_order(handled: list[tuple[str, int]], count: int) -> None:
    """One conversation's handlings (worker, event), repeats included: every event, in the
    order published, none skipped. A run may start again before where the last one ended only
    to redo what could not be committed (see the module's docstring), at most the AHEAD + 1
    records a batch of one conversation holds while the traffic keeps within AHEAD rounds."""
    described = runs(handled)
    assert handled, "none handled"
    assert handled[0][1] == 0, described
    for (_, before), (_, index) in itertools.pairwise(handled):
        assert index <= before + 1, described  # none skipped
        assert before + 1 - index <= AHEAD + 1, described  # a repeat of more than a batch
    assert sorted({index for _, index in handled}) == list(range(count)), described


def runs(handled: list[tuple[str, int]]) -> list[str]:
    """The handlings as runs of one worker, "b 14-17", to read a failure by."""
    out: list[list[Any]] = []
    for worker, index in handled:
        if out and out[-1][0] == worker and out[-1][2] == index - 1:
            out[-1][2] = index
        else:
            out.append([worker, index, index])
    return [f"{worker} {first}-{last}" for worker, first, last in out]


async def test_workers_joining_and_leaving_keep_each_conversation_in_order_and_once(
    six_partitions: str,
    make_settings: Callable[..., Settings],
    mongo: AsyncMongoClient[dict[str, Any]],
    tmp_path: Path,
) -> None:
    assert await partition_counts(six_partitions) == {PARTITIONS}
    tenant = "k" + uuid.uuid4().hex[:10]
    group = await group_at_end(six_partitions)
    seen: list[tuple[str, str, int]] = []
    settings = make_settings(
        CHAT_KAFKA_BOOTSTRAP=six_partitions,
        CHAT_TENANTS_FILE=tenants_file(tmp_path, f"tenants:\n  - id: {tenant}\n"),
        CHAT_WORKER_GROUP=group,
        CHAT_WORKER_METRICS_ADDRESS="off",
        # The least Kafka allows: a rebalance waits for the members' next heartbeat.
        CHAT_WORKER_SESSION_TIMEOUT_MS="6000",
    )
    workers: dict[str, Worker] = {}

    def join(name: str) -> None:
        workers[name] = Worker(settings, Recorder(name, tenant, seen))

    def handled_by(name: str) -> int:
        return sum(1 for worker, _, _ in seen if worker == name)

    conversations = spread(tenant)
    traffic = Traffic(six_partitions, tenant, conversations, handled=lambda: len(seen))
    try:
        join("a")
        await eventually(checking(lambda: handled_by("a") > 0), "a under way")
        for name in ("b", "c"):
            join(name)
            await eventually(
                checking(lambda name=name: handled_by(name) > 0), f"{name} to take some"
            )
        await workers.pop("a").close()  # leaves: b and c take its partitions
        before = len(seen)
        await eventually(
            checking(lambda: len(seen) > before + 2 * len(conversations)), "b and c on"
        )
        join("d")
        await eventually(checking(lambda: handled_by("d") > 0), "d to take some")
        total = await traffic.stop()

        async def all_in() -> bool:
            counted, _ = await effects(mongo, tenant)
            return counted >= total

        await eventually(all_in, "every event's effect", within=90)
        await asyncio.sleep(1.0)  # a repeat applied late would show now
        assert await effects(mongo, tenant) == (total, total)  # none twice
    finally:
        await traffic.stop()
        for worker in workers.values():
            await worker.close()

    by_conversation: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for worker, conversation, index in seen:
        by_conversation[conversation].append((worker, index))

    assert sorted(by_conversation) == conversations
    for handled in by_conversation.values():
        assert_applied_in_order(handled, total // len(conversations))
    assert {worker for worker, _, _ in seen} == {"a", "b", "c", "d"}
