"""First contact, over in-memory stores: a new user's conversation is started by the transaction
that stores the first message (with its ConversationStarted and SessionStarted events), for
ingest and for SendMessage; concurrent first messages of one user share one conversation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from chat.v1 import chat_service_pb2, common_pb2, ingest_service_pb2
from server.services.ingest import IngestService
from server.services.messages import MessageService
from server.services.responder import Reply
from tests.support.ports import (
    Clock,
    MemoryStores,
    ScriptedResponder,
    ingest_service,
    message_event,
    message_service,
)
from tests.support.waiting import eventually

TENANT = "acme"
WEB = common_pb2.CHANNEL_TYPE_WEB
WHATSAPP = common_pb2.CHANNEL_TYPE_WHATSAPP
ACCEPTED = ingest_service_pb2.INGEST_OUTCOME_ACCEPTED


@pytest.fixture
def ingest(stores: MemoryStores, clock: Clock) -> IngestService:
    return ingest_service(stores, clock)


@pytest.fixture
def responder() -> ScriptedResponder:
    return ScriptedResponder("Hello!")


@pytest.fixture
def messages(stores: MemoryStores, clock: Clock, responder: ScriptedResponder) -> MessageService:
    return message_service(stores, clock, responder)


def event(
    event_id: str, text: str = "hello", user: str = "15550001"
) -> ingest_service_pb2.InboundEvent:
    return message_event(event_id, text, user=user, chat=user)


def send_request(text: str, user: str = "u1") -> chat_service_pb2.SendMessageRequest:
    return chat_service_pb2.SendMessageRequest(
        user_id=user,
        channel=WEB,
        content=common_pb2.Content(text=common_pb2.TextContent(text=text)),
    )


def transactions_writing(stores: MemoryStores, what: str) -> set[int]:
    return {tx for tx, wrote in stores.db.writes if wrote == what}


async def test_a_first_webhook_is_one_transaction_with_its_conversation(
    ingest: IngestService, stores: MemoryStores, clock: Clock
) -> None:
    [result] = await ingest.ingest(TENANT, [event("ev-1")])

    assert result.outcome == ACCEPTED
    assert stores.transactions.commits == 1
    assert transactions_writing(stores, "conversations") == transactions_writing(stores, "messages")
    assert stores.outbox.kinds() == [
        "conversation_started",
        "session_started",
        "message_received",
        "conversation_updated",
    ]
    [conversation] = [c for _, c in stores.db.conversations.values()]
    [started, session_started, *_] = stores.outbox.envelopes
    assert started.conversation_started.conversation.id == conversation.id
    assert started.conversation_started.conversation.last_sequence == 0
    assert session_started.session_started.session.conversation_id == conversation.id
    session = await stores.sessions.current(TENANT, conversation.id, now=clock())
    assert session is not None
    assert session.id == session_started.session_started.session.id


async def test_a_first_send_is_one_transaction_with_its_conversation(
    messages: MessageService, stores: MemoryStores
) -> None:
    response = await messages.send(TENANT, "u1", send_request("hi"))

    assert stores.transactions.commits == 1
    assert response.conversation.last_sequence == 2
    assert stores.outbox.kinds()[:3] == [
        "conversation_started",
        "session_started",
        "message_received",
    ]
    assert stores.outbox.envelopes[1].session_started.session.id == response.session.id


async def test_a_new_session_of_a_stored_conversation_starts_before_the_message(
    messages: MessageService, stores: MemoryStores, clock: Clock
) -> None:
    first = await messages.send(TENANT, "u1", send_request("hi"))
    clock.advance(hours=3)  # the session expired; the conversation is still active
    commits = stores.transactions.commits

    second = await messages.send(TENANT, "u1", send_request("back again"))

    assert second.conversation.id == first.conversation.id
    assert second.session.id != first.session.id
    # SessionStarted in a transaction of its own, at once (only when a session is renewed),
    # then the message's.
    assert stores.transactions.commits == commits + 2
    assert stores.outbox.kinds()[-4:-2] == ["session_started", "message_received"]


class GatedResponder(ScriptedResponder):
    """Answers once ``gate`` is set (a slow bot), so a call can be caught composing."""

    def __init__(self, *texts: str) -> None:
        super().__init__(*texts)
        self.gate = asyncio.Event()
        self.composing = asyncio.Event()

    async def reply(self, **kwargs: Any) -> Reply:
        self.composing.set()
        await self.gate.wait()
        return await super().reply(**kwargs)


async def test_a_renewed_session_starts_before_any_message_of_it(
    stores: MemoryStores, clock: Clock
) -> None:
    """A returning user's message waits for a slow bot while the user's next one, finding
    the renewed session live, is stored first: the session's start still comes first."""
    bot = GatedResponder("Hello!")
    messages = message_service(stores, clock, bot)
    bot.gate.set()
    await messages.send(TENANT, "u1", send_request("hi"))
    clock.advance(hours=3)
    bot.gate.clear()
    bot.composing.clear()

    slow = asyncio.create_task(messages.send(TENANT, "u1", send_request("a")))
    await bot.composing.wait()
    bot.gate.set()  # the next message is answered at once, while "a" may still wait
    quick = await messages.send(TENANT, "u1", send_request("b"))
    slow_response = await slow

    assert quick.session.id == slow_response.session.id
    kinds = stores.outbox.kinds()
    renewed = [i for i, kind in enumerate(kinds) if kind == "session_started"][1]
    received_after = [
        e.message_received.message.content.text.text
        for e in stores.outbox.envelopes[renewed:]
        if e.WhichOneof("payload") == "message_received"
    ]
    assert sorted(received_after) == ["a", "b"]
    assert stores.outbox.envelopes[renewed].session_started.session.id == quick.session.id


async def test_a_first_send_cancelled_while_the_bot_composes_leaves_no_session(
    stores: MemoryStores, clock: Clock
) -> None:
    bot = GatedResponder("Hello!")
    messages = message_service(stores, clock, bot)
    call = asyncio.create_task(messages.send(TENANT, "u1", send_request("hi")))
    await bot.composing.wait()

    call.cancel()  # the client's deadline passed
    with pytest.raises(asyncio.CancelledError):
        await call

    async def removed() -> bool:
        return not stores.sessions.sessions

    await eventually(removed, "the session to be removed")

    assert stores.db.conversations == {}
    assert stores.outbox.envelopes == []
    assert stores.sessions.index == {}


async def test_a_failed_first_message_leaves_no_conversation_and_no_session(
    messages: MessageService, stores: MemoryStores
) -> None:
    stores.transactions.fail_next(RuntimeError("the primary stepped down"))

    with pytest.raises(RuntimeError):
        await messages.send(TENANT, "u1", send_request("hi"))

    assert stores.db.conversations == {}
    assert stores.outbox.envelopes == []
    assert stores.sessions.sessions == {}
    assert stores.sessions.index == {}


async def test_concurrent_first_sends_of_one_user_share_one_conversation(
    messages: MessageService, stores: MemoryStores, responder: ScriptedResponder
) -> None:
    responses = await asyncio.gather(
        *(messages.send(TENANT, "u1", send_request(f"m{i}")) for i in range(8))
    )

    # The others waited for the first's start: none started a second one, nor was answered
    # twice, nor failed a transaction.
    assert len(responder.asked) == 8
    assert stores.transactions.commits == 8

    [conversation] = [c for _, c in stores.db.conversations.values()]
    assert {r.conversation.id for r in responses} == {conversation.id}
    assert len({r.session.id for r in responses}) == 1
    stored = stores.messages.of(TENANT, conversation.id)
    assert [m.sequence for m in stored] == list(range(1, 17))
    inbound = [
        m.content.text.text for m in stored if m.direction == common_pb2.MESSAGE_DIRECTION_INBOUND
    ]
    assert sorted(inbound) == [f"m{i}" for i in range(8)]
    kinds = stores.outbox.kinds()
    assert (kinds.count("conversation_started"), kinds.count("session_started")) == (1, 1)
    # The losers' sessions were removed: only the conversation's own is left.
    assert [s.id for s in stores.sessions.sessions.values()] == [responses[0].session.id]


async def test_concurrent_first_webhooks_of_one_user_share_one_conversation_in_order(
    ingest: IngestService, stores: MemoryStores
) -> None:
    calls = [[event(f"ev-{call}-{n}", f"{call}.{n}") for n in range(3)] for call in range(6)]

    results = await asyncio.gather(*(ingest.ingest(TENANT, events) for events in calls))

    assert all(r.outcome == ACCEPTED for call in results for r in call)
    [conversation] = [c for _, c in stores.db.conversations.values()]
    stored = {m.id: m for m in stores.messages.of(TENANT, conversation.id)}
    assert len(stored) == 18
    for call in results:
        sequences = [stored[r.message_id].sequence for r in call]
        assert sequences == list(range(sequences[0], sequences[0] + 3))  # in order, together
    kinds = stores.outbox.kinds()
    assert (kinds.count("conversation_started"), kinds.count("session_started")) == (1, 1)
    assert len(stores.sessions.sessions) == 1


async def test_first_sends_racing_in_two_processes_share_one_conversation(
    stores: MemoryStores, clock: Clock, responder: ScriptedResponder
) -> None:
    """Two servers do not wait for each other's starts: the unique index refuses the second,
    whose message is then stored in the first's conversation."""
    servers = [message_service(stores, clock, responder) for _ in range(2)]

    responses = await asyncio.gather(
        *(server.send(TENANT, "u1", send_request(f"m{i}")) for i, server in enumerate(servers))
    )

    [conversation] = [c for _, c in stores.db.conversations.values()]
    assert {r.conversation.id for r in responses} == {conversation.id}
    assert [m.sequence for m in stores.messages.of(TENANT, conversation.id)] == [1, 2, 3, 4]
    kinds = stores.outbox.kinds()
    assert (kinds.count("conversation_started"), kinds.count("session_started")) == (1, 1)
    assert len(stores.sessions.sessions) == 1  # the loser's session was removed
