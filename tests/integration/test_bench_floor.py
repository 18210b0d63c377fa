"""The database floor of `make bench` (bench/floor.py) keeps in step with the service: the
service's writes for one SendMessage exchange and for one first-contact webhook through to its
delivered reply, recorded with command monitoring on a real server, are the floor's writes
for the same exchanges: the same collections and write commands (those the floor declares),
the same fields, as many documents of about the same size, the same events, and the same
indexes on every collection written."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import grpc
import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from bench.floor import SEND_MESSAGE_WRITES, WEBHOOK_WRITES, SendMessageFloor, prepare
from bench.floor_webhooks import WebhookFloor
from chat.v1 import chat_service_pb2, chat_service_pb2_grpc, common_pb2
from devstack.stack import Endpoints
from devstack.tokens import mint_dev_token
from server.repositories.mongo import LOCKS, OUTBOX
from tests.support.bridge import WHATSAPP_SECRET
from tests.support.chat_client import JWT_SETTINGS, SECRET
from tests.support.servers import ServerStarter, tenants_file
from tests.support.stand_ins import DeliveryStack, Mongo, reply_of, sent, whatsapp_text
from tests.support.waiting import eventually

_WRITES = {"insert", "update", "delete", "findAndModify"}
#: The relay's lease, renewed by time, not by exchange: a window long enough records it.
_NOT_PER_EXCHANGE = {LOCKS}


@dataclass
class Writes:
    """What one database was sent in write commands."""

    #: (collection, command)
    commands: set[tuple[str, str]] = field(default_factory=set)
    #: (collection, command) -> the field sets of its documents or updates
    fields: dict[tuple[str, str], set[frozenset[str]]] = field(default_factory=dict)
    #: collection -> the BSON sizes of the documents inserted
    sizes: dict[str, list[int]] = field(default_factory=dict)
    #: the topics of the events written to the outbox, and their payloads' bytes
    topics: Counter[str] = field(default_factory=Counter)
    payload_bytes: int = 0

    def add(self, name: str, command: Mapping[str, Any]) -> None:
        collection = command[name]
        if collection in _NOT_PER_EXCHANGE:
            return
        self.commands.add((collection, name))
        shapes = self.fields.setdefault((collection, name), set())
        if name == "insert":
            for document in command["documents"]:
                shapes.add(frozenset(document))
                self.sizes.setdefault(collection, []).append(len(bson.encode(document)))
                for event in document.get("events", []) if collection == OUTBOX else []:
                    self.topics[event["topic"]] += 1
                    self.payload_bytes += len(event["payload"])
        elif name == "update":
            for statement in command["updates"]:
                shapes.add(
                    frozenset(
                        f"{operator} {path}"
                        for operator, paths in statement["u"].items()
                        for path in paths
                    )
                )


class WriteRecorder(monitoring.CommandListener):
    """Records the write commands sent to the databases it is told to watch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, Writes] = {}

    def watch(self, database: str) -> Writes:
        with self._lock:
            return self._watched.setdefault(database, Writes())

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name not in _WRITES:
            return
        with self._lock:
            writes = self._watched.get(event.database_name)
            if writes is not None:
                writes.add(event.command_name, event.command)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture(scope="session")
def recorder() -> WriteRecorder:
    """The recorder, registered once (pymongo's listeners are process-wide) and before the
    tests' clients and servers are made: a listener sees the clients created after it."""
    recorder = WriteRecorder()
    monitoring.register(recorder)
    return recorder


@pytest.fixture
async def floor_database(stack: Endpoints) -> AsyncIterator[AsyncDatabase[dict[str, Any]]]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    database = client[f"floor_{uuid.uuid4().hex[:12]}"]
    yield database
    await client.drop_database(database.name)
    await client.close()


def _same_writes(service: Writes, floor: Writes, declared: Mapping[str, frozenset[str]]) -> None:
    wanted = {(collection, name) for collection, names in declared.items() for name in names}
    assert service.commands == wanted, "the service's writes are not the floor's declared ones"
    assert floor.commands == wanted, "the floor does not write what it declares"
    for key in sorted(wanted):
        assert floor.fields[key] == service.fields[key], f"{key}: other fields"
    for collection, sizes in service.sizes.items():
        if collection == OUTBOX:
            continue  # documents per transaction: their events are compared below
        ours = floor.sizes[collection]
        assert len(ours) == len(sizes), f"{collection}: {len(ours)} documents, not {len(sizes)}"
        assert 0.8 <= sum(ours) / sum(sizes) <= 1.25, f"{collection}: {ours} bytes, not {sizes}"
    assert floor.topics == service.topics
    assert 0.8 <= floor.payload_bytes / service.payload_bytes <= 1.25


async def _indexes(database: AsyncDatabase[dict[str, Any]], collection: str) -> set[str]:
    return {
        repr(sorted((k, v) for k, v in index.items() if k not in ("v", "ns")))
        async for index in await database[collection].list_indexes()
    }


async def _same_indexes(
    service: AsyncDatabase[dict[str, Any]],
    floor: AsyncDatabase[dict[str, Any]],
    collections: Iterator[str],
) -> None:
    for collection in collections:
        ours = await _indexes(floor, collection)
        assert ours == await _indexes(service, collection), f"{collection}: other indexes"


async def _outbox_emptied(database: AsyncDatabase[dict[str, Any]]) -> None:
    async def empty() -> bool:
        return await database[OUTBOX].count_documents({}) == 0

    await eventually(empty, "the relay to empty the outbox")


async def test_a_send_message_exchange_writes_what_the_floor_writes(
    recorder: WriteRecorder,
    start_server: ServerStarter,
    stack: Endpoints,
    floor_database: AsyncDatabase[dict[str, Any]],
    tmp_path: Path,
) -> None:
    name = f"floor_service_{uuid.uuid4().hex[:12]}"
    service = recorder.watch(name)
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, "tenants:\n  - id: bench\n"),
        CHAT_MONGODB_DATABASE=name,
        **JWT_SETTINGS,
    )
    token = mint_dev_token(secret=SECRET, tenant_id="bench")
    # The bench's request (bench.common.send_message_call), twice from one user: a first
    # message, which starts the conversation, and the next.
    request = chat_service_pb2.SendMessageRequest(
        user_id="user-1",
        channel=common_pb2.CHANNEL_TYPE_WEB,
        content=common_pb2.Content(text=common_pb2.TextContent(text="hello there")),
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        for _ in range(2):
            await stub.SendMessage(
                request, metadata=(("authorization", f"Bearer {token}"),), timeout=10
            )
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    try:
        await _outbox_emptied(client[name])
        await start_server.stop_all()

        floor = recorder.watch(floor_database.name)
        await prepare(floor_database)
        send = SendMessageFloor(database=floor_database, max_batch=64)
        for _ in range(2):
            await send.send("user-1")
        await send.settled()

        _same_writes(service, floor, SEND_MESSAGE_WRITES)
        await _same_indexes(client[name], floor_database, iter(SEND_MESSAGE_WRITES))
    finally:
        await client.drop_database(name)
        await client.close()


async def test_a_first_contact_webhook_writes_what_the_floor_writes(
    recorder: WriteRecorder,
    delivery_stack: DeliveryStack,
    delivery_mongo: Mongo,
    database_name: str,
    start_server: ServerStarter,
    floor_database: AsyncDatabase[dict[str, Any]],
) -> None:
    service = recorder.watch(database_name)
    async with delivery_stack() as (_, bridge):
        payload, wamid = whatsapp_text("1650555" + str(uuid.uuid4().int)[:4], "hello there")
        assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
        reply = await reply_of(delivery_mongo, wamid)
        await sent(delivery_mongo, reply.id, what="the reply to be sent")
        await _outbox_emptied(delivery_mongo)
        await start_server.stop_all()

    floor = recorder.watch(floor_database.name)
    await prepare(floor_database)
    webhooks = WebhookFloor(
        database=floor_database, ingest_batch=64, reply_batch=8, delivery_batch=16
    )
    await webhooks.webhook("16505550000")
    await webhooks.drained()
    assert webhooks.delivered == 1

    _same_writes(service, floor, WEBHOOK_WRITES)
    await _same_indexes(delivery_mongo, floor_database, iter(WEBHOOK_WRITES))
