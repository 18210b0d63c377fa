"""DeliveryWorker's rules, over in-memory stores and a scripted channel: outcomes recorded with
the message's status, retries with backoff, dead letters, the circuit breaker and order."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from chat.v1 import common_pb2
from server.channels.base import (
    HOLD_DESTINATION,
    Action,
    ChannelResponse,
    Outbound,
    content_problem,
)
from server.channels.factory import ChannelFactory
from server.domain.queues import FAILED, QUEUED, SENT, Delivery, Due, Outgoing
from server.domain.tenant import Tenant
from server.metrics import Metrics
from server.services.delivery import DeliveryWorker
from server.services.delivery_guards import DeliveryPolicy
from server.services.live import QuietLiveEvents
from server.services.receipts import Receipts
from tests.support.fakes import MemoryMediaStore
from tests.support.ports import Clock, MemoryStores

TENANT = "acme"
MESSENGER = common_pb2.CHANNEL_TYPE_MESSENGER
MAX_ATTEMPTS = 3


class ScriptedChannel:
    """A Channel whose sends answer from a script (success when it runs out)."""

    channel_type = MESSENGER

    def __init__(self) -> None:
        self.script: list[ChannelResponse] = []
        self.sent: list[Outbound] = []
        self.config_problem = ""

    def validate_recipient(self, recipient_id: str) -> str:
        return "" if recipient_id.isdigit() else "not a page-scoped id"

    def validate_config(self, tenant: Tenant) -> str:  # noqa: ARG002 - the Channel's signature
        return self.config_problem

    def validate_content(self, message: common_pb2.Message) -> str:
        return content_problem(message)

    def format_message(self, outbound: Outbound) -> list[dict[str, Any]]:
        return [{"text": outbound.message.content.text.text}]

    async def send_message(self, outbound: Outbound) -> ChannelResponse:
        self.sent.append(outbound)
        if self.script:
            return self.script.pop(0)
        return ChannelResponse(success=True, platform_message_id=f"mid.{len(self.sent)}")

    async def send_action(self, action: Action) -> ChannelResponse | None:  # noqa: ARG002 - the Channel's signature
        return None

    async def health_check(self, tenant: Tenant) -> ChannelResponse:  # noqa: ARG002 - the Channel's signature
        return ChannelResponse(success=True)


def retryable() -> ChannelResponse:
    return ChannelResponse.failed("HTTP_503", "the platform failed", retryable=True)


@pytest.fixture
def channel() -> ScriptedChannel:
    return ScriptedChannel()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def worker(
    stores: MemoryStores, clock: Clock, channel: ScriptedChannel, metrics: Metrics
) -> DeliveryWorker:
    channels = ChannelFactory()
    channels.register(channel)
    live = QuietLiveEvents(stores.live)
    return DeliveryWorker(
        deliveries=stores.deliveries,
        messages=stores.messages,
        media=MemoryMediaStore(),
        channels=channels,
        tenants={TENANT: Tenant(id=TENANT)},
        outbox=stores.outbox,
        transactions=stores.transactions,
        live=live,
        pacer=stores.limiter,
        clock=clock,
        policy=DeliveryPolicy(
            max_attempts=MAX_ATTEMPTS,
            base_delay_seconds=1.0,
            breaker_threshold=MAX_ATTEMPTS,
            breaker_open_seconds=30.0,
        ),
        receipts=Receipts(
            messages=stores.messages,
            deliveries=stores.deliveries,
            early=stores.early_receipts,
            outbox=stores.outbox,
            transactions=stores.transactions,
            live=live,
        ),
        observer=metrics,
    )


async def given_queued(
    stores: MemoryStores, clock: Clock, *, replies: int = 1, recipient: str = "4242"
) -> list[common_pb2.Message]:
    """A conversation whose first ``replies`` outbound messages wait in the delivery queue."""
    conversation = stores.conversations.add(
        TENANT,
        user_id=recipient,
        channel=MESSENGER,
        channel_conversation_id=recipient,
        last_sequence=replies + 1,
        now=clock(),
    )
    messages = []
    for sequence in range(2, replies + 2):
        message = common_pb2.Message(
            id=f"{conversation.id[:6]}-{sequence}",
            conversation_id=conversation.id,
            sequence=sequence,
            channel=MESSENGER,
            direction=common_pb2.MESSAGE_DIRECTION_OUTBOUND,
            delivery_status=common_pb2.DELIVERY_STATUS_QUEUED,
            content=common_pb2.Content(text=common_pb2.TextContent(text=f"reply {sequence}")),
        )
        message.create_time.FromDatetime(clock())
        stores.messages.add(TENANT, message)
        messages.append(message)

    async def enqueue(tx: object) -> None:
        await stores.deliveries.enqueue_many(
            [Outgoing(TENANT, messages, recipient, "", clock())], tx=tx
        )

    await stores.transactions.run(enqueue)
    return messages


async def attempt(worker: DeliveryWorker, message_id: str) -> None:
    claimed = await worker.claim_many([Due(tenant_id=TENANT, id=message_id)])
    assert claimed, "the delivery is not due"
    await worker.deliver(claimed[0])


async def delivery(stores: MemoryStores, message_id: str) -> Delivery:
    found = await stores.deliveries.get(TENANT, message_id)
    assert found is not None
    return found


async def status(stores: MemoryStores, message_id: str) -> int:
    message = await stores.messages.get(TENANT, message_id)
    assert message is not None
    return message.delivery_status


async def test_a_sent_message_is_recorded_with_its_platform_id_and_announced(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    [message] = await given_queued(stores, clock)

    await attempt(worker, message.id)

    done = await delivery(stores, message.id)
    assert (done.state, done.platform_message_id, done.owner) == (SENT, "mid.1", "")
    stored = await stores.messages.get(TENANT, message.id)
    assert stored is not None
    assert stored.delivery_status == common_pb2.DELIVERY_STATUS_SENT
    assert stored.platform_message_id == "mid.1"
    assert [o.recipient_id for o in channel.sent] == ["4242"]
    [sent] = [e for e in stores.outbox.envelopes if e.WhichOneof("payload") == "message_sent"]
    assert sent.message_sent.message.platform_message_id == "mid.1"
    [update] = stores.live.events("delivery_status")
    assert update.delivery_status.message_id == message.id


async def test_a_retryable_failure_comes_back_later_until_the_attempts_run_out(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    [message] = await given_queued(stores, clock)
    channel.script = [retryable() for _ in range(MAX_ATTEMPTS)]

    await attempt(worker, message.id)

    waiting = await delivery(stores, message.id)
    assert waiting.state == QUEUED
    assert waiting.due_time is not None
    # Backoff with jitter: between half and all of the base delay for the first retry.
    assert clock() + dt.timedelta(seconds=0.5) <= waiting.due_time
    assert waiting.due_time <= clock() + dt.timedelta(seconds=1)
    assert len(waiting.attempts) == 1
    assert await status(stores, message.id) == common_pb2.DELIVERY_STATUS_QUEUED
    assert await worker.claim_many([Due(tenant_id=TENANT, id=message.id)]) == []  # not due yet

    for _ in range(MAX_ATTEMPTS - 1):
        clock.advance(seconds=10)
        await attempt(worker, message.id)

    failed = await delivery(stores, message.id)
    assert failed.state == FAILED
    assert len(failed.attempts) == MAX_ATTEMPTS
    assert len(channel.sent) == MAX_ATTEMPTS
    assert await status(stores, message.id) == common_pb2.DELIVERY_STATUS_FAILED
    [dead] = [e for e in stores.outbox.envelopes if e.WhichOneof("payload") == "message_delivered"]
    assert dead.message_delivered.status == common_pb2.DELIVERY_STATUS_FAILED
    assert dead.message_delivered.error.code == "HTTP_503"


async def test_a_platforms_retry_after_is_never_cut_short(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    [message] = await given_queued(stores, clock)
    channel.script = [
        ChannelResponse.failed("RATE_LIMITED", "slow down", retryable=True, retry_after=120.0)
    ]

    await attempt(worker, message.id)

    waiting = await delivery(stores, message.id)
    assert waiting.due_time is not None
    assert waiting.due_time >= clock() + dt.timedelta(seconds=120)


async def test_a_permanent_failure_fails_at_once(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    [message] = await given_queued(stores, clock)
    channel.script = [
        ChannelResponse.failed("BLOCKED", "the user blocked the page", retryable=False)
    ]

    await attempt(worker, message.id)

    assert (await delivery(stores, message.id)).state == FAILED
    assert len(channel.sent) == 1
    assert await status(stores, message.id) == common_pb2.DELIVERY_STATUS_FAILED


async def test_an_invalid_recipient_or_configuration_fails_without_a_send(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    [to_nobody] = await given_queued(stores, clock, recipient="not-a-number")
    [unconfigured] = await given_queued(stores, clock, recipient="5151")

    await attempt(worker, to_nobody.id)
    channel.config_problem = "no page access token"
    await attempt(worker, unconfigured.id)

    assert channel.sent == []
    for message in (to_nobody, unconfigured):
        failed = await delivery(stores, message.id)
        assert failed.state == FAILED
        assert failed.attempts[-1].error is not None
        assert failed.attempts[-1].error.code == "INVALID_DELIVERY"
        assert await status(stores, message.id) == common_pb2.DELIVERY_STATUS_FAILED


async def test_an_open_circuit_breaker_postpones_without_sending(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    failing = [(await given_queued(stores, clock, recipient=f"10{i}"))[0] for i in range(3)]
    [later] = await given_queued(stores, clock, recipient="999")
    channel.script = [retryable() for _ in failing]
    for message in failing:
        await attempt(worker, message.id)

    await attempt(worker, later.id)

    assert len(channel.sent) == len(failing)
    held = await delivery(stores, later.id)
    assert held.state == QUEUED
    assert held.attempts == ()
    assert held.due_time is not None
    assert held.due_time > clock() + dt.timedelta(seconds=20)


async def test_an_earlier_pending_message_holds_a_later_one(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    first, second = await given_queued(stores, clock, replies=2)

    await attempt(worker, second.id)

    assert channel.sent == []
    held = await delivery(stores, second.id)
    assert (held.state, held.attempts, held.owner) == (QUEUED, (), "")
    assert held.due_time is not None
    assert clock() < held.due_time <= clock() + dt.timedelta(seconds=1)

    await attempt(worker, first.id)
    clock.advance(seconds=1)
    await attempt(worker, second.id)
    assert [o.message.id for o in channel.sent] == [first.id, second.id]


async def test_an_outcome_is_not_recorded_once_the_lease_is_lost(
    worker: DeliveryWorker, stores: MemoryStores, clock: Clock, channel: ScriptedChannel
) -> None:
    [message] = await given_queued(stores, clock)
    [claimed] = await worker.claim_many([Due(tenant_id=TENANT, id=message.id)])
    # The lease lapsed and another process claimed the delivery.
    stores.deliveries.put(dataclasses.replace(claimed, owner="another-process"))

    await worker.deliver(claimed)

    assert len(channel.sent) == 1
    assert (await delivery(stores, message.id)).owner == "another-process"
    assert await status(stores, message.id) == common_pb2.DELIVERY_STATUS_QUEUED
    assert stores.outbox.envelopes == []


def delivered(metrics: Metrics, outcome: str) -> float:
    labels = {"platform": "messenger", "outcome": outcome}
    return metrics.registry.get_sample_value("chat_deliveries_total", labels) or 0.0


async def test_outcomes_holds_and_breakers_are_counted_by_platform(
    worker: DeliveryWorker,
    stores: MemoryStores,
    clock: Clock,
    channel: ScriptedChannel,
    metrics: Metrics,
) -> None:
    [sent] = await given_queued(stores, clock, recipient="1")
    [refused] = await given_queued(stores, clock, recipient="2")
    channel.script = [
        ChannelResponse(success=True, platform_message_id="mid.sent"),
        ChannelResponse.failed("BLOCKED", "the user blocked the page", retryable=False),
    ]
    await attempt(worker, sent.id)
    await attempt(worker, refused.id)
    assert (delivered(metrics, "sent"), delivered(metrics, "failed")) == (1, 1)

    failing = [(await given_queued(stores, clock, recipient=f"10{i}"))[0] for i in range(3)]
    channel.script = [
        ChannelResponse.failed(
            "RATE_LIMITED", "slow down", retryable=True, retry_after=1, hold=HOLD_DESTINATION
        ),
        retryable(),
        retryable(),
    ]
    for message in failing:
        await attempt(worker, message.id)
    [later] = await given_queued(stores, clock, recipient="999")
    await attempt(worker, later.id)

    assert delivered(metrics, "retried") == 3
    assert delivered(metrics, "postponed") == 1  # the breaker opened after three in a row
    value = metrics.registry.get_sample_value
    holds = {"platform": "messenger", "scope": HOLD_DESTINATION}
    assert value("chat_delivery_rate_limit_holds_total", holds) == 1
    assert value("chat_delivery_breaker_openings_total", {"platform": "messenger"}) == 1
    assert worker.open_breakers() == {MESSENGER: 1}
