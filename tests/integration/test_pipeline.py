"""SendMessage and the conversation RPCs, end to end on the real servers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import pytest
from pymongo import AsyncMongoClient

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.error_details import violations
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]


@pytest.fixture
async def server(start_server: StartServer, tmp_path: Path) -> RunningServer:
    return await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)


@pytest.fixture
async def acme(server: RunningServer) -> AsyncIterator[ChatClient]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield ChatClient(channel, "acme")


@pytest.fixture
async def globex(server: RunningServer) -> AsyncIterator[ChatClient]:
    async with grpc.aio.insecure_channel(server.target) as channel:
        yield ChatClient(channel, "globex")


async def test_a_text_message_is_stored_processed_and_answered(acme: ChatClient) -> None:
    reply = await acme.send("  Hello!\x00  Mail me at Ana@Example.com ", user_id="u1")
    message = reply.message
    assert message.content.text.text == "Hello! Mail me at Ana@Example.com"
    assert message.type == c.MESSAGE_TYPE_TEXT
    assert message.direction == c.MESSAGE_DIRECTION_INBOUND
    assert message.sequence == 1
    assert [e.normalized for e in message.entities] == ["ana@example.com"]
    [answer] = reply.replies
    assert answer.sequence == 2
    assert answer.direction == c.MESSAGE_DIRECTION_OUTBOUND
    assert answer.delivery_status == c.DELIVERY_STATUS_SENT
    assert answer.reply_to_message_id == message.id
    assert answer.content.text.text == "Hello! How can I help you today?"
    conversation = reply.conversation
    assert (conversation.message_count, conversation.last_sequence) == (2, 2)
    assert conversation.status == c.CONVERSATION_STATUS_ACTIVE
    assert reply.session.conversation_id == conversation.id
    assert reply.session.context["greeted"] is True

    again = await acme.send("hi", user_id="u1")
    assert again.conversation.id == conversation.id
    assert (again.message.sequence, again.replies[0].sequence) == (3, 4)
    assert again.replies[0].content.text.text == "Hello again!"  # the session remembered
    assert again.session.id == reply.session.id

    fetched = await acme.call(
        "GetConversation", chat.GetConversationRequest(conversation_id=conversation.id)
    )
    assert fetched.conversation.message_count == 4
    history = await acme.call(
        "ListMessages", chat.ListMessagesRequest(conversation_id=conversation.id)
    )
    assert [m.sequence for m in history.messages] == [1, 2, 3, 4]
    assert history.messages[0] == message
    assert history.next_page_token == ""


async def test_location_and_interactive_replies(acme: ChatClient) -> None:
    location = await acme.send(
        content=c.Content(location=c.LocationContent(latitude=52.37, longitude=4.89, name="Dam"))
    )
    assert location.message.type == c.MESSAGE_TYPE_LOCATION
    assert location.replies[0].content.text.text == "Thanks, I have Dam."
    choice = await acme.send(
        content=c.Content(
            interactive_reply=c.InteractiveReply(selected_id="billing", title="Billing")
        )
    )
    assert choice.message.type == c.MESSAGE_TYPE_INTERACTIVE_REPLY
    menu = await acme.send("help")
    assert menu.replies[0].type == c.MESSAGE_TYPE_INTERACTIVE


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"content": c.Content(text=c.TextContent(text=" \u200b "))}, "content.text.text"),
        (
            {"content": c.Content(location=c.LocationContent(latitude=123))},
            "content.location.latitude",
        ),
        ({"content": c.Content()}, "content"),
        ({"user_id": ""}, "user_id"),
        ({"channel": c.CHANNEL_TYPE_UNSPECIFIED}, "channel"),
        ({"channel": c.CHANNEL_TYPE_WHATSAPP}, "channel_conversation_id"),
        ({"request_id": "r" * 129}, "request_id"),
        ({"user_id": "u" * 641}, "user_id"),
        ({"metadata": {"k" * 65: "v"}}, f"metadata[{'k' * 64}]"),
        ({"reply_to_message_id": "m" * 129}, "reply_to_message_id"),
        ({"content": c.Content(text=c.TextContent(text="x" * 5_000_000))}, "content.text.text"),
        (
            {
                "content": c.Content(
                    interactive_reply=c.InteractiveReply(selected_id="a", title="t" * 1025)
                )
            },
            "content.interactive_reply.title",
        ),
    ],
)
async def test_bad_input_is_invalid_argument_and_stores_nothing(
    acme: ChatClient, fields: dict[str, object], field: str
) -> None:
    user = "bad-" + uuid.uuid4().hex[:8]
    fields.setdefault("user_id", user)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await acme.send(**fields)  # type: ignore[arg-type]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)
    listed = await acme.call("ListConversations", chat.ListConversationsRequest(user_id=user))
    assert list(listed.conversations) == []


async def test_a_retry_with_the_same_request_id_stores_nothing_twice(acme: ChatClient) -> None:
    user = "idem-" + uuid.uuid4().hex[:8]
    first = await acme.send("hello", user_id=user, request_id="req-1")
    second = await acme.send("hello", user_id=user, request_id="req-1")
    assert second == first
    state = await acme.call(
        "GetConversation", chat.GetConversationRequest(conversation_id=first.conversation.id)
    )
    assert state.conversation.message_count == 2


async def test_racing_retries_store_once(acme: ChatClient) -> None:
    user = "race-" + uuid.uuid4().hex[:8]
    await acme.send("first", user_id=user)  # the conversation exists; the race is on the message
    results = await asyncio.gather(
        *(acme.send("hello", user_id=user, request_id="same") for _ in range(6))
    )
    assert all(result == results[0] for result in results)
    state = await acme.call(
        "GetConversation", chat.GetConversationRequest(conversation_id=results[0].conversation.id)
    )
    assert state.conversation.message_count == 4


async def test_concurrent_first_messages_share_one_conversation(acme: ChatClient) -> None:
    user = "first-" + uuid.uuid4().hex[:8]
    results = await asyncio.gather(*(acme.send(f"m{i}", user_id=user) for i in range(5)))
    assert len({r.conversation.id for r in results}) == 1
    assert len({r.session.id for r in results}) == 1


async def test_sequences_are_strictly_increasing_under_concurrency(acme: ChatClient) -> None:
    user = "seq-" + uuid.uuid4().hex[:8]
    first = await acme.send("start", user_id=user)
    await asyncio.gather(*(acme.send(f"m{i}", user_id=user) for i in range(15)))
    history = await acme.call(
        "ListMessages",
        chat.ListMessagesRequest(conversation_id=first.conversation.id, page_size=500),
    )
    assert [m.sequence for m in history.messages] == list(range(1, 33))


async def test_pages_neither_skip_nor_repeat_under_concurrent_inserts(acme: ChatClient) -> None:
    user = "page-" + uuid.uuid4().hex[:8]
    first = await acme.send("start", user_id=user)
    for i in range(9):
        await acme.send(f"m{i}", user_id=user)
    conversation_id = first.conversation.id
    seen: list[int] = []
    token = ""
    writers = asyncio.gather(*(acme.send(f"late{i}", user_id=user) for i in range(8)))
    while True:
        page = await acme.call(
            "ListMessages",
            chat.ListMessagesRequest(
                conversation_id=conversation_id, page_size=3, page_token=token
            ),
        )
        seen += [m.sequence for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    await writers
    assert seen == list(range(1, len(seen) + 1))
    assert len(seen) >= 20

    newest = await acme.call(
        "ListMessages",
        chat.ListMessagesRequest(
            conversation_id=conversation_id, page_size=5, order=chat.MESSAGE_ORDER_NEWEST_FIRST
        ),
    )
    assert [m.sequence for m in newest.messages] == [36, 35, 34, 33, 32]


async def test_close_then_a_new_conversation(acme: ChatClient) -> None:
    user = "close-" + uuid.uuid4().hex[:8]
    first = await acme.send("hello", user_id=user)
    closed = await acme.call(
        "CloseConversation",
        chat.CloseConversationRequest(conversation_id=first.conversation.id, reason="resolved"),
    )
    assert closed.conversation.status == c.CONVERSATION_STATUS_CLOSED
    assert closed.conversation.close_reason == "resolved"
    assert closed.conversation.HasField("close_time")
    again = await acme.call(
        "CloseConversation", chat.CloseConversationRequest(conversation_id=first.conversation.id)
    )
    assert again.conversation == closed.conversation  # closing twice changes nothing
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await acme.send("more", user_id=user, conversation_id=first.conversation.id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    fresh = await acme.send("more", user_id=user)
    assert fresh.conversation.id != first.conversation.id
    assert fresh.message.sequence == 1
    assert fresh.session.id != first.session.id


async def test_a_conversation_closed_by_another_server_gets_no_more_messages(
    start_server: StartServer, tmp_path: Path, acme: ChatClient
) -> None:
    """The first server remembers the user's active conversation; a second one closes it.
    The first server's next message of that user starts a new conversation."""
    other = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    user = "elsewhere-" + uuid.uuid4().hex[:8]
    first = await acme.send("hello", user_id=user)
    second = await acme.send("again", user_id=user)
    assert second.conversation.id == first.conversation.id
    async with grpc.aio.insecure_channel(other.target) as channel:
        await ChatClient(channel, "acme").call(
            "CloseConversation",
            chat.CloseConversationRequest(conversation_id=first.conversation.id),
        )
    fresh = await acme.send("after", user_id=user)
    assert fresh.conversation.id != first.conversation.id
    assert fresh.message.sequence == 1
    assert fresh.session.id != first.session.id


async def test_a_conversation_closed_while_its_session_lives_gets_no_more_messages(
    stack: Endpoints, acme: ChatClient
) -> None:
    """A conversation closed, and its session not ended (the closing process stopped in
    between): the user's next message goes to a new conversation, and the closed one is
    left as it was."""
    user = "half-closed-" + uuid.uuid4().hex[:8]
    first = await acme.send("hello", user_id=user)
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongodb_uri)
    try:
        database = client["chat"]
        await database["conversations"].update_one(
            {"_id": first.conversation.id}, {"$set": {"status": "CLOSED"}}
        )
        fresh = await acme.send("after", user_id=user)
        assert fresh.conversation.id != first.conversation.id
        assert fresh.message.sequence == 1
        assert fresh.session.conversation_id == fresh.conversation.id
        left = await database["messages"].count_documents(
            {"conversation_id": first.conversation.id}
        )
        assert left == 2  # the first message and its reply; nothing was added
        again = await acme.send("and again", user_id=user)
        assert again.conversation.id == fresh.conversation.id
        assert again.message.sequence == 3
    finally:
        await client.close()


async def test_list_conversations_filters_and_pages(acme: ChatClient) -> None:
    user = "list-" + uuid.uuid4().hex[:8]
    ids = []
    for channel in (c.CHANNEL_TYPE_WEB, c.CHANNEL_TYPE_WHATSAPP, c.CHANNEL_TYPE_SLACK):
        sent = await acme.send("hi", user_id=user, channel=channel, channel_conversation_id="x")
        ids.append(sent.conversation.id)
    await acme.call("CloseConversation", chat.CloseConversationRequest(conversation_id=ids[0]))
    collected: list[str] = []
    token = ""
    while True:
        page = await acme.call(
            "ListConversations",
            chat.ListConversationsRequest(user_id=user, page_size=2, page_token=token),
        )
        collected += [conversation.id for conversation in page.conversations]
        token = page.next_page_token
        if not token:
            break
    assert collected == list(reversed(ids))  # newest first
    active = await acme.call(
        "ListConversations",
        chat.ListConversationsRequest(user_id=user, status=c.CONVERSATION_STATUS_ACTIVE),
    )
    assert {conversation.id for conversation in active.conversations} == set(ids[1:])
    slack = await acme.call(
        "ListConversations",
        chat.ListConversationsRequest(user_id=user, channel=c.CHANNEL_TYPE_SLACK),
    )
    assert [conversation.id for conversation in slack.conversations] == [ids[2]]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await acme.call(
            "ListConversations",
            chat.ListConversationsRequest(user_id="other", page_token=token or "e30"),
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_another_tenants_conversation_is_not_found(
    acme: ChatClient, globex: ChatClient
) -> None:
    mine = await acme.send("secret plans", user_id="shared-user")
    conversation_id = mine.conversation.id
    requests = [
        ("GetConversation", chat.GetConversationRequest(conversation_id=conversation_id)),
        ("ListMessages", chat.ListMessagesRequest(conversation_id=conversation_id)),
        ("CloseConversation", chat.CloseConversationRequest(conversation_id=conversation_id)),
    ]
    for method, request in requests:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await globex.call(method, request)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND, method
        assert conversation_id not in (caught.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await globex.send("hi", user_id="shared-user", conversation_id=conversation_id)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    theirs = await globex.call("ListConversations", chat.ListConversationsRequest())
    assert conversation_id not in {conversation.id for conversation in theirs.conversations}
    still = await acme.call(
        "GetConversation", chat.GetConversationRequest(conversation_id=conversation_id)
    )
    assert still.conversation.status == c.CONVERSATION_STATUS_ACTIVE


async def test_the_history_query_uses_its_index(stack: Endpoints, acme: ChatClient) -> None:
    from server.repositories.messages import MongoMessageRepository  # noqa: PLC0415

    sent = await acme.send("index me")
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(stack.mongodb_uri)
    try:
        repository = MongoMessageRepository(database=client["chat"])
        plan = str(await repository.explain_history("acme", sent.conversation.id))
    finally:
        await client.close()
    assert "IXSCAN" in plan
    assert "'indexName': 'history'" in plan


async def test_crafted_tokens_and_unknown_enums_are_invalid_argument(acme: ChatClient) -> None:
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    sent = await acme.send("hello")
    query = {"rpc": "ListMessages", "conversation": sent.conversation.id, "newest_first": False}
    for cursor in ({"seq": "x"}, {}, {"seq": 10**30}, {"seq": -1}):
        raw = json.dumps({"q": query, "c": cursor}).encode()
        token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await acme.call(
                "ListMessages",
                chat.ListMessagesRequest(conversation_id=sent.conversation.id, page_token=token),
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, cursor
    nested = base64.urlsafe_b64encode(b"[" * 1500 + b"]" * 1500).decode()
    for request in (
        chat.ListMessagesRequest(conversation_id=sent.conversation.id, page_token=nested),
        chat.ListMessagesRequest(conversation_id=sent.conversation.id, page_token="t" * 5000),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await acme.call("ListMessages", request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for listing in (
        chat.ListConversationsRequest(status=7),  # type: ignore[arg-type]
        chat.ListConversationsRequest(channel=42),  # type: ignore[arg-type]
        chat.ListConversationsRequest(user_id="u" * 641),  # platform addresses: 640
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await acme.call("ListConversations", listing)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await acme.call("GetConversation", chat.GetConversationRequest(conversation_id="x" * 129))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_concurrent_sends_share_transactions_and_keep_their_numbers(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = await start_server(CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS), **JWT_SETTINGS)
    async with grpc.aio.insecure_channel(server.target) as channel:
        client = ChatClient(channel, "acme")
        users = [f"batch-{uuid.uuid4().hex[:8]}" for _ in range(24)]
        firsts = await asyncio.gather(*(client.send("one", user_id=u) for u in users))
        seconds = await asyncio.gather(
            *(client.send(f"two {u}", user_id=u) for u in users for _ in range(2))
        )
        for first in firsts:
            history = await client.call(
                "ListMessages", chat.ListMessagesRequest(conversation_id=first.conversation.id)
            )
            assert [m.sequence for m in history.messages] == list(range(1, 7))
            state = await client.call(
                "GetConversation",
                chat.GetConversationRequest(conversation_id=first.conversation.id),
            )
            assert state.conversation.message_count == 6
            assert state.conversation.last_sequence == 6
        # Each answer carries its own message, numbered within its conversation.
        assert all(r.message.content.text.text.startswith("two ") for r in seconds)
        assert all(r.message.sequence in (3, 5) for r in seconds)
    async with aiohttp.ClientSession() as http:
        metrics_url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
        async with http.get(metrics_url) as response:
            text = await response.text()
    count = float(_metric(text, 'chat_group_commit_batch_size_count{call="send_message"}'))
    total = float(_metric(text, 'chat_group_commit_batch_size_sum{call="send_message"}'))
    assert total == 24 + 48
    assert count < total  # some transactions held several exchanges


def _metric(text: str, name: str) -> str:
    return next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " "))
