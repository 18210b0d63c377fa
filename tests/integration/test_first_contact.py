"""First contact on the real servers: a new user's conversation is written by the transaction
that stores the first message (seen with command monitoring: which collections each committed
transaction wrote), and concurrent first messages of one user, through IngestEvents and
through SendMessage, share one conversation and store every message once, in order."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient, monitoring

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2
from chat.v1 import common_pb2 as c
from chat.v1 import ingest_service_pb2 as ingest
from devstack.stack import Endpoints
from server.repositories.sessions import expiry_index
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.ingest import Bridge, text_event
from tests.support.redis_clients import session_redis
from tests.support.servers import RunningServer, ServerStarter, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncMongoClient[dict[str, Any]]
Writes = frozenset[tuple[str, str]]


class CommittedTransactions(monitoring.CommandListener):
    """The writes (command, collection) of each transaction committed on one database, in
    the order the commits were sent."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._open: dict[tuple[bytes, int], set[tuple[str, str]]] = {}
        self.committed: list[Writes] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if "txnNumber" not in command or "lsid" not in command:
            return
        key = (bytes(command["lsid"]["id"]), int(command["txnNumber"]))
        with self._lock:
            if event.command_name == "commitTransaction":
                writes = self._open.pop(key, None)
                if writes:
                    self.committed.append(frozenset(writes))
            elif event.command_name == "abortTransaction":
                self._open.pop(key, None)
            elif event.database_name == self.database and event.command_name in (
                "insert",
                "update",
                "delete",
            ):
                self._open.setdefault(key, set()).add(
                    (event.command_name, str(command[event.command_name]))
                )

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def watched(
    start_server: ServerStarter, stack: Endpoints, tmp_path: Path
) -> AsyncIterator[tuple[RunningServer, CommittedTransactions]]:
    """A server on a database of its own, whose committed transactions are watched."""
    database = "first_contact_" + uuid.uuid4().hex[:10]
    listener = CommittedTransactions(database)
    monitoring.register(listener)  # before the server's client exists: it is taken then
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS),
        CHAT_MONGODB_DATABASE=database,
        **JWT_SETTINGS,
    )
    yield server, listener
    await start_server.stop_all()  # a drop beside a server's transaction stalls the store
    client: Mongo = AsyncMongoClient(stack.mongodb_uri)
    await client.drop_database(database)
    await client.close()


@pytest.fixture
async def server(start_server: StartServer, tmp_path: Path) -> RunningServer:
    return await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)


@pytest.fixture
async def mongo(stack: Endpoints) -> AsyncIterator[Mongo]:
    client: Mongo = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client
    await client.close()


async def test_a_first_send_is_one_transaction_with_its_conversation(
    watched: tuple[RunningServer, CommittedTransactions],
) -> None:
    server, transactions = watched
    async with grpc.aio.insecure_channel(server.target) as channel:
        response = await ChatClient(channel, "acme").send("hi", user_id="new-" + uuid.uuid4().hex)

    assert response.conversation.last_sequence == 2
    [only] = transactions.committed
    assert {
        ("insert", "conversations"),
        ("insert", "messages"),
        ("insert", "outbox"),
    } <= only


async def test_a_first_webhook_is_stored_with_its_conversation(
    watched: tuple[RunningServer, CommittedTransactions],
) -> None:
    server, transactions = watched
    async with grpc.aio.insecure_channel(server.target) as channel:
        [result] = await Bridge(channel, "acme").ingest(
            text_event("1555" + uuid.uuid4().hex[:7], "hello")
        )

    assert result.outcome == ingest.INGEST_OUTCOME_ACCEPTED
    # The first commit holds the conversation, the message, its events and its reply job;
    # the reply's transactions may follow.
    first, *_ = transactions.committed
    assert {
        ("insert", "conversations"),
        ("insert", "messages"),
        ("insert", "outbox"),
        ("insert", "reply_jobs"),
    } <= first
    assert sum(("insert", "conversations") in writes for writes in transactions.committed) == 1


async def test_concurrent_first_webhooks_of_one_user_start_one_conversation(
    server: RunningServer, mongo: Mongo
) -> None:
    user = "1555" + uuid.uuid4().hex[:7]
    async with grpc.aio.insecure_channel(server.target) as channel:
        bridge = Bridge(channel, "acme")
        calls = await asyncio.gather(
            *(bridge.ingest(text_event(user, f"{n}a"), text_event(user, f"{n}b")) for n in range(8))
        )

    conversations = mongo["chat"]["conversations"]
    assert await conversations.count_documents({"tenant_id": "acme", "user_id": user}) == 1
    [conversation] = await conversations.find({"tenant_id": "acme", "user_id": user}).to_list()
    messages = mongo["chat"]["messages"]
    for results in calls:
        assert [r.outcome for r in results] == [ingest.INGEST_OUTCOME_ACCEPTED] * 2
        stored = [await messages.find_one({"_id": r.message_id}) for r in results]
        assert all(m is not None and m["conversation_id"] == conversation["_id"] for m in stored)
        first, second = (m["sequence"] for m in stored if m is not None)
        assert second == first + 1  # one call's messages together, in their order
    ids = [r.message_id for results in calls for r in results]
    assert await messages.count_documents({"tenant_id": "acme", "_id": {"$in": ids}}) == 16
    assert conversation["inbound_message_count"] == 16


async def test_concurrent_first_sends_of_one_user_start_one_conversation(
    server: RunningServer, mongo: Mongo
) -> None:
    user = "first-" + uuid.uuid4().hex[:8]
    async with grpc.aio.insecure_channel(server.target) as channel:
        client = ChatClient(channel, "acme")
        responses = await asyncio.gather(*(client.send(f"m{n}", user_id=user) for n in range(12)))
        history = await client.call(
            "ListMessages",
            chat.ListMessagesRequest(conversation_id=responses[0].conversation.id, page_size=100),
        )

    conversations = mongo["chat"]["conversations"]
    assert await conversations.count_documents({"tenant_id": "acme", "user_id": user}) == 1
    assert len({r.conversation.id for r in responses}) == 1
    assert len({r.session.id for r in responses}) == 1
    inbound = [m for m in history.messages if m.direction == c.MESSAGE_DIRECTION_INBOUND]
    assert sorted(m.content.text.text for m in inbound) == sorted(f"m{n}" for n in range(12))
    assert [m.sequence for m in history.messages] == list(range(1, 25))
    for response in responses:  # each answer right after its own message
        assert [r.sequence for r in response.replies] == [response.message.sequence + 1]


async def test_first_sends_racing_on_two_servers_share_one_conversation_and_session(
    start_server: StartServer, stack: Endpoints, tmp_path: Path, mongo: Mongo
) -> None:
    """Two servers do not wait for each other's starts: the unique index refuses the later
    one, its message goes to the winner's conversation, and its unused session is removed."""
    servers = [
        await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
        for _ in range(2)
    ]
    user = "two-" + uuid.uuid4().hex[:8]
    async with (
        grpc.aio.insecure_channel(servers[0].target) as one,
        grpc.aio.insecure_channel(servers[1].target) as two,
    ):
        clients = [ChatClient(one, "acme"), ChatClient(two, "acme")]
        responses = await asyncio.gather(
            *(clients[n % 2].send(f"m{n}", user_id=user) for n in range(8))
        )

    [conversation] = (
        await mongo["chat"]["conversations"].find({"tenant_id": "acme", "user_id": user}).to_list()
    )
    assert {r.conversation.id for r in responses} == {conversation["_id"]}
    assert len({r.session.id for r in responses}) == 1
    assert conversation["message_count"] == 16
    redis = session_redis(stack)
    try:
        members = await redis.zrange(expiry_index("acme"), 0, -1)
        sessions = [
            common_pb2.Session.FromString(raw)
            for member in members
            if (
                raw := await redis.get(f"chat:{{acme}}:session:{member.decode().split(chr(31))[1]}")
            )
        ]
    finally:
        await redis.aclose()
    assert [s.id for s in sessions if s.user_id == user] == [responses[0].session.id]
