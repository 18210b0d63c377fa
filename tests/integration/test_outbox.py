"""Events reach Kafka through the outbox; with Kafka down the service keeps working, and every
event is published once Kafka is back."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from aiokafka import AIOKafkaConsumer
from bson import ObjectId
from google.protobuf.message import DecodeError
from pymongo import AsyncMongoClient

from chat.v1 import common_pb2 as c
from chat.v1 import events_pb2
from devstack.processes import free_port
from devstack.stack import EmbeddedStack, Endpoints, StackPorts
from server.events.envelopes import envelope
from server.events.topics import ALL_TOPICS, record_key, topic_for
from server.repositories import outbox as outbox_module
from server.repositories.mongo import Transactions, create_indexes
from server.repositories.outbox import MongoOutbox, records
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.servers import RunningServer, outbox_records, tenants_file
from tests.support.tcp_proxy import TcpProxy

StartServer = Callable[..., Awaitable[RunningServer]]


async def consume(
    bootstrap: str, conversation_ids: set[str], expected: int, within: float
) -> list[events_pb2.EventEnvelope]:
    """Read every topic from the start until ``expected`` events of these conversations came;
    returned in broker order within each topic (the only order Kafka defines)."""
    consumer = AIOKafkaConsumer(
        *[t for t in ALL_TOPICS if t != "chat.dlq.v1"],
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4().hex}",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    found: dict[str, tuple[str, int, events_pb2.EventEnvelope]] = {}
    deadline = time.monotonic() + within
    try:
        while len(found) < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    try:
                        event = events_pb2.EventEnvelope.FromString(record.value)
                    except DecodeError:
                        continue  # another test's poison record (test_worker writes some)
                    if event.conversation_id in conversation_ids:
                        assert record.key == f"{event.tenant_id}:{event.conversation_id}".encode()
                        found[event.event_id] = (record.topic, record.offset, event)
    finally:
        await consumer.stop()
    return [event for _, _, event in sorted(found.values(), key=lambda f: (f[0], f[1]))]


@pytest.fixture
async def acme_on(
    start_server: StartServer, tmp_path: Path
) -> Callable[..., Awaitable[tuple[RunningServer, ChatClient, grpc.aio.Channel]]]:
    channels: list[grpc.aio.Channel] = []

    async def start(**overrides: str) -> tuple[RunningServer, ChatClient, grpc.aio.Channel]:
        server = await start_server(
            CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS, **overrides
        )
        channel = grpc.aio.insecure_channel(server.target)
        channels.append(channel)
        return server, ChatClient(channel, "acme"), channel

    yield start  # type: ignore[misc]
    for channel in channels:
        await channel.close()


async def test_a_conversations_events_reach_kafka_in_order(
    stack: Endpoints, acme_on: Callable[..., Awaitable[tuple[RunningServer, ChatClient, object]]]
) -> None:
    _, acme, _ = await acme_on()
    first = await acme.send("hello")
    await acme.send("help", user_id=first.conversation.user_id)
    events = await consume(stack.kafka_bootstrap, {first.conversation.id}, expected=8, within=30)
    kinds = sorted(event.WhichOneof("payload") or "" for event in events)
    assert kinds == sorted(
        ["conversation_started", "session_started"]
        + ["message_received", "message_sent", "conversation_updated"] * 2
    )
    # Within a topic, one conversation's events keep their order.
    received = [
        e.message_received.message.sequence for e in events if e.HasField("message_received")
    ]
    assert received == [1, 3]
    updates = [
        e.conversation_updated.conversation.message_count
        for e in events
        if e.HasField("conversation_updated")
    ]
    assert updates == [2, 4]
    assert {event.actor_id for event in events} == {"acme-app"}
    assert {event.tenant_id for event in events} == {"acme"}
    assert len({event.event_id for event in events}) == 8
    assert next(e for e in events if e.HasField("message_received")).message_received.message == (
        first.message
    )


async def test_kafka_unreachable_then_back_loses_no_event(
    stack: Endpoints,
    tmp_path: Path,
    acme_on: Callable[..., Awaitable[tuple[RunningServer, ChatClient, object]]],
) -> None:
    broker_port, proxy_port = free_port(), free_port()
    proxy = TcpProxy(listen_port=proxy_port, target_port=broker_port)
    await proxy.start()
    kafka = EmbeddedStack(
        data_dir=tmp_path / "kafka",
        ports=StackPorts(kafka=broker_port, kafka_advertised=proxy_port),
        environ={"CHAT_MONGODB_URI": stack.mongodb_uri, "CHAT_REDIS_URL": stack.redis_url},
    )
    await asyncio.to_thread(kafka.start)
    bootstrap = f"127.0.0.1:{proxy_port}"
    try:
        _, acme, _ = await acme_on(CHAT_KAFKA_BOOTSTRAP=bootstrap)
        warmup = await acme.send("before the outage")
        assert len(await consume(bootstrap, {warmup.conversation.id}, expected=5, within=30)) == 5

        await proxy.stop()  # Kafka unreachable: messages are still taken; events wait
        sent = [await acme.send(f"during the outage {i}") for i in range(3)]
        conversation_ids = {response.conversation.id for response in sent}
        client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongodb_uri)
        try:
            keys = {f"acme:{cid}".encode() for cid in conversation_ids}
            waiting = [r for r in await outbox_records(client["chat"]) if r.key in keys]
        finally:
            await client.close()
        assert len(waiting) == 15  # 3 conversations x (started, session, received, sent, updated)

        await proxy.start()  # Kafka is back: every waiting event gets published
        events = await consume(bootstrap, conversation_ids, expected=15, within=60)
        assert len(events) == 15
        assert {event.conversation_id for event in events} == conversation_ids
    finally:
        await proxy.stop()
        await asyncio.to_thread(kafka.stop)


async def test_an_older_database_keeps_only_its_waiting_events(stack: Endpoints) -> None:
    """Events were once marked published and kept: on start, those leave the outbox, and the
    ones still waiting stay, to be published."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongodb_uri)
    database = client[f"legacy_{uuid.uuid4().hex[:8]}"]
    try:
        outbox = database["outbox"]
        await outbox.create_index([("published", 1), ("position", 1)], name="pending")
        await outbox.create_index([("publish_time", 1)], expireAfterSeconds=60, name="expiry")
        await outbox.insert_many(
            [
                {"_id": "sent", "position": ObjectId(), "published": True},
                {"_id": "waiting", "position": ObjectId(), "published": False},
            ]
        )
        outbox_ = MongoOutbox(database=database)
        # Before the migration ran, the marked event is not taken for waiting either.
        assert [d["_id"] for d in await outbox_.pending(10)] == ["waiting"]
        await create_indexes(database)
        await create_indexes(database)  # and again, as every start does

        assert [d["_id"] for d in await outbox_.pending(10)] == ["waiting"]
        assert await outbox_.count_pending() == 1
        names = {index["name"] async for index in await outbox.list_indexes()}
        assert names == {"_id_", "position"}
    finally:
        await client.drop_database(database.name)
        await client.close()


async def test_a_transactions_events_share_a_document_in_order(
    stack: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One document per transaction (split only when large); the earlier shape, one event per
    document with its fields at the top, is still read, in the order written."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongodb_uri)
    database = client[f"outbox_{uuid.uuid4().hex[:8]}"]
    outbox = MongoOutbox(database=database)
    transactions = Transactions(client=client)
    now = dt.datetime.now(dt.UTC)

    def event(text: str) -> events_pb2.EventEnvelope:
        message = c.Message(content=c.Content(text=c.TextContent(text=text)))
        return envelope(
            tenant_id="acme",
            actor_id="tester",
            conversation_id="conv-1",
            now=now,
            message_received=events_pb2.MessageReceived(message=message),
        )

    try:
        await create_indexes(database)
        earlier = event("written by the earlier version")
        await database["outbox"].insert_one(
            {
                "_id": earlier.event_id,
                "position": ObjectId(),
                "topic": topic_for(earlier),
                "key": record_key(earlier),
                "payload": earlier.SerializeToString(),
                "create_time": now,
            }
        )
        together = [event(f"together {i}") for i in range(5)]
        await transactions.run(lambda tx: outbox.add(together, now=now, tx=tx))
        # A payload limit of two events' size: five large events take three documents.
        large = [event(f"large {i} " + "x" * 1000) for i in range(5)]
        monkeypatch.setattr(outbox_module, "MAX_DOCUMENT_PAYLOAD", 2 * large[0].ByteSize())
        await transactions.run(lambda tx: outbox.add(large, now=now, tx=tx))

        documents = await outbox.pending(10)
        assert [len(records(d)) for d in documents] == [1, 5, 2, 2, 1]
        assert [d["_id"] for d in documents] == [
            e.event_id for e in (earlier, together[0], large[0], large[2], large[4])
        ]
        waiting = [r for d in documents for r in records(d)]
        assert [r.event_id for r in waiting] == [e.event_id for e in (earlier, *together, *large)]
        assert [events_pb2.EventEnvelope.FromString(r.payload) for r in waiting] == [
            earlier,
            *together,
            *large,
        ]
        assert {(r.topic, r.key) for r in waiting} == {("chat.message.received.v1", b"acme:conv-1")}
        assert await outbox.count_pending() == 11

        await outbox.remove([d["_id"] for d in documents[:2]])
        assert await outbox.count_pending() == 5
    finally:
        await client.drop_database(database.name)
        await client.close()
