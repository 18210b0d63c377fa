"""SendMessage's rules, over in-memory stores: what is stored, numbered, queued and announced."""

from __future__ import annotations

import pytest

from chat.v1 import chat_service_pb2, common_pb2
from server.domain.errors import FailedPrecondition, InvalidArgument, NotFound
from server.services.messages import MessageService
from tests.support.ports import (
    Clock,
    MemoryStores,
    ScriptedResponder,
    message_service,
)

TENANT = "acme"
WEB = common_pb2.CHANNEL_TYPE_WEB
WHATSAPP = common_pb2.CHANNEL_TYPE_WHATSAPP


@pytest.fixture
def responder() -> ScriptedResponder:
    return ScriptedResponder("Hello!", "How can I help?")


@pytest.fixture
def service(stores: MemoryStores, responder: ScriptedResponder, clock: Clock) -> MessageService:
    return message_service(stores, clock, responder)


def request(text: str = "hi there", **fields: object) -> chat_service_pb2.SendMessageRequest:
    defaults: dict[str, object] = {"user_id": "u1", "channel": WEB}
    return chat_service_pb2.SendMessageRequest(
        content=common_pb2.Content(text=common_pb2.TextContent(text=text)),
        **(defaults | fields),
    )


async def test_message_and_replies_get_consecutive_sequences_in_one_transaction(
    service: MessageService, stores: MemoryStores
) -> None:
    first = await service.send(TENANT, "u1", request())
    second = await service.send(TENANT, "u1", request("and again"))

    assert [first.message.sequence, *(r.sequence for r in first.replies)] == [1, 2, 3]
    assert [second.message.sequence, *(r.sequence for r in second.replies)] == [4, 5, 6]
    assert second.conversation.id == first.conversation.id
    assert second.conversation.last_sequence == 6
    stored = stores.messages.of(TENANT, first.conversation.id)
    assert [m.sequence for m in stored] == [1, 2, 3, 4, 5, 6]
    assert [m.direction for m in stored[:3]] == [
        common_pb2.MESSAGE_DIRECTION_INBOUND,
        common_pb2.MESSAGE_DIRECTION_OUTBOUND,
        common_pb2.MESSAGE_DIRECTION_OUTBOUND,
    ]
    assert all(r.reply_to_message_id == first.message.id for r in first.replies)
    # The exchange's counters, messages, events and idempotency record: one transaction.
    message_tx = {tx for tx, what in stores.db.writes if what == "messages"}
    assert len(message_tx) == 2
    last = max(message_tx)
    assert {what for tx, what in stores.db.writes if tx == last} == {
        "conversations",
        "messages",
        "outbox",
    }


async def test_a_replayed_request_id_returns_the_first_response_and_stores_nothing(
    service: MessageService, stores: MemoryStores, responder: ScriptedResponder
) -> None:
    first = await service.send(TENANT, "u1", request(request_id="r-1"))
    stored = len(stores.messages.all())
    events = len(stores.outbox.envelopes)

    again = await service.send(TENANT, "u1", request(request_id="r-1"))

    assert again == first
    assert len(stores.messages.all()) == stored
    assert len(stores.outbox.envelopes) == events
    assert len(responder.asked) == 1


async def test_a_request_id_reused_for_another_request_is_refused_and_stores_nothing(
    service: MessageService, stores: MemoryStores, responder: ScriptedResponder
) -> None:
    await service.send(TENANT, "u1", request(request_id="r-1"))
    stored = len(stores.messages.all())
    events = len(stores.outbox.envelopes)

    for other in (
        request("something else", request_id="r-1"),
        request(request_id="r-1", user_id="u9"),
    ):
        with pytest.raises(FailedPrecondition) as refused:
            await service.send(TENANT, "u1", other)
        assert refused.value.reason == "IDEMPOTENCY_KEY_REUSED"

    assert len(stores.messages.all()) == stored
    assert len(stores.outbox.envelopes) == events
    assert len(responder.asked) == 1


async def test_a_racing_retry_answers_with_the_response_the_first_stored(
    service: MessageService, stores: MemoryStores
) -> None:
    first = await service.send(TENANT, "u1", request(request_id="r-1"))
    # The retry's lookup ran before the first committed: its own commit hits the record.
    stores.idempotency.miss_next_get()

    again = await service.send(TENANT, "u1", request(request_id="r-1"))

    assert again == first
    assert len(stores.messages.all()) == 3
    conversation = await stores.conversations.get(TENANT, first.conversation.id)
    assert conversation is not None
    assert conversation.last_sequence == 3


async def test_a_racing_request_reusing_the_id_is_refused_and_stores_nothing(
    service: MessageService, stores: MemoryStores
) -> None:
    first = await service.send(TENANT, "u1", request(request_id="r-1"))
    stores.idempotency.miss_next_get()

    with pytest.raises(FailedPrecondition) as refused:
        await service.send(TENANT, "u1", request("other text", request_id="r-1"))

    assert refused.value.reason == "IDEMPOTENCY_KEY_REUSED"
    assert len(stores.messages.all()) == 3
    conversation = await stores.conversations.get(TENANT, first.conversation.id)
    assert conversation is not None
    assert conversation.last_sequence == 3


async def test_an_invalid_request_reports_every_violation_and_stores_nothing(
    service: MessageService, stores: MemoryStores
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await service.send(TENANT, "u1", request(user_id="", channel=99))

    assert {v.field for v in raised.value.field_violations} == {"user_id", "channel"}
    assert stores.messages.all() == []
    assert stores.outbox.envelopes == []


async def test_a_conversation_of_another_user_is_an_invalid_argument(
    service: MessageService, stores: MemoryStores, clock: Clock
) -> None:
    theirs = stores.conversations.add(TENANT, user_id="u2", channel=WEB, now=clock())

    with pytest.raises(InvalidArgument) as raised:
        await service.send(TENANT, "u1", request(conversation_id=theirs.id))

    assert [v.field for v in raised.value.field_violations] == ["conversation_id"]
    assert stores.messages.all() == []


async def test_a_missing_or_other_tenants_conversation_is_not_found(
    service: MessageService, stores: MemoryStores, clock: Clock
) -> None:
    elsewhere = stores.conversations.add("other-tenant", user_id="u1", channel=WEB, now=clock())

    for conversation_id in ("no-such-conversation", elsewhere.id):
        with pytest.raises(NotFound):
            await service.send(TENANT, "u1", request(conversation_id=conversation_id))
    assert stores.messages.all() == []


async def test_a_named_closed_conversation_fails_its_precondition(
    service: MessageService, stores: MemoryStores, clock: Clock
) -> None:
    closed = stores.conversations.add(
        TENANT, user_id="u1", channel=WEB, status=common_pb2.CONVERSATION_STATUS_CLOSED, now=clock()
    )

    with pytest.raises(FailedPrecondition) as raised:
        await service.send(TENANT, "u1", request(conversation_id=closed.id))

    assert raised.value.reason == "CONVERSATION_CLOSED"
    assert stores.messages.all() == []


async def test_a_new_platform_conversation_needs_its_address(
    service: MessageService, stores: MemoryStores
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await service.send(TENANT, "u1", request(channel=WHATSAPP))

    assert [v.field for v in raised.value.field_violations] == ["channel_conversation_id"]
    assert stores.db.conversations == {}
    assert stores.messages.all() == []


async def test_platform_replies_are_queued_for_delivery_and_web_replies_are_sent(
    service: MessageService, stores: MemoryStores
) -> None:
    platform = await service.send(
        TENANT, "u1", request(channel=WHATSAPP, channel_conversation_id="15550001")
    )
    web = await service.send(TENANT, "u1", request())

    queued = stores.deliveries.all()
    assert [d.id for d in queued] == [r.id for r in platform.replies]
    assert {d.recipient_id for d in queued} == {"15550001"}
    assert [d.sequence for d in queued] == [2, 3]
    assert {r.delivery_status for r in platform.replies} == {common_pb2.DELIVERY_STATUS_QUEUED}
    assert {r.delivery_status for r in web.replies} == {common_pb2.DELIVERY_STATUS_SENT}
    assert not any(d.conversation_id == web.conversation.id for d in queued)


async def test_first_contact_writes_the_conversation_session_and_message_events(
    service: MessageService, stores: MemoryStores
) -> None:
    await service.send(TENANT, "u1", request())
    assert stores.outbox.kinds() == [
        "conversation_started",
        "session_started",
        "message_received",
        "message_sent",
        "message_sent",
        "conversation_updated",
    ]

    await service.send(TENANT, "u2", request(channel=WHATSAPP, channel_conversation_id="1555"))
    # A platform's replies are sent by the delivery queue, which writes MessageSent then.
    assert stores.outbox.kinds()[6:] == [
        "conversation_started",
        "session_started",
        "message_received",
        "conversation_updated",
    ]


async def test_the_exchange_is_pushed_to_the_streams_after_the_commit(
    service: MessageService, stores: MemoryStores
) -> None:
    response = await service.send(TENANT, "u1", request())

    [published] = stores.live.published
    assert published.conversation_id == response.conversation.id
    assert [e.message.id for e in published.events] == [
        response.message.id,
        *(r.id for r in response.replies),
    ]
    assert published.conversation == response.conversation


async def test_a_conversation_closed_meanwhile_takes_the_message_in_a_new_one(
    service: MessageService, stores: MemoryStores
) -> None:
    first = await service.send(TENANT, "u1", request())
    # Closed by another process while the session (and the remembered state) still lives.
    stores.conversations.close_now(TENANT, first.conversation.id)

    second = await service.send(TENANT, "u1", request("still there?"))

    assert second.conversation.id != first.conversation.id
    assert second.message.sequence == 1
    assert [m.sequence for m in stores.messages.of(TENANT, first.conversation.id)] == [1, 2, 3]


async def test_a_failed_commit_stores_nothing(
    service: MessageService, stores: MemoryStores, clock: Clock
) -> None:
    conversation = stores.conversations.add(TENANT, user_id="u1", channel=WEB, now=clock())
    await stores.sessions.get_or_create(TENANT, conversation, now=clock())
    stores.transactions.fail_next(RuntimeError("the primary stepped down"))

    with pytest.raises(RuntimeError):
        await service.send(TENANT, "u1", request(conversation_id=conversation.id))

    assert stores.messages.all() == []
    again = await stores.conversations.get(TENANT, conversation.id)
    assert again is not None
    assert again.last_sequence == 0
