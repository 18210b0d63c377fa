"""The event worker on the embedded broker: every handler, redelivery without double effects,
retry then dead-letter, replay, a poison message, alerts, two worker processes with one killed
mid-stream, and the audit chain catching a modified entry."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymongo import AsyncMongoClient
from pymongo.errors import AutoReconnect

from chat.v1 import (
    analytics_service_pb2,
    analytics_service_pb2_grpc,
    audit_service_pb2,
    audit_service_pb2_grpc,
    events_pb2,
)
from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from devstack.processes import script_path
from devstack.stack import Endpoints
from devstack.tokens import mint_dev_token
from server.events.envelopes import envelope
from server.events.topics import DEAD_LETTER_TOPIC
from server.relay.publisher import KafkaEventPublisher
from server.repositories.analytics import MongoAnalytics
from server.repositories.conversation_cache import RedisConversationCache
from server.settings import AlertSettings, Settings
from server.stopping import EXIT_MARGIN_SECONDS
from server.worker.main import WorkerMetrics, replay_dead_letters, run
from server.worker.notifier import Notifier
from server.worker.router import Registration
from tests.support import waiting
from tests.support.chat_client import JWT_SETTINGS, SECRET, ChatClient
from tests.support.kafka_events import group_at_end
from tests.support.redis_clients import session_redis
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncMongoClient[dict[str, Any]]
WAIT = 60.0


#: The worker's consumer group takes a while to form: a longer wait than the other tests'.
eventually = functools.partial(waiting.eventually, within=WAIT, interval=0.2)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def message(tenant: str, conversation: str, *, outbound: bool = False) -> c.Message:
    result = c.Message(
        id=uuid.uuid4().hex,
        conversation_id=conversation,
        channel=c.CHANNEL_TYPE_WHATSAPP,
        direction=c.MESSAGE_DIRECTION_OUTBOUND if outbound else c.MESSAGE_DIRECTION_INBOUND,
        sender_id="bot" if outbound else "u1",
    )
    result.create_time.FromDatetime(now())
    return result


def event(tenant: str, conversation: str = "conv-1", **payload: Any) -> events_pb2.EventEnvelope:
    return envelope(
        tenant_id=tenant, conversation_id=conversation, actor_id="u1", now=now(), **payload
    )


class Worker:
    """chat-worker run in this process, with extra handlers; stopped at teardown."""

    def __init__(self, settings: Settings, extra: list[Registration]) -> None:
        self.stop = asyncio.Event()
        self.metrics = WorkerMetrics()
        self.task = asyncio.create_task(
            run(settings, stop=self.stop, extra=extra, metrics=self.metrics)
        )

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


@pytest.fixture
def tenant() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
async def group(stack: Endpoints) -> str:
    return await group_at_end(stack.kafka_bootstrap)


@pytest.fixture
def worker_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, tenant: str, group: str
) -> Callable[..., Settings]:
    def make(**overrides: str) -> Settings:
        return make_settings(
            CHAT_TENANTS_FILE=tenants_file(tmp_path, f"tenants:\n  - id: {tenant}\n"),
            CHAT_WORKER_GROUP=group,
            CHAT_WORKER_METRICS_ADDRESS="off",
            CHAT_WORKER_RETRY_BASE_DELAY_MS="10",
            CHAT_WORKER_SESSION_TIMEOUT_MS="6000",
            **overrides,
        )

    return make


@pytest.fixture
async def start_worker(
    worker_settings: Callable[..., Settings],
) -> AsyncIterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(extra: list[Registration] | None = None, **overrides: str) -> Worker:
        worker = Worker(worker_settings(**overrides), extra or [])
        started.append(worker)
        return worker

    yield start
    for worker in started:
        await worker.close()


@pytest.fixture
async def publisher(stack: Endpoints) -> AsyncIterator[KafkaEventPublisher]:
    published = KafkaEventPublisher(bootstrap_servers=stack.kafka_bootstrap, client_id="test")
    yield published
    await published.close()


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[Mongo]:
    client: Mongo = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client
    await client.close()


async def analytics_sum(mongo: Mongo, tenant: str, field: str) -> float:
    documents = mongo["chat"]["analytics_minutes"].find({"tenant_id": tenant})
    return sum([document.get(field, 0) async for document in documents])


async def dead_letters(bootstrap: str, event_id: str) -> list[events_pb2.DeadLetter]:
    """The dead letters of one event id, read from the whole topic as it is now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[events_pb2.DeadLetter] = []
    try:
        await consumer.topics()
        partitions = [
            TopicPartition(DEAD_LETTER_TOPIC, p)
            for p in consumer.partitions_for_topic(DEAD_LETTER_TOPIC) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    letter = events_pb2.DeadLetter.FromString(record.value)
                    if letter.event_id == event_id:
                        found.append(letter)
    finally:
        await consumer.stop()
    return found


@pytest.fixture
async def alert_hook() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver: its URL and the alerts it got."""
    alerts: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.Response:
        alerts.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}/alerts", alerts
    await runner.cleanup()


class Flaky:
    """A handler that fails ``failures`` times per event, then succeeds (or keeps failing
    while ``broken``)."""

    def __init__(self, name: str, tenant: str, failures: int = 0, *, broken: bool = False) -> None:
        self.name = name
        self.tenant = tenant
        self.failures = failures
        self.broken = broken
        self.attempts: dict[str, int] = {}
        self.applied: list[str] = []

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        if envelope.tenant_id != self.tenant:
            return  # another test's event, still arriving on the shared topics
        self.attempts[envelope.event_id] = self.attempts.get(envelope.event_id, 0) + 1
        if self.broken or self.attempts[envelope.event_id] <= self.failures:
            raise RuntimeError("downstream unavailable")
        if envelope.event_id not in self.applied:
            self.applied.append(envelope.event_id)


async def test_the_server_s_events_reach_every_handler(
    start_server: StartServer,
    start_worker: Callable[..., Worker],
    worker_settings: Callable[..., Settings],
    tenant: str,
    stack: Endpoints,
) -> None:
    """End to end: SendMessage, SearchMessages, ExportConversation and CloseConversation on
    the server; the worker's rollups and audit log read back over gRPC."""
    settings = worker_settings()
    server = await start_server(CHAT_TENANTS_FILE=str(settings.tenants_file), **JWT_SETTINGS)
    start_worker()
    async with grpc.aio.insecure_channel(server.target) as channel:
        client = ChatClient(channel, tenant)
        first = await client.send("hello", user_id="ana")
        cid = first.conversation.id
        await client.send("what are your hours?", user_id="ana")
        # GetConversation fills the cache; the close's event must then refresh it.
        await client.call("GetConversation", chat.GetConversationRequest(conversation_id=cid))
        await client.call("SearchMessages", chat.SearchMessagesRequest(query="hours"))
        export = client.stub.ExportConversation(
            chat.ExportConversationRequest(conversation_id=cid, format=chat.EXPORT_FORMAT_CSV),
            metadata=client.metadata,
        )
        _ = [chunk async for chunk in export]
        await client.call("CloseConversation", chat.CloseConversationRequest(conversation_id=cid))

        admin = mint_dev_token(
            secret=SECRET, tenant_id=tenant, subject="auditor", scopes=("chat:admin", "chat:read")
        )
        metadata = (("authorization", f"Bearer {admin}"),)
        analytics = analytics_service_pb2_grpc.AnalyticsServiceStub(channel)
        audit = audit_service_pb2_grpc.AuditServiceStub(channel)
        window = {
            "start_time": {"seconds": int(time.time()) - 600},
            "end_time": {"seconds": int(time.time()) + 600},
        }

        async def figures() -> analytics_service_pb2.AnalyticsFigures:
            response = await analytics.GetTenantAnalytics(
                analytics_service_pb2.GetTenantAnalyticsRequest(time_range=window),  # type: ignore[arg-type]
                metadata=metadata,
            )
            return response.totals

        # Each event type has a topic of its own, and the worker reads them in no set order
        # between topics: wait for all four counts, not the first ones to arrive.
        def counts(totals: analytics_service_pb2.AnalyticsFigures) -> tuple[int, ...]:
            return (
                totals.messages_in,
                totals.messages_out,
                totals.responses,
                totals.conversations_ended,
            )

        async def rolled_up() -> bool:
            return counts(await figures()) == (2, 2, 2, 1)

        await eventually(rolled_up, "the analytics rollups")
        totals = await figures()
        assert counts(totals) == (2, 2, 2, 1)
        assert totals.response_time_max_ms >= 0
        assert totals.conversation_duration_mean_seconds >= 0

        async def entries() -> list[audit_service_pb2.AuditEntry]:
            page = await audit.ListAuditEntries(
                audit_service_pb2.ListAuditEntriesRequest(page_size=50), metadata=metadata
            )
            return list(page.entries)

        expected = [
            "conversation.started",
            "message.received",
            "message.received",
            "data.searched",
            "data.exported",
            "conversation.closed",
            "session.ended",  # closing the conversation ended its session
        ]

        async def audited() -> bool:
            return sorted(e.action for e in await entries()) == sorted(expected)

        await eventually(audited, "the audit entries")
        logged = await entries()
        assert [e.sequence for e in logged] == list(range(len(expected), 0, -1))
        assert {e.actor_id for e in logged if e.action.startswith("data.")} == {f"{tenant}-app"}
        searched = next(e for e in logged if e.action == "data.searched")
        assert "hours" not in searched.detail
        assert searched.detail.startswith("sha256:")
        verified = await audit.VerifyAuditChain(
            audit_service_pb2.VerifyAuditChainRequest(), metadata=metadata
        )
        assert (verified.intact, verified.entries_checked) == (True, len(expected))

        # GetConversation was cached before the close; the close dropped the entry.
        after = await client.call(
            "GetConversation", chat.GetConversationRequest(conversation_id=cid)
        )
        assert after.conversation.status == c.CONVERSATION_STATUS_CLOSED


async def test_a_user_record_per_platform_identity(
    start_server: StartServer,
    start_worker: Callable[..., Worker],
    worker_settings: Callable[..., Settings],
    tenant: str,
    mongo: Mongo,
) -> None:
    settings = worker_settings()
    server = await start_server(CHAT_TENANTS_FILE=str(settings.tenants_file), **JWT_SETTINGS)
    start_worker()
    async with grpc.aio.insecure_channel(server.target) as channel:
        client = ChatClient(channel, tenant)
        first = await client.send("hello", user_id="ana")
        second = await client.send("again", user_id="ana")
        await client.send(
            "on slack", user_id="ana", channel=c.CHANNEL_TYPE_SLACK, channel_conversation_id="C1"
        )
        with pytest.raises(grpc.aio.AioRpcError):
            await client.send(" ", user_id="ana")  # refused: no activity recorded

    async def records() -> list[dict[str, Any]]:
        cursor = mongo["chat"]["users"].find({"tenant_id": tenant, "user_id": "ana"}, {"_id": 0})
        return await cursor.sort("channel", 1).to_list()

    async def counted() -> bool:
        return sum(r["message_count"] for r in await records()) >= 3

    await eventually(counted, "the users' records")
    await asyncio.sleep(0.5)  # nothing more arrives: the refused message left no record
    found = await records()
    assert [(r["channel"], r["message_count"]) for r in found] == [
        (c.CHANNEL_TYPE_WEB, 2),
        (c.CHANNEL_TYPE_SLACK, 1),
    ]
    web = found[0]
    assert web["first_seen_time"] == first.message.create_time.ToDatetime(tzinfo=dt.UTC)
    assert web["last_active_time"] == second.message.create_time.ToDatetime(tzinfo=dt.UTC)


@pytest.mark.redis
async def test_the_cache_handler_refreshes_cached_conversations_only(
    start_worker: Callable[..., Worker],
    publisher: KafkaEventPublisher,
    stack: Endpoints,
    tenant: str,
) -> None:
    def state(conversation_id: str, seconds: int, sequence: int) -> c.Conversation:
        conversation = c.Conversation(id=conversation_id, last_sequence=sequence)
        conversation.update_time.FromSeconds(seconds)
        return conversation

    redis = session_redis(stack)
    cache = RedisConversationCache(client=redis)
    try:
        assert await cache.fill(tenant, state("cached", 100, 2))  # a reader filled it
        for conversation_id in ("cached", "not-cached"):
            await publisher.publish(
                event(
                    tenant,
                    conversation_id,
                    conversation_updated=events_pb2.ConversationUpdated(
                        conversation=state(conversation_id, 200, 4)
                    ),
                )
            )
        start_worker()

        async def refreshed() -> bool:
            cached = await cache.get(tenant, "cached")
            return cached is not None and cached.last_sequence == 4

        await eventually(refreshed, "the cache handler")
        assert await cache.get(tenant, "not-cached") is None  # never created by an event
    finally:
        await redis.aclose()


async def test_a_redelivered_event_changes_nothing_twice(
    start_worker: Callable[..., Worker],
    publisher: KafkaEventPublisher,
    mongo: Mongo,
    tenant: str,
) -> None:
    received = event(
        tenant, message_received=events_pb2.MessageReceived(message=message(tenant, "c1"))
    )
    started = event(
        tenant,
        conversation_started=events_pb2.ConversationStarted(conversation=c.Conversation(id="c1")),
    )
    reply = message(tenant, "c1", outbound=True)
    delivered = event(
        tenant,
        message_delivered=events_pb2.MessageDelivered(
            message_id=reply.id, channel=c.CHANNEL_TYPE_WHATSAPP, status=c.DELIVERY_STATUS_DELIVERED
        ),
    )
    read = event(
        tenant,
        message_delivered=events_pb2.MessageDelivered(
            message_id=reply.id, channel=c.CHANNEL_TYPE_WHATSAPP, status=c.DELIVERY_STATUS_READ
        ),
    )
    for _ in range(3):  # at-least-once: the same events, three times
        for item in (received, started, delivered, read):
            await publisher.publish(item)
    # Then one new event on each of the three topics, behind the duplicates in their partitions
    # (one key): once each has been handled, so has every duplicate before it.
    other_sender = message(tenant, "c1")
    other_sender.sender_id = "u2"
    for item in (
        event(tenant, message_received=events_pb2.MessageReceived(message=other_sender)),
        event(
            tenant,
            conversation_started=events_pb2.ConversationStarted(
                conversation=c.Conversation(id="c2")
            ),
        ),
        event(
            tenant,
            message_delivered=events_pb2.MessageDelivered(
                message_id=uuid.uuid4().hex,
                channel=c.CHANNEL_TYPE_WHATSAPP,
                status=c.DELIVERY_STATUS_FAILED,
            ),
        ),
    ):
        await publisher.publish(item)
    worker = start_worker()

    async def users() -> list[tuple[str, int]]:
        found = await mongo["chat"]["users"].find({"tenant_id": tenant}).to_list()
        return sorted((u["user_id"], u["message_count"]) for u in found)

    async def done() -> bool:
        return (
            await analytics_sum(mongo, tenant, "deliveries_failed") == 1
            and await analytics_sum(mongo, tenant, "messages_in") == 2
            and await mongo["chat"]["audit_log"].count_documents({"tenant_id": tenant}) == 4
            and len(await users()) == 2
        )

    await eventually(done, "the events after the duplicates")
    assert await analytics_sum(mongo, tenant, "messages_in") == 2  # once each
    assert await analytics_sum(mongo, tenant, "deliveries_succeeded") == 1  # DELIVERED then READ
    # Each message received, each conversation started: once.
    assert await mongo["chat"]["audit_log"].count_documents({"tenant_id": tenant}) == 4
    assert await users() == [("u1", 1), ("u2", 1)]
    sample = worker.metrics.registry.get_sample_value(
        "chat_worker_events_handled_total",
        {"handler": "analytics", "event_type": "message_received"},
    )
    assert sample is not None
    assert sample >= 4  # the duplicates were handled (and found done), not skipped unseen


async def test_retry_then_dead_letter_then_replay(
    start_worker: Callable[..., Worker],
    publisher: KafkaEventPublisher,
    mongo: Mongo,
    stack: Endpoints,
    tenant: str,
    alert_hook: tuple[str, list[dict[str, Any]]],
) -> None:
    flaky = Flaky("flaky", tenant, failures=2)
    broken = Flaky("broken", tenant, broken=True)
    worker = start_worker(
        [
            Registration(flaky, frozenset({"message_received"})),
            Registration(broken, frozenset({"message_received"})),
        ],
        CHAT_WORKER_RETRY_ATTEMPTS="4",
        CHAT_ALERT_WEBHOOK_URL=alert_hook[0],
        CHAT_ALERT_DEAD_LETTERS="1",
    )
    item = event(tenant, message_received=events_pb2.MessageReceived(message=message(tenant, "c1")))
    await publisher.publish(item)

    async def dead() -> bool:
        return len(await dead_letters(stack.kafka_bootstrap, item.event_id)) == 1

    await eventually(dead, "the dead letter")
    assert flaky.applied == [item.event_id]
    assert flaky.attempts[item.event_id] == 3
    [letter] = await dead_letters(stack.kafka_bootstrap, item.event_id)
    assert (letter.handler, letter.attempts, letter.tenant_id) == ("broken", 4, tenant)
    assert letter.event_type == "message_received"
    assert "downstream unavailable" in letter.error
    assert letter.original_value == item.SerializeToString()
    assert letter.topic == "chat.message.received.v1"
    assert await analytics_sum(mongo, tenant, "messages_in") == 1  # the others were applied
    failures = worker.metrics.registry.get_sample_value(
        "chat_worker_events_dead_lettered_total",
        {"handler": "broken", "event_type": "message_received"},
    )
    assert failures == 1

    async def alerted() -> bool:
        return any(a["tenant_id"] == tenant for a in alert_hook[1])

    await eventually(alerted, "the dead-letter alert")
    assert [a["condition"] for a in alert_hook[1] if a["tenant_id"] == tenant] == ["dead_letters"]

    broken.broken = False  # the fix
    replayed = await replay_dead_letters(stack.kafka_bootstrap, tenant_id=tenant, handler="broken")
    assert replayed == 1

    async def applied() -> bool:
        return broken.applied == [item.event_id]

    await eventually(applied, "the replayed event")
    await asyncio.sleep(0.5)
    assert await analytics_sum(mongo, tenant, "messages_in") == 1  # not counted again
    assert flaky.applied == [item.event_id]


async def test_a_poison_message_is_dead_lettered_at_once(
    start_worker: Callable[..., Worker],
    publisher: KafkaEventPublisher,
    mongo: Mongo,
    stack: Endpoints,
    tenant: str,
    alert_hook: tuple[str, list[dict[str, Any]]],
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap)
    await producer.start()
    poison = b"\xff\xfenot protobuf " + uuid.uuid4().hex.encode()
    try:
        await producer.send_and_wait("chat.message.received.v1", poison, key=b"x")
    finally:
        await producer.stop()
    after = event(
        tenant, message_received=events_pb2.MessageReceived(message=message(tenant, "c9"))
    )
    await publisher.publish(after)
    failed = [
        event(
            tenant,
            message_delivered=events_pb2.MessageDelivered(
                message_id=f"m{n}", channel=c.CHANNEL_TYPE_SLACK, status=c.DELIVERY_STATUS_FAILED
            ),
        )
        for n in range(4)
    ]
    for item in failed:
        await publisher.publish(item)
    start_worker(CHAT_ALERT_WEBHOOK_URL=alert_hook[0], CHAT_ALERT_DELIVERY_MIN_OUTCOMES="3")

    # The poison message, the message after it and the delivery failures are on two topics,
    # and partitions are consumed in no set order: wait for each.
    async def consumed() -> bool:
        return (
            await analytics_sum(mongo, tenant, "messages_in") == 1
            and await analytics_sum(mongo, tenant, "deliveries_failed") == 4
        )

    await eventually(consumed, "the events after the poison message")

    async def poisoned() -> list[events_pb2.DeadLetter]:
        return [
            letter
            for letter in await dead_letters(stack.kafka_bootstrap, "")
            if letter.original_value == poison
        ]

    async def dead_lettered() -> bool:
        return bool(await poisoned())

    await eventually(dead_lettered, "the poison message's dead letter")
    letters = await poisoned()
    assert len(letters) == 1
    assert (letters[0].handler, letters[0].attempts) == ("", 0)  # not retried: it never decodes
    assert letters[0].error.startswith("undecodable")

    async def alerted() -> bool:
        return any(a["tenant_id"] == tenant for a in alert_hook[1])

    await eventually(alerted, "the failure-rate alert")
    await asyncio.sleep(0.5)
    mine = [a for a in alert_hook[1] if a["tenant_id"] == tenant]
    # Four failures crossed the threshold twice: one alert within the interval.
    assert [a["condition"] for a in mine] == ["delivery_failure_rate"]
    assert mine[0]["figures"]["failed"] >= 3


@pytest.fixture
def worker_processes(group: str, stack: Endpoints) -> Iterator[Any]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(log_path: Path) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            **stack.as_env(),
            "CHAT_WORKER_GROUP": group,
            "CHAT_WORKER_METRICS_ADDRESS": "off",
            # The least Kafka allows: the killed worker's partitions move sooner.
            "CHAT_WORKER_SESSION_TIMEOUT_MS": "6000",
            "CHAT_LOG_FORMAT": "json",
        }
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [script_path("chat-worker")], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_worker_stuck_on_an_unanswering_broker_still_stops(
    stack: Endpoints, tmp_path: Path
) -> None:
    """SIGTERM while the worker waits on a broker that accepts connections and never answers:
    it exits by the deadline (grace period plus margin), saying so, rather than when Kafka's
    own request timeout (40 s) gives up."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        env = {
            **os.environ,
            **stack.as_env(),
            "CHAT_KAFKA_BOOTSTRAP": f"127.0.0.1:{silent.getsockname()[1]}",
            "CHAT_WORKER_METRICS_ADDRESS": "off",
            "CHAT_SHUTDOWN_GRACE_SECONDS": "0.5",
            "CHAT_LOG_FORMAT": "json",
        }
        log_path = tmp_path / "worker.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [script_path("chat-worker")], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            silent.settimeout(60)
            connection, _ = silent.accept()  # the worker is starting its Kafka clients
            with connection:
                process.send_signal(signal.SIGTERM)
                code = process.wait(60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert code == 1
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    late = [line for line in lines if line["event"] == "stopping took too long; exiting now"]
    assert [line["deadline_seconds"] for line in late] == [0.5 + EXIT_MARGIN_SECONDS]


def holds_partitions(log_path: Path) -> bool:
    """Whether the worker's latest assignment (in its JSON log) holds any partition."""
    latest: list[str] | None = None
    for line in log_path.read_text().splitlines():
        if '"partitions assigned"' in line:
            latest = json.loads(line)["partitions"]
    return bool(latest)


async def test_two_workers_share_the_work_and_a_killed_one_loses_nothing(
    worker_processes: Any, publisher: KafkaEventPublisher, mongo: Mongo, tenant: str, tmp_path: Path
) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = worker_processes(first_log)
    worker_processes(second_log)

    async def both_assigned() -> bool:
        return holds_partitions(first_log) and holds_partitions(second_log)

    await eventually(both_assigned, "both workers to hold partitions")
    total = 600

    async def publish() -> None:
        for n in range(total):  # many conversations: spread over every partition
            conversation = f"c{n % 60}"
            received = events_pb2.MessageReceived(message=message(tenant, conversation))
            await publisher.publish(event(tenant, conversation, message_received=received))

    publishing = asyncio.create_task(publish())

    async def under_way() -> bool:
        return await analytics_sum(mongo, tenant, "messages_in") >= 60

    await eventually(under_way, "the workers to be under way")
    first.send_signal(signal.SIGKILL)  # mid-stream: events keep coming, a batch is in hand
    first.wait(10)
    await publishing

    async def all_in() -> bool:
        return await analytics_sum(mongo, tenant, "messages_in") >= total

    await eventually(all_in, "every event, after the rebalance", within=90)
    await asyncio.sleep(1.0)
    assert await analytics_sum(mongo, tenant, "messages_in") == total  # none twice
    assert await mongo["chat"]["audit_log"].count_documents({"tenant_id": tenant}) == total
    # The survivor took over the dead worker's partitions.
    assert "partitions revoked" in second_log.read_text()


async def test_the_audit_chain_detects_a_modified_or_removed_entry(
    start_server: StartServer,
    start_worker: Callable[..., Worker],
    worker_settings: Callable[..., Settings],
    publisher: KafkaEventPublisher,
    mongo: Mongo,
    tenant: str,
) -> None:
    for n in range(5):
        await publisher.publish(
            event(
                tenant,
                message_received=events_pb2.MessageReceived(message=message(tenant, f"c{n}")),
            )
        )
    start_worker()
    log = mongo["chat"]["audit_log"]

    async def logged() -> bool:
        return await log.count_documents({"tenant_id": tenant}) == 5

    await eventually(logged, "the audit entries")
    server = await start_server(
        CHAT_TENANTS_FILE=str(worker_settings().tenants_file), **JWT_SETTINGS
    )
    admin = mint_dev_token(secret=SECRET, tenant_id=tenant, scopes=("chat:admin",))
    async with grpc.aio.insecure_channel(server.target) as channel:
        audit = audit_service_pb2_grpc.AuditServiceStub(channel)

        async def verify() -> audit_service_pb2.VerifyAuditChainResponse:
            return await audit.VerifyAuditChain(
                audit_service_pb2.VerifyAuditChainRequest(),
                metadata=(("authorization", f"Bearer {admin}"),),
            )

        assert (await verify()).intact
        await log.update_one({"tenant_id": tenant, "sequence": 3}, {"$set": {"actor_id": "nobody"}})
        tampered = await verify()
        assert (tampered.intact, tampered.first_broken_sequence) == (False, 3)
        assert "hash" in tampered.problem
        await log.update_one({"tenant_id": tenant, "sequence": 3}, {"$set": {"actor_id": "u1"}})
        assert (await verify()).intact
        await log.delete_one({"tenant_id": tenant, "sequence": 5})  # the newest entry
        truncated = await verify()
        assert (truncated.intact, truncated.first_broken_sequence) == (False, 5)
        await log.delete_one({"tenant_id": tenant, "sequence": 2})
        gap = await verify()
        assert (gap.intact, gap.first_broken_sequence) == (False, 2)


@pytest.mark.redis
async def test_a_late_event_never_brings_back_an_older_cached_state(stack: Endpoints) -> None:
    redis = session_redis(stack)
    cache = RedisConversationCache(client=redis)
    tenant = "t" + uuid.uuid4().hex[:8]

    def state(
        seconds: int, sequence: int, status: int = c.CONVERSATION_STATUS_ACTIVE
    ) -> c.Conversation:
        conversation = c.Conversation(id="c1", last_sequence=sequence, status=status)  # type: ignore[arg-type]
        conversation.update_time.FromSeconds(seconds)
        return conversation

    try:
        assert not await cache.refresh(tenant, state(100, 2))  # not cached: stays missing
        assert await cache.get(tenant, "c1") is None
        assert await cache.fill(tenant, state(100, 4))
        # A slow read with an older state, from a server whose clock runs ahead: refused.
        assert not await cache.fill(tenant, state(500, 2))
        assert not await cache.refresh(tenant, state(100, 4))  # the same state
        assert await cache.refresh(tenant, state(90, 6))  # later sequence, earlier clock
        assert await cache.refresh(tenant, state(90, 6, c.CONVERSATION_STATUS_CLOSED))
        assert not await cache.refresh(tenant, state(95, 6))  # closed beats open
        cached = await cache.get(tenant, "c1")
        assert cached is not None
        assert cached.status == c.CONVERSATION_STATUS_CLOSED
    finally:
        await redis.aclose()


async def test_lag_alerts_once_per_interval_across_workers(
    mongo: Mongo, alert_hook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, alerts = alert_hook
    database = mongo["chat"]
    settings = AlertSettings(webhook_url=url, consumer_lag=100, interval_seconds=60)
    # Two workers' notifiers, the same condition: the claim in MongoDB lets one through.
    notifiers = [
        Notifier(database=database, analytics=MongoAnalytics(database=database), settings=settings)
        for _ in range(2)
    ]
    await database["alerts"].delete_many({"_id": ":consumer_lag"})
    moment = now()
    try:
        await notifiers[0].check_lag({"chat.message.received.v1/0": 60}, now=moment)
        assert alerts == []  # under the threshold
        for notifier in notifiers:
            await notifier.check_lag(
                {"chat.message.received.v1/0": 60, "chat.message.sent.v1/1": 50}, now=moment
            )
        assert [(a["condition"], a["figures"]["lag"]) for a in alerts] == [("consumer_lag", 110)]
        later = moment + dt.timedelta(seconds=61)
        await notifiers[1].check_lag({"chat.message.received.v1/0": 500}, now=later)
        assert len(alerts) == 2  # the next interval
    finally:
        for notifier in notifiers:
            await notifier.close()


class Outage:
    """A handler whose store is down for its first ``failures`` attempts."""

    name = "outage"

    def __init__(self, tenant: str, failures: int) -> None:
        self.tenant = tenant
        self.failures = failures
        self.calls = 0
        self.applied: list[str] = []

    async def handle(self, envelope: events_pb2.EventEnvelope) -> None:
        if envelope.tenant_id != self.tenant:
            return
        self.calls += 1
        if self.calls <= self.failures:
            raise AutoReconnect("connection refused")
        self.applied.append(envelope.event_id)


async def test_a_store_outage_waits_instead_of_dead_lettering(
    start_worker: Callable[..., Worker],
    publisher: KafkaEventPublisher,
    stack: Endpoints,
    tenant: str,
) -> None:
    outage = Outage(tenant, failures=3)  # more than one round of attempts
    start_worker(
        [Registration(outage, frozenset({"message_received"}))], CHAT_WORKER_RETRY_ATTEMPTS="2"
    )
    first = event(
        tenant, message_received=events_pb2.MessageReceived(message=message(tenant, "c1"))
    )
    second = event(
        tenant, message_received=events_pb2.MessageReceived(message=message(tenant, "c1"))
    )
    await publisher.publish(first)
    await publisher.publish(second)

    async def applied() -> bool:
        return len(outage.applied) == 2

    await eventually(applied, "the events after the outage")
    assert outage.applied == [first.event_id, second.event_id]  # in order, none skipped
    assert outage.calls == 5
    assert await dead_letters(stack.kafka_bootstrap, first.event_id) == []
