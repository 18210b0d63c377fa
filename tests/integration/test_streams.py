"""StreamConversationEvents, SendTypingIndicator and MarkRead on the real servers: fan-out
through Redis across two chat servers, reconnect without gap or duplicate, slow subscribers,
token expiry, a lost Redis connection, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import chat_service_pb2_grpc
from chat.v1 import common_pb2 as c
from devstack.processes import free_port
from devstack.stack import Endpoints
from devstack.tokens import mint_dev_token
from server.domain.errors import SubscriberTooSlowError
from server.repositories.conversation_cache import RedisConversationCache
from server.repositories.live import LiveHub, RedisLiveEvents
from server.repositories.redis_client import RedisClient
from server.repositories.sessions import RedisSessionStore
from tests.support.chat_client import JWT_SETTINGS, SECRET, TENANTS, ChatClient
from tests.support.redis_clients import session_redis
from tests.support.server_process import chat_server_process
from tests.support.servers import RunningServer, tenants_file
from tests.support.streams import WAIT, Event, Stream
from tests.support.tcp_proxy import TcpProxy

# Pub/sub fan-out is Redis-facing: CI runs these against the machine's Redis as well.
pytestmark = pytest.mark.redis

StartServer = Callable[..., Awaitable[RunningServer]]


def reason(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


@pytest.fixture
async def servers(start_server: StartServer, tmp_path: Path) -> tuple[RunningServer, RunningServer]:
    """Two chat servers on the same MongoDB and Redis, as two processes of one deployment."""
    tenants = tenants_file(tmp_path, TENANTS)
    first = await start_server(CHAT_TENANTS_FILE=tenants, **JWT_SETTINGS)
    second = await start_server(CHAT_TENANTS_FILE=tenants, **JWT_SETTINGS)
    return first, second


@pytest.fixture
async def clients(
    servers: tuple[RunningServer, RunningServer],
) -> AsyncIterator[tuple[ChatClient, ChatClient]]:
    async with (
        grpc.aio.insecure_channel(servers[0].target) as one,
        grpc.aio.insecure_channel(servers[1].target) as two,
    ):
        yield ChatClient(one, "acme"), ChatClient(two, "acme")


async def test_every_subscriber_on_either_server_sees_everything_in_order(
    servers: tuple[RunningServer, RunningServer], clients: tuple[ChatClient, ChatClient]
) -> None:
    a, b = clients
    first = await a.send("hello", user_id="stream-user")
    cid = first.conversation.id
    streams = [Stream(a, cid), Stream(a, cid), Stream(b, cid), Stream(b, cid)]
    await asyncio.gather(*(stream.live() for stream in streams))
    assert [server.server.stream_subscribers for server in servers] == [2, 2]

    sent = await a.send("second", user_id="stream-user")
    for stream in streams:
        got = await stream.messages(2)
        assert [m.id for m in got] == [sent.message.id, sent.replies[0].id]
        assert [m.sequence for m in got] == [3, 4]
        assert got[0].content.text.text == "second"

    await b.call(
        "SendTypingIndicator",
        chat.SendTypingIndicatorRequest(conversation_id=cid, participant_id="agent-7", typing=True),
    )
    for stream in streams:
        typing = (await stream.next()).typing
        assert (typing.participant_id, typing.typing) == ("agent-7", True)
        assert typing.direction == c.MESSAGE_DIRECTION_INBOUND

    read = await b.call("MarkRead", chat.MarkReadRequest(conversation_id=cid, up_to_sequence=4))
    assert read.updated_count == 2  # the two replies
    for stream in streams:
        updates = [(await stream.next()).delivery_status for _ in range(2)]
        assert [(u.sequence, u.status) for u in updates] == [
            (2, c.DELIVERY_STATUS_READ),
            (4, c.DELIVERY_STATUS_READ),
        ]

    await a.call("CloseConversation", chat.CloseConversationRequest(conversation_id=cid))
    for stream in streams:
        closed = (await stream.next()).closed
        assert closed.conversation.status == c.CONVERSATION_STATUS_CLOSED
        await stream.wait_ended()
        assert stream.error is None  # the stream ends cleanly after ConversationClosed
    assert servers[0].server.stream_subscribers == 0
    assert servers[1].server.stream_subscribers == 0


async def test_a_cancelled_stream_leaves_the_hub(
    servers: tuple[RunningServer, RunningServer], clients: tuple[ChatClient, ChatClient]
) -> None:
    a, _ = clients
    first = await a.send("hello", user_id="cancel-user")
    streams = [Stream(a, first.conversation.id) for _ in range(3)]
    await asyncio.gather(*(stream.live() for stream in streams))
    assert servers[0].server.stream_subscribers == 3
    streams[0].cancel()
    streams[1].cancel()
    deadline = time.monotonic() + WAIT
    while servers[0].server.stream_subscribers > 1:
        assert time.monotonic() < deadline, "a cancelled stream stayed subscribed"
        await asyncio.sleep(0.02)
    sent = await a.send("still here", user_id="cancel-user")
    assert [m.id for m in await streams[2].messages(1)] == [sent.message.id]
    streams[2].cancel()


async def test_a_reconnect_gets_what_it_missed_then_live_with_no_gap_or_duplicate(
    servers: tuple[RunningServer, RunningServer], clients: tuple[ChatClient, ChatClient]
) -> None:
    a, b = clients
    first = await a.send("one", user_id="reconnect-user")
    cid = first.conversation.id
    # Messages keep arriving, on both servers, while the subscriber is away and reconnects.
    writers_done = asyncio.Event()

    async def keep_sending() -> None:
        for n in range(12):
            await (a if n % 2 else b).send(f"message {n}", user_id="reconnect-user")
        writers_done.set()

    writer = asyncio.create_task(keep_sending())
    await asyncio.sleep(0.05)
    stream = Stream(b, cid, after_sequence=2)
    await writer
    total = 2 + 12 * 2
    got = await stream.messages(total - 2)
    assert [m.sequence for m in got] == list(range(3, total + 1))
    # Nothing more arrives: no duplicate of anything replayed or published late.
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(stream.events.get(), 0.5)
    stream.cancel()

    # after_sequence=0 replays the whole conversation; unset means live only.
    everything = Stream(a, cid, after_sequence=0)
    assert [m.sequence for m in await everything.messages(total)] == list(range(1, total + 1))
    live = Stream(a, cid)
    await live.live()
    sent = await b.send("live", user_id="reconnect-user")
    assert [m.sequence for m in await live.messages(2)] == [total + 1, total + 2]
    assert [m.id for m in await everything.messages(2)] == [sent.message.id, sent.replies[0].id]
    everything.cancel()
    live.cancel()


async def test_a_closed_conversation_replays_and_ends(
    clients: tuple[ChatClient, ChatClient],
) -> None:
    a, _ = clients
    first = await a.send("bye", user_id="closed-user")
    await a.call(
        "CloseConversation", chat.CloseConversationRequest(conversation_id=first.conversation.id)
    )
    stream = Stream(a, first.conversation.id, after_sequence=0)
    assert [m.sequence for m in await stream.messages(2)] == [1, 2]
    assert (await stream.next()).closed.conversation.id == first.conversation.id
    await stream.wait_ended()
    assert stream.error is None


async def test_mark_read_moves_forward_once_and_is_idempotent(
    clients: tuple[ChatClient, ChatClient],
) -> None:
    a, _ = clients
    first = await a.send("hi", user_id="read-user")
    await a.send("again", user_id="read-user")
    cid = first.conversation.id

    async def mark(up_to: int, request_id: str = "") -> int:
        request = chat.MarkReadRequest(
            conversation_id=cid, up_to_sequence=up_to, request_id=request_id
        )
        return int((await a.call("MarkRead", request)).updated_count)

    assert await mark(2, "read-1") == 1
    assert await mark(2, "read-1") == 1  # a retry answers as the first call did
    assert await mark(2) == 0  # already READ: not counted, not moved
    assert await mark(100) == 1
    history = await a.call("ListMessages", chat.ListMessagesRequest(conversation_id=cid))
    statuses = {m.sequence: m.delivery_status for m in history.messages}
    assert statuses == {
        1: c.DELIVERY_STATUS_UNSPECIFIED,  # inbound messages have no delivery status
        2: c.DELIVERY_STATUS_READ,
        3: c.DELIVERY_STATUS_UNSPECIFIED,
        4: c.DELIVERY_STATUS_READ,
    }


async def test_the_headers_come_once_the_stream_is_live_and_name_the_request(
    clients: tuple[ChatClient, ChatClient],
) -> None:
    a, _ = clients
    first = await a.send("x", user_id="headers-user")

    def stream(conversation_id: str, request_id: str, *, signed: bool = True) -> Any:
        metadata = (*(a.metadata if signed else ()), ("x-request-id", request_id))
        return a.stub.StreamConversationEvents(
            chat.StreamConversationEventsRequest(conversation_id=conversation_id),
            metadata=metadata,
        )

    live = stream(first.conversation.id, "req-live")
    headers = await asyncio.wait_for(live.initial_metadata(), WAIT)
    assert ("x-request-id", "req-live") in tuple(headers)
    sent = await a.send("after the headers", user_id="headers-user")
    event = await asyncio.wait_for(live.read(), WAIT)
    assert event.message.id == sent.message.id
    live.cancel()
    # Refused before it was live (by the service, or by an interceptor): the request id still
    # comes back in the headers.
    for refused, request_id, code in (
        (stream("no-such-conversation", "req-missing"), "req-missing", grpc.StatusCode.NOT_FOUND),
        (
            stream(first.conversation.id, "req-unsigned", signed=False),
            "req-unsigned",
            grpc.StatusCode.UNAUTHENTICATED,
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(refused.read(), WAIT)
        assert caught.value.code() == code
        assert ("x-request-id", request_id) in tuple(await refused.initial_metadata())


async def test_bad_requests_are_refused_plainly(clients: tuple[ChatClient, ChatClient]) -> None:
    a, _ = clients
    first = await a.send("x", user_id="bad-stream-user")
    cid = first.conversation.id
    missing = Stream(a, "no-such-conversation")
    await missing.wait_ended()
    assert missing.error is not None
    assert missing.error.code() == grpc.StatusCode.NOT_FOUND
    negative = Stream(a, cid, after_sequence=-1)
    await negative.wait_ended()
    assert negative.error is not None
    assert negative.error.code() == grpc.StatusCode.INVALID_ARGUMENT

    cases: list[tuple[str, Any, grpc.StatusCode]] = [
        ("MarkRead", chat.MarkReadRequest(conversation_id=cid), grpc.StatusCode.INVALID_ARGUMENT),
        (
            "SendTypingIndicator",
            chat.SendTypingIndicatorRequest(conversation_id=cid),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "SendTypingIndicator",
            chat.SendTypingIndicatorRequest(conversation_id=cid, participant_id="u", direction=9),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "MarkRead",
            chat.MarkReadRequest(conversation_id="nope", up_to_sequence=1),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for rpc, request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await a.call(rpc, request)
        assert caught.value.code() == code, (rpc, request)

    await a.call("CloseConversation", chat.CloseConversationRequest(conversation_id=cid))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await a.call(
            "SendTypingIndicator",
            chat.SendTypingIndicatorRequest(conversation_id=cid, participant_id="u"),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_slow_subscriber_is_dropped_without_slowing_the_others(stack: Endpoints) -> None:
    # At the hub, on real Redis: through gRPC, the transport's own buffers (megabytes, with
    # BDP probing) would have to fill first, which a test cannot do quickly or reliably.
    client = session_redis(stack)
    hub = LiveHub(client=client, queue_limit=20)
    publisher = RedisLiveEvents(
        client=client,
        cache=RedisConversationCache(client=client),
        sessions=RedisSessionStore(client=client, ttl_seconds=60),
    )
    try:
        slow = await hub.subscribe("acme", "slow-conversation")
        fast = await hub.subscribe("acme", "slow-conversation")
        received: list[str] = []
        for batch in range(10):
            await publisher.publish(
                "acme",
                "slow-conversation",
                [
                    Event(typing=chat.TypingIndicator(participant_id=f"p{batch * 10 + n}"))
                    for n in range(10)
                ],
            )
            for _ in range(10):  # the fast one keeps up; the slow one never reads
                event = await asyncio.wait_for(fast.next(), WAIT)
                assert event is not None
                received.append(event.typing.participant_id)
        assert received == [f"p{n}" for n in range(100)]
        with pytest.raises(SubscriberTooSlowError):
            await asyncio.wait_for(slow.next(), WAIT)
        await hub.unsubscribe(slow)
        await hub.unsubscribe(fast)
        assert hub.subscriber_count == 0
    finally:
        await hub.close()
        await client.aclose()


async def script_exists_calls(client: RedisClient) -> int:
    stats = await client.info("commandstats")
    return int(stats["cmdstat_script|exists"]["calls"])


async def test_a_publish_caches_the_newer_state_in_one_round_trip(stack: Endpoints) -> None:
    """The conversation's state and the session ride with the events (EVAL in the pipeline,
    no SCRIPT EXISTS first), and an older state does not replace a newer one."""
    client = session_redis(stack)
    cache = RedisConversationCache(client=client)
    sessions = RedisSessionStore(client=client, ttl_seconds=60)
    publisher = RedisLiveEvents(client=client, cache=cache, sessions=sessions)
    tenant = "cache-" + uuid.uuid4().hex[:8]
    newer = c.Conversation(id="c1", last_sequence=4, status=c.CONVERSATION_STATUS_ACTIVE)
    older = c.Conversation(id="c1", last_sequence=2, status=c.CONVERSATION_STATUS_ACTIVE)
    typing = [Event(typing=chat.TypingIndicator(participant_id="p"))]
    now = dt.datetime.now(dt.UTC)
    session = c.Session(id="s1", conversation_id="c1", status=c.SESSION_STATUS_ACTIVE)
    session.context.update({"greeted": True})
    sessions.touch(session, now=now)
    try:
        await client.script_exists("0" * 40)  # so the server reports the command's calls
        asked = await script_exists_calls(client)
        await publisher.publish(tenant, "c1", typing, conversation=newer, session=session)
        assert await script_exists_calls(client) == asked  # no SCRIPT EXISTS round trip
        assert await cache.get(tenant, "c1") == newer
        stored = await sessions.current(tenant, "c1", now=now)  # stored with them
        assert stored is not None
        assert stored.revision == session.revision + 1
        stored.revision = session.revision
        assert stored == session
        await publisher.publish(tenant, "c1", typing, conversation=older)
        assert await cache.get(tenant, "c1") == newer
    finally:
        await client.aclose()


async def test_a_stream_ends_when_its_token_expires(
    servers: tuple[RunningServer, RunningServer],
) -> None:
    async with grpc.aio.insecure_channel(servers[0].target) as channel:
        client = ChatClient(channel, "acme")
        first = await client.send("hi", user_id="expiry-user")
        token = mint_dev_token(secret=SECRET, tenant_id="acme", lifetime_seconds=2)
        call = chat_service_pb2_grpc.ChatServiceStub(channel).StreamConversationEvents(
            chat.StreamConversationEventsRequest(conversation_id=first.conversation.id),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason(caught.value) == "TOKEN_EXPIRED"
        assert time.monotonic() - started < WAIT


async def test_a_lost_redis_connection_is_caught_up_from_storage(
    stack: Endpoints, start_server: StartServer, tmp_path: Path
) -> None:
    if stack.redis_cluster:
        # The client would reach the proxied node through the proxy only for the slot map,
        # then every node at the address it announces; test_redis_cluster.py cuts a hub's
        # connection on a cluster instead.
        pytest.skip("a proxy in front of one server; on a cluster see test_redis_cluster.py")
    redis = urlsplit(stack.redis_url)
    assert redis.port is not None
    proxy = TcpProxy(listen_port=free_port(), target_port=redis.port)
    await proxy.start()
    proxied = urlunsplit(redis._replace(netloc=f"{redis.hostname}:{proxy.listen_port}"))
    tenants = tenants_file(tmp_path, TENANTS)
    watched = await start_server(CHAT_TENANTS_FILE=tenants, CHAT_REDIS_URL=proxied, **JWT_SETTINGS)
    other = await start_server(CHAT_TENANTS_FILE=tenants, **JWT_SETTINGS)
    try:
        async with (
            grpc.aio.insecure_channel(watched.target) as one,
            grpc.aio.insecure_channel(other.target) as two,
        ):
            reader, writer = ChatClient(one, "acme"), ChatClient(two, "acme")
            first = await writer.send("before", user_id="outage-user")
            stream = Stream(reader, first.conversation.id)
            await stream.live()
            await proxy.stop()  # the watching server loses Redis; the other one writes on
            sent = await writer.send("during the outage", user_id="outage-user")
            await asyncio.sleep(0.5)
            await proxy.start()
            got = await stream.messages(2)
            assert [m.id for m in got] == [sent.message.id, sent.replies[0].id]
            stream.cancel()
    finally:
        await proxy.stop()


async def test_shutdown_ends_streams_promptly(start_server: StartServer, tmp_path: Path) -> None:
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS),
        CHAT_SHUTDOWN_GRACE_SECONDS="30",
        **JWT_SETTINGS,
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        client = ChatClient(channel, "acme")
        first = await client.send("hi", user_id="shutdown-user")
        stream = Stream(client, first.conversation.id)
        await stream.live()
        started = time.monotonic()
        await server.server.stop()
        await stream.wait_ended()
        assert time.monotonic() - started < 10  # not the 30 s grace period
        assert stream.error is not None
        assert stream.error.code() == grpc.StatusCode.UNAVAILABLE
        with contextlib.suppress(Exception):
            stream.cancel()


async def test_subscribers_of_two_server_processes_see_everything_and_resume_without_gap(
    servers: tuple[RunningServer, RunningServer],
    clients: tuple[ChatClient, ChatClient],
    stack: Endpoints,
    tmp_path: Path,
) -> None:
    """Two subscribers on this process's server and two on a separate `chat-server` process:
    messages written on either reach all four in order; one that drops and resumes with the
    last sequence it saw gets what it missed, then live events, with no gap or duplicate."""
    a, _ = clients
    settings = {**JWT_SETTINGS, "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS)}
    async with (
        chat_server_process(stack, settings) as (_, target),
        grpc.aio.insecure_channel(target) as ch,
    ):
        other = ChatClient(ch, "acme")
        first = await a.send("hello", user_id="process-user")
        cid = first.conversation.id
        # after_sequence=0: the conversation so far from MongoDB, then live, so a stream that
        # subscribes late misses nothing.
        streams = [Stream(client, cid, after_sequence=0) for client in (a, a, other, other)]
        sent = [first]
        for n in range(4):
            sent.append(await (other if n % 2 else a).send(f"m{n}", user_id="process-user"))
        expected = [m.id for response in sent for m in (response.message, *response.replies)]
        for stream in streams:
            got = await stream.messages(len(expected))
            assert [m.id for m in got] == expected
            assert [m.sequence for m in got] == list(range(1, len(expected) + 1))

        dropped = streams.pop()
        dropped.cancel()
        last_seen = len(expected)
        while_away = [await a.send("while away", user_id="process-user")]
        resumed = Stream(other, cid, after_sequence=last_seen)
        later = [await a.send("after", user_id="process-user")]
        missed = [
            m.id for response in while_away + later for m in (response.message, *response.replies)
        ]
        got = await resumed.messages(len(missed))
        assert [m.id for m in got] == missed
        assert [m.sequence for m in got] == list(range(last_seen + 1, last_seen + 1 + len(missed)))
        with pytest.raises(TimeoutError):  # no duplicate of what was replayed
            await asyncio.wait_for(resumed.events.get(), 0.5)
        for stream in streams:
            assert [m.id for m in await stream.messages(len(missed))] == missed
        for stream in [*streams, resumed]:
            stream.cancel()
