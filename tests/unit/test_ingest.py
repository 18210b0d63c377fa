"""IngestService's rules, over in-memory stores: deduplication, what an accepted message stores,
rejections, whose conversation an event is, status reports and typing."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import pytest
from pymongo.errors import ServerSelectionTimeoutError
from structlog.testing import capture_logs

from chat.v1 import common_pb2, ingest_service_pb2
from server.domain.errors import StoreUnavailableError
from server.domain.receipts import EarlyReceipt
from server.repositories.stores import is_outage
from server.services.ingest import IngestService
from tests.support.ports import Clock, MemoryStores, ingest_service, message_event

TENANT = "acme"
WHATSAPP = common_pb2.CHANNEL_TYPE_WHATSAPP
SLACK = common_pb2.CHANNEL_TYPE_SLACK
TEAMS = common_pb2.CHANNEL_TYPE_TEAMS
READ = common_pb2.DELIVERY_STATUS_READ
ACCEPTED = ingest_service_pb2.INGEST_OUTCOME_ACCEPTED
DUPLICATE = ingest_service_pb2.INGEST_OUTCOME_DUPLICATE
IGNORED = ingest_service_pb2.INGEST_OUTCOME_IGNORED
DEFERRED = ingest_service_pb2.INGEST_OUTCOME_DEFERRED
REJECTED = ingest_service_pb2.INGEST_OUTCOME_REJECTED


@pytest.fixture
def service(stores: MemoryStores, clock: Clock) -> IngestService:
    return ingest_service(stores, clock)


def status_event(
    event_id: str, status: int, *ids: str, user: str = "15550001", channel: int = WHATSAPP
) -> ingest_service_pb2.InboundEvent:
    return ingest_service_pb2.InboundEvent(
        platform_event_id=event_id,
        channel=channel,
        platform_user_id=user,
        status=ingest_service_pb2.StatusReport(status=status, platform_message_ids=ids),
    )


async def test_an_accepted_message_is_stored_recorded_and_queued_for_its_reply(
    service: IngestService, stores: MemoryStores
) -> None:
    [result] = await service.ingest(TENANT, [message_event()])

    assert result.outcome == ACCEPTED
    [stored] = stores.messages.all()
    assert stored.id == result.message_id
    assert stored.sequence == 1
    assert stored.platform_message_id == "wamid.ev-1"
    assert stored.direction == common_pb2.MESSAGE_DIRECTION_INBOUND
    assert await stores.ingest_log.seen(TENANT, WHATSAPP, "ev-1")
    [job] = stores.reply_jobs.jobs
    assert (job["message_id"], job["sequence"]) == (stored.id, 1)
    assert stores.outbox.kinds()[-2:] == ["message_received", "conversation_updated"]
    # The message, its deduplication record, events and reply job commit together.
    [message_tx] = {tx for tx, what in stores.db.writes if what == "messages"}
    assert {what for tx, what in stores.db.writes if tx == message_tx} == {
        "conversations",
        "ingested",
        "messages",
        "outbox",
        "reply_jobs",
    }


async def test_a_duplicate_event_is_reported_and_stores_nothing(
    service: IngestService, stores: MemoryStores
) -> None:
    await service.ingest(TENANT, [message_event()])
    events = len(stores.outbox.envelopes)

    [again] = await service.ingest(TENANT, [message_event(text="hello again")])

    assert again.outcome == DUPLICATE
    assert len(stores.messages.all()) == 1
    assert len(stores.reply_jobs.jobs) == 1
    assert len(stores.outbox.envelopes) == events


async def test_a_retry_that_raced_the_check_is_a_duplicate_and_rolls_back(
    service: IngestService, stores: MemoryStores, clock: Clock
) -> None:
    [first] = await service.ingest(TENANT, [message_event()])
    # The platform's retry passed the seen_many() check before the first committed its record.
    seen_many = stores.ingest_log.seen_many

    async def not_yet(tenant_id: str, events: Sequence[tuple[int, str]]) -> set[tuple[int, str]]:
        return set()

    stores.ingest_log.seen_many = not_yet  # type: ignore[method-assign]
    [again] = await service.ingest(TENANT, [message_event()])
    stores.ingest_log.seen_many = seen_many  # type: ignore[method-assign]

    assert again.outcome == DUPLICATE
    [stored] = stores.messages.all()
    conversation = await stores.conversations.get(TENANT, stored.conversation_id)
    assert conversation is not None
    assert conversation.last_sequence == 1
    assert first.message_id == stored.id


async def test_each_event_of_a_batch_is_judged_on_its_own(
    service: IngestService, stores: MemoryStores
) -> None:
    no_id = message_event(event_id="")
    web = message_event(event_id="ev-web", channel=common_pb2.CHANNEL_TYPE_WEB)
    blank = message_event(event_id="ev-blank", text="   ")

    results = await service.ingest(TENANT, [no_id, message_event("ev-ok"), web, blank])

    assert [r.outcome for r in results] == [REJECTED, ACCEPTED, REJECTED, REJECTED]
    assert [r.error_reason for r in results] == [
        "INVALID_EVENT",
        "",
        "INVALID_EVENT",
        "INVALID_CONTENT",
    ]
    assert "platform_event_id" in results[0].error_message
    assert [m.id for m in stores.messages.all()] == [results[1].message_id]
    assert not await stores.ingest_log.seen(TENANT, WHATSAPP, "ev-blank")


async def test_a_slack_conversation_is_one_user_in_one_chat(
    service: IngestService, stores: MemoryStores
) -> None:
    in_dm = message_event("e1", channel=SLACK, user="U1", chat="D1")
    in_channel = message_event("e2", channel=SLACK, user="U1", chat="C9")

    results = await service.ingest(TENANT, [in_dm, in_channel])

    assert [r.outcome for r in results] == [ACCEPTED, ACCEPTED]
    users = sorted(c.user_id for _, c in stores.db.conversations.values())
    assert users == ["C9/U1", "D1/U1"]
    assert {m.sender_id for m in stores.messages.all()} == {"U1"}


async def test_messages_of_one_user_share_a_conversation_in_order(
    service: IngestService, stores: MemoryStores
) -> None:
    results = await service.ingest(TENANT, [message_event("e1"), message_event("e2", "more")])

    [conversation] = [c for _, c in stores.db.conversations.values()]
    assert conversation.last_sequence == 2
    assert [m.id for m in stores.messages.of(TENANT, conversation.id)] == [
        r.message_id for r in results
    ]
    assert [j["sequence"] for j in stores.reply_jobs.jobs] == [1, 2]


async def test_a_status_for_an_unknown_message_is_parked_and_deferred(
    service: IngestService, stores: MemoryStores
) -> None:
    [result] = await service.ingest(
        TENANT, [status_event("st-1", common_pb2.DELIVERY_STATUS_DELIVERED, "wamid.out-1")]
    )

    assert result.outcome == DEFERRED
    [parked] = stores.early_receipts.parked
    assert parked.platform_message_id == "wamid.out-1"
    assert parked.status == common_pb2.DELIVERY_STATUS_DELIVERED
    assert await stores.ingest_log.seen(TENANT, WHATSAPP, "st-1")


async def test_a_status_moves_a_sent_message_forward_never_back(
    service: IngestService, stores: MemoryStores, clock: Clock
) -> None:
    conversation = stores.conversations.add(
        TENANT, user_id="15550001", channel=WHATSAPP, channel_conversation_id="1555", now=clock()
    )
    reply = common_pb2.Message(
        id="reply-1",
        conversation_id=conversation.id,
        sequence=2,
        channel=WHATSAPP,
        direction=common_pb2.MESSAGE_DIRECTION_OUTBOUND,
        delivery_status=common_pb2.DELIVERY_STATUS_SENT,
        platform_message_id="wamid.out-1",
    )
    reply.create_time.FromDatetime(clock())
    stores.messages.add(TENANT, reply)

    [read] = await service.ingest(
        TENANT, [status_event("st-read", common_pb2.DELIVERY_STATUS_READ, "wamid.out-1")]
    )
    [late] = await service.ingest(
        TENANT, [status_event("st-dlv", common_pb2.DELIVERY_STATUS_DELIVERED, "wamid.out-1")]
    )

    assert read.outcome == ACCEPTED
    assert late.outcome == IGNORED
    stored = await stores.messages.get(TENANT, "reply-1")
    assert stored is not None
    assert stored.delivery_status == common_pb2.DELIVERY_STATUS_READ
    assert stores.outbox.kinds() == ["message_delivered"]
    [update] = stores.live.events("delivery_status")
    assert update.delivery_status.status == common_pb2.DELIVERY_STATUS_READ
    # Nothing changed: not recorded, so the platform's retry may still apply it.
    assert not await stores.ingest_log.seen(TENANT, WHATSAPP, "st-dlv")


async def test_a_status_naming_nothing_is_ignored(
    service: IngestService, stores: MemoryStores
) -> None:
    [result] = await service.ingest(TENANT, [status_event("st-0", common_pb2.DELIVERY_STATUS_READ)])

    assert result.outcome == IGNORED
    assert stores.early_receipts.parked == []


async def test_typing_goes_to_the_conversations_streams_or_is_ignored(
    service: IngestService, stores: MemoryStores, clock: Clock
) -> None:
    def typing(event_id: str) -> ingest_service_pb2.InboundEvent:
        return ingest_service_pb2.InboundEvent(
            platform_event_id=event_id,
            channel=WHATSAPP,
            platform_user_id="15550001",
            typing=ingest_service_pb2.TypingReport(typing=True),
        )

    [nobody] = await service.ingest(TENANT, [typing("t-1")])
    assert nobody.outcome == IGNORED
    assert stores.live.published == []

    conversation = stores.conversations.add(
        TENANT, user_id="15550001", channel=WHATSAPP, channel_conversation_id="1555", now=clock()
    )
    [shown] = await service.ingest(TENANT, [typing("t-2")])

    assert shown.outcome == ACCEPTED
    [published] = stores.live.published
    assert published.conversation_id == conversation.id
    assert published.events[0].typing.participant_id == "15550001"


def poisoned_parking(stores: MemoryStores, error: Exception) -> None:
    """Parking a receipt for ``wamid.poison`` raises ``error`` (after the event's record was
    written in the same transaction)."""
    park = stores.early_receipts.park

    async def failing(receipts: Sequence[EarlyReceipt], *, now: dt.datetime, tx: Any) -> None:
        await park(receipts, now=now, tx=tx)
        if any(r.platform_message_id == "wamid.poison" for r in receipts):
            raise error

    stores.early_receipts.park = failing  # type: ignore[method-assign]


async def test_an_event_that_fails_on_our_bug_is_rejected_alone_and_stores_nothing(
    service: IngestService, stores: MemoryStores
) -> None:
    poisoned_parking(stores, OverflowError("date value out of range"))
    batch = [
        status_event("st-poison", common_pb2.DELIVERY_STATUS_READ, "wamid.poison"),
        message_event("ev-ok"),
        status_event("st-ok", common_pb2.DELIVERY_STATUS_READ, "wamid.other"),
    ]

    with capture_logs() as logs:
        results = await service.ingest(TENANT, batch)

    assert [r.outcome for r in results] == [REJECTED, ACCEPTED, DEFERRED]
    assert results[0].error_reason == "UNPROCESSABLE_EVENT"
    assert "date value" not in results[0].error_message  # our bug's detail goes to the log
    [entry] = [e for e in logs if e["event"] == "event not applied"]
    assert entry["log_level"] == "error"
    assert isinstance(entry["exc_info"], OverflowError)  # logged with its traceback
    assert entry["platform_event_id"] == "st-poison"
    # Its record and its parked receipt rolled back with it; the others are stored.
    assert not await stores.ingest_log.seen(TENANT, WHATSAPP, "st-poison")
    assert [r.platform_message_id for r in stores.early_receipts.parked] == ["wamid.other"]
    assert [m.id for m in stores.messages.all()] == [results[1].message_id]


async def test_a_store_outage_still_fails_the_whole_call(
    service: IngestService, stores: MemoryStores
) -> None:
    poisoned_parking(stores, StoreUnavailableError("redis timed out"))

    with pytest.raises(StoreUnavailableError):
        await service.ingest(
            TENANT,
            [
                message_event("ev-ok"),
                status_event("st-poison", common_pb2.DELIVERY_STATUS_READ, "wamid.poison"),
            ],
        )

    assert not await stores.ingest_log.seen(TENANT, WHATSAPP, "st-poison")


def test_an_unreachable_store_is_an_outage_and_a_bug_is_not() -> None:
    assert is_outage(ServerSelectionTimeoutError("no primary"))
    assert is_outage(StoreUnavailableError("redis timed out"))
    assert not is_outage(OverflowError("date value out of range"))


async def test_a_batchs_statuses_apply_in_order_in_one_transaction(
    service: IngestService, stores: MemoryStores, clock: Clock
) -> None:
    conversation = stores.conversations.add(
        TENANT, user_id="15550001", channel=WHATSAPP, channel_conversation_id="1555", now=clock()
    )
    for n, status in enumerate((common_pb2.DELIVERY_STATUS_SENT, common_pb2.DELIVERY_STATUS_SENT)):
        reply = common_pb2.Message(
            id=f"reply-{n}",
            conversation_id=conversation.id,
            sequence=n + 2,
            channel=WHATSAPP,
            direction=common_pb2.MESSAGE_DIRECTION_OUTBOUND,
            delivery_status=status,
            platform_message_id=f"wamid.out-{n}",
        )
        reply.create_time.FromDatetime(clock())
        stores.messages.add(TENANT, reply)
    commits = stores.transactions.commits

    results = await service.ingest(
        TENANT,
        [
            # A failure, then a replayed send that went through after all: SENT in the end.
            status_event("st-1", common_pb2.DELIVERY_STATUS_FAILED, "wamid.out-0"),
            status_event("st-2", common_pb2.DELIVERY_STATUS_SENT, "wamid.out-0"),
            # Read, then a late delivered: READ stays.
            status_event("st-3", common_pb2.DELIVERY_STATUS_READ, "wamid.out-1"),
            status_event("st-4", common_pb2.DELIVERY_STATUS_DELIVERED, "wamid.out-1"),
            status_event("st-3", common_pb2.DELIVERY_STATUS_READ, "wamid.out-1"),  # sent twice
            status_event("st-5", common_pb2.DELIVERY_STATUS_READ, "wamid.later"),
        ],
    )

    assert [r.platform_event_id for r in results] == [
        "st-1",
        "st-2",
        "st-3",
        "st-4",
        "st-3",
        "st-5",
    ]
    assert [r.outcome for r in results] == [
        ACCEPTED,
        ACCEPTED,
        ACCEPTED,
        IGNORED,
        DUPLICATE,
        DEFERRED,
    ]
    assert stores.transactions.commits == commits + 1  # all of them in one transaction
    first = await stores.messages.get(TENANT, "reply-0")
    second = await stores.messages.get(TENANT, "reply-1")
    assert first is not None
    assert second is not None
    assert (first.delivery_status, second.delivery_status) == (
        common_pb2.DELIVERY_STATUS_SENT,
        common_pb2.DELIVERY_STATUS_READ,
    )
    assert stores.outbox.kinds() == ["message_delivered"] * 3
    assert [r.platform_message_id for r in stores.early_receipts.parked] == ["wamid.later"]
    assert not await stores.ingest_log.seen(TENANT, WHATSAPP, "st-4")


def sent_reply(
    conversation_id: str, pid: str, now: dt.datetime, *, channel: int = WHATSAPP
) -> common_pb2.Message:
    reply = common_pb2.Message(
        id=f"reply-{conversation_id[:8]}-{pid}",
        conversation_id=conversation_id,
        sequence=2,
        channel=channel,
        direction=common_pb2.MESSAGE_DIRECTION_OUTBOUND,
        delivery_status=common_pb2.DELIVERY_STATUS_SENT,
        platform_message_id=pid,
    )
    reply.create_time.FromDatetime(now)
    return reply


async def test_a_status_for_a_message_of_the_users_closed_conversation_still_applies(
    service: IngestService, stores: MemoryStores, clock: Clock
) -> None:
    # The user read the last reply of a conversation that was closed, and has already started
    # another one: the read is the closed conversation's message's all the same.
    closed = stores.conversations.add(
        TENANT,
        user_id="15550001",
        channel=WHATSAPP,
        channel_conversation_id="1555",
        status=common_pb2.CONVERSATION_STATUS_CLOSED,
        now=clock(),
    )
    stores.conversations.add(
        TENANT, user_id="15550001", channel=WHATSAPP, channel_conversation_id="1555", now=clock()
    )
    last = sent_reply(closed.id, "wamid.bye", clock())
    stores.messages.add(TENANT, last)

    [delivered] = await service.ingest(
        TENANT, [status_event("st-1", common_pb2.DELIVERY_STATUS_DELIVERED, "wamid.bye")]
    )
    assert delivered.outcome == ACCEPTED
    stored = await stores.messages.get(TENANT, last.id)
    assert stored is not None
    assert stored.delivery_status == common_pb2.DELIVERY_STATUS_DELIVERED


async def test_a_teams_id_names_a_message_of_the_reporting_users_active_conversation_only(
    service: IngestService, stores: MemoryStores, clock: Clock
) -> None:
    # Teams' ids are unique within a chat only: a read receipt's id can also name a message
    # of another user's chat, which it must not mark read, found alone or beside the user's.
    mine = stores.conversations.add(
        TENANT, user_id="29:mine", channel=TEAMS, channel_conversation_id="a:1", now=clock()
    )
    theirs = stores.conversations.add(
        TENANT, user_id="29:theirs", channel=TEAMS, channel_conversation_id="a:2", now=clock()
    )
    for conversation in (mine, theirs):
        stores.messages.add(
            TENANT, sent_reply(conversation.id, "1700000000100", clock(), channel=TEAMS)
        )
    stores.messages.add(TENANT, sent_reply(theirs.id, "1700000000200", clock(), channel=TEAMS))

    results = await service.ingest(
        TENANT,
        [
            status_event("r-1", READ, "1700000000100", user="29:mine", channel=TEAMS),
            status_event("r-2", READ, "1700000000200", user="29:mine", channel=TEAMS),
        ],
    )

    assert [r.outcome for r in results] == [ACCEPTED, IGNORED]
    statuses = {
        (m.conversation_id, m.platform_message_id): m.delivery_status for m in stores.messages.all()
    }
    assert statuses == {
        (mine.id, "1700000000100"): READ,
        (theirs.id, "1700000000100"): common_pb2.DELIVERY_STATUS_SENT,
        (theirs.id, "1700000000200"): common_pb2.DELIVERY_STATUS_SENT,
    }
