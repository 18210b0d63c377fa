"""SessionService on the real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from pymongo import AsyncMongoClient

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from chat.v1 import session_service_pb2 as pb
from chat.v1 import session_service_pb2_grpc
from devstack.stack import Endpoints
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.kafka_events import published
from tests.support.redis_clients import session_redis
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]


class Sessions:
    def __init__(self, channel: grpc.aio.Channel, client: ChatClient) -> None:
        self.stub = session_service_pb2_grpc.SessionServiceStub(channel)
        self.metadata = client.metadata

    async def call(self, method: str, request: object) -> object:
        return await getattr(self.stub, method)(request, metadata=self.metadata, timeout=10)


@pytest.fixture
async def setup(
    start_server: StartServer, tmp_path: Path
) -> AsyncIterator[tuple[ChatClient, Sessions, Sessions]]:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        acme, globex = ChatClient(channel, "acme"), ChatClient(channel, "globex")
        yield acme, Sessions(channel, acme), Sessions(channel, globex)


@pytest.mark.redis
async def test_read_change_and_end_a_session(
    stack: Endpoints, setup: tuple[ChatClient, Sessions, Sessions]
) -> None:
    acme, sessions, other_tenant = setup
    sent = await acme.send("hello")
    session_id = sent.session.id
    got = await sessions.call("GetSession", pb.GetSessionRequest(session_id=session_id))
    assert got.session.status == c.SESSION_STATUS_ACTIVE  # type: ignore[attr-defined]
    assert got.session.context["greeted"] is True  # type: ignore[attr-defined]

    updates = struct_pb2.Struct()
    updates.update({"plan": "gold", "cart": {"items": 2}})
    changed = await sessions.call(
        "UpdateSessionContext",
        pb.UpdateSessionContextRequest(
            session_id=session_id, context=updates, remove_keys=["greeted"]
        ),
    )
    context = dict(changed.session.context)  # type: ignore[attr-defined]
    assert context["plan"] == "gold"
    assert "greeted" not in context
    # The responder sees the new context on the next message.
    again = await acme.send("hi", user_id=sent.conversation.user_id)
    assert again.replies[0].content.text.text == "Hello! How can I help you today?"

    for method, request in (
        ("GetSession", pb.GetSessionRequest(session_id=session_id)),
        ("EndSession", pb.EndSessionRequest(session_id=session_id)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await other_tenant.call(method, request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    ended = await sessions.call("EndSession", pb.EndSessionRequest(session_id=session_id))
    assert ended.session.status == c.SESSION_STATUS_ENDED  # type: ignore[attr-defined]
    assert ended.session.HasField("end_time")  # type: ignore[attr-defined]
    twice = await sessions.call("EndSession", pb.EndSessionRequest(session_id=session_id))
    assert twice.session == ended.session  # type: ignore[attr-defined]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions.call(
            "UpdateSessionContext",
            pb.UpdateSessionContextRequest(session_id=session_id, context=updates),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The next message starts a new session in the same conversation.
    after = await acme.send("back", user_id=sent.conversation.user_id)
    assert after.conversation.id == sent.conversation.id
    assert after.session.id != session_id

    ended_events = await published(
        stack.kafka_bootstrap, "chat.session.ended.v1", {sent.conversation.id}, at_least=1
    )
    assert len(ended_events) == 1  # exactly once, although EndSession was called twice


async def test_bad_session_requests(setup: tuple[ChatClient, Sessions, Sessions]) -> None:
    acme, sessions, _ = setup
    sent = await acme.send("hello")
    updates = struct_pb2.Struct()
    updates.update({"k": "v"})
    not_a_number = struct_pb2.Struct()
    not_a_number.update({"score": float("nan")})
    for request in (
        pb.UpdateSessionContextRequest(
            session_id=sent.session.id, context=updates, remove_keys=["k"]
        ),
        pb.UpdateSessionContextRequest(session_id=""),
        pb.UpdateSessionContextRequest(session_id=sent.session.id, context=not_a_number),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await sessions.call("UpdateSessionContext", request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sessions.call("GetSession", pb.GetSessionRequest(session_id="no-such-session"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    await acme.call(
        "CloseConversation", chat.CloseConversationRequest(conversation_id=sent.conversation.id)
    )
    closed = await sessions.call("GetSession", pb.GetSessionRequest(session_id=sent.session.id))
    assert closed.session.status == c.SESSION_STATUS_ENDED  # type: ignore[attr-defined]


async def test_a_stable_event_written_twice_is_one_event(stack: Endpoints) -> None:
    import datetime as dt  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from chat.v1 import events_pb2  # noqa: PLC0415
    from server.events.envelopes import stable_event_id  # noqa: PLC0415
    from server.repositories.mongo import Transactions  # noqa: PLC0415
    from server.repositories.outbox import MongoOutbox  # noqa: PLC0415
    from server.services.event_writer import EventWriter  # noqa: PLC0415

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongodb_uri)
    try:
        wakes: list[None] = []
        writer = EventWriter(
            outbox=MongoOutbox(database=client["chat"]),
            transactions=Transactions(client=client),
            on_events=lambda: wakes.append(None),
        )
        session = c.Session(id=uuid.uuid4().hex, conversation_id="conv-x")
        event_id = stable_event_id("acme", session.id, "ended")
        for _ in range(2):  # a retry, or two racing EndSession calls
            await writer.write(
                tenant_id="acme",
                actor_id="tester",
                conversation_id="conv-x",
                now=dt.datetime.now(dt.UTC),
                event_id=event_id,
                session_ended=events_pb2.SessionEnded(session=session),
            )
        assert await client["chat"]["outbox"].count_documents({"_id": event_id}) == 1
        assert len(wakes) == 1
        other = stable_event_id("acme", session.id, "started")
        assert other != event_id
    finally:
        await client.close()


@pytest.mark.redis
async def test_expired_sessions_end_exactly_once_across_servers(
    stack: Endpoints, start_server: StartServer, tmp_path: Path
) -> None:

    from chat.v1 import events_pb2  # noqa: PLC0415

    settings = {
        "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS),
        "CHAT_SESSION_TTL_SECONDS": "1",
        "CHAT_SESSION_SWEEP_SECONDS": "0.1",
        **JWT_SETTINGS,
    }
    first, second = await start_server(**settings), await start_server(**settings)  # both sweep
    async with grpc.aio.insecure_channel(first.target) as channel:
        acme = ChatClient(channel, "acme")
        sessions = Sessions(channel, acme)
        sent = [await acme.send(f"hello {i}") for i in range(4)]
        assert second.target != first.target

        events = await published(
            stack.kafka_bootstrap,
            "chat.session.ended.v1",
            {s.conversation.id for s in sent},
            at_least=4,
            settle=0.5,  # more sweeps by both servers: still one event each
        )
        assert sorted(e.conversation_id for e in events) == sorted(s.conversation.id for s in sent)
        assert {e.session_ended.reason for e in events} == {events_pb2.SESSION_END_REASON_EXPIRED}
        assert {e.actor_id for e in events} == {"system"}
        assert {e.session_ended.session.status for e in events} == {c.SESSION_STATUS_EXPIRED}

        expired = await sessions.call(
            "GetSession", pb.GetSessionRequest(session_id=sent[0].session.id)
        )
        assert expired.session.status == c.SESSION_STATUS_EXPIRED  # type: ignore[attr-defined]
        again = await acme.send("back again", user_id=sent[0].conversation.user_id)
        assert again.conversation.id == sent[0].conversation.id
        assert again.session.id != sent[0].session.id


@pytest.mark.redis
async def test_each_expired_session_is_claimed_by_exactly_one_sweeper(stack: Endpoints) -> None:
    import asyncio  # noqa: PLC0415
    import datetime as dt  # noqa: PLC0415
    import uuid  # noqa: PLC0415

    from server.repositories.sessions import RedisSessionStore  # noqa: PLC0415

    connection = session_redis(stack)
    try:
        stores = [RedisSessionStore(client=connection, ttl_seconds=1) for _ in range(2)]
        tenant = "claim-" + uuid.uuid4().hex[:8]
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30)
        created = set()
        for i in range(20):
            conversation = c.Conversation(id=f"conv-{i}", user_id=f"u{i}", channel=1)
            session, _ = await stores[0].get_or_create(tenant, conversation, now=past)
            created.add(session.id)
        now = dt.datetime.now(dt.UTC)
        # Both sweepers read the due list at the same moment; each session goes to one.
        first, second = await asyncio.gather(
            *(store.claim_expired(now=now, limit=1000) for store in stores)
        )
        mine = [sid for t, sid in first if t == tenant]
        theirs = [sid for t, sid in second if t == tenant]
        assert not set(mine) & set(theirs)
        assert sorted(mine + theirs) == sorted(created)
    finally:
        await connection.aclose()
