"""Batches applied after the call (IngestEvents' apply_later), over in-memory stores: what is
queued and what is answered at once, a tenant's batches applied in the order they were
stored, a batch applied twice changing nothing, and failures that keep the batch."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter

import pytest
from structlog.testing import capture_logs

from chat.v1 import common_pb2, ingest_service_pb2
from server.domain.errors import StoreUnavailableError
from server.repositories.stores import is_outage
from server.services.ingest import IngestService
from server.services.ingest_inbox import LEASE, MAX_ATTEMPTS, InboxWorker
from tests.support.ports import Clock, MemoryStores, ingest_service

TENANT = "acme"
OTHER = "globex"
WHATSAPP = common_pb2.CHANNEL_TYPE_WHATSAPP
ACCEPTED = ingest_service_pb2.INGEST_OUTCOME_ACCEPTED
DUPLICATE = ingest_service_pb2.INGEST_OUTCOME_DUPLICATE
QUEUED = ingest_service_pb2.INGEST_OUTCOME_QUEUED
REJECTED = ingest_service_pb2.INGEST_OUTCOME_REJECTED
DEFERRED = ingest_service_pb2.INGEST_OUTCOME_DEFERRED


def message(n: int, user: str = "15550001") -> ingest_service_pb2.InboundEvent:
    return ingest_service_pb2.InboundEvent(
        platform_event_id=f"wamid.{user}.{n}",
        channel=WHATSAPP,
        platform_user_id=user,
        channel_conversation_id=user,
        message=ingest_service_pb2.InboundMessage(
            platform_message_id=f"wamid.{user}.{n}",
            content=common_pb2.Content(text=common_pb2.TextContent(text=f"m{n}")),
        ),
    )


def status(n: int) -> ingest_service_pb2.InboundEvent:
    return ingest_service_pb2.InboundEvent(
        platform_event_id=f"status.{n}",
        channel=WHATSAPP,
        platform_user_id="15550001",
        channel_conversation_id="15550001",
        status=ingest_service_pb2.StatusReport(
            status=common_pb2.DELIVERY_STATUS_READ, platform_message_ids=[f"wamid.out.{n}"]
        ),
    )


class Applied:
    """The worker's counts by outcome."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, outcome: str, count: int) -> None:
        self.counts[outcome] += count


@pytest.fixture
def woken() -> list[int]:
    return []


@pytest.fixture
def service(stores: MemoryStores, clock: Clock, woken: list[int]) -> IngestService:
    return ingest_service(stores, clock, on_queued=lambda: woken.append(1), is_outage=is_outage)


@pytest.fixture
def applied() -> Applied:
    return Applied()


@pytest.fixture
def worker(
    service: IngestService, stores: MemoryStores, clock: Clock, applied: Applied
) -> InboxWorker:
    return InboxWorker(
        inbox=stores.ingest_inbox,
        ingest=service,
        clock=clock,
        is_outage=is_outage,
        on_applied=applied,
    )


async def run_once(worker: InboxWorker) -> None:
    """Claim and handle every batch due now, as one pass of the worker's loop would."""
    stopping = asyncio.Event()
    task = asyncio.create_task(worker.run(stopping))
    for _ in range(50):
        await asyncio.sleep(0)
    stopping.set()
    worker.wake()
    await asyncio.wait_for(task, 5)


def texts(stores: MemoryStores, tenant_id: str = TENANT) -> list[str]:
    """The texts a tenant's user 15550001 sent, in their conversation's order."""
    mine = [
        m
        for tenant, m, _ in stores.db.messages.values()
        if tenant == tenant_id and m.sender_id == "15550001"
    ]
    return [m.content.text.text for m in sorted(mine, key=lambda m: m.sequence)]


async def test_apply_later_stores_the_valid_events_in_one_batch_and_nothing_else(
    service: IngestService, stores: MemoryStores, woken: list[int]
) -> None:
    invalid = ingest_service_pb2.InboundEvent(platform_event_id="bad", channel=WHATSAPP)
    events = [message(1), invalid, message(2), message(1), status(1)]

    results = await service.ingest(TENANT, events, apply_later=True)

    assert [r.outcome for r in results] == [QUEUED, REJECTED, QUEUED, DUPLICATE, QUEUED]
    assert results[1].error_reason == "INVALID_EVENT"
    [batch] = stores.ingest_inbox.batches
    stored = ingest_service_pb2.IngestEventsRequest.FromString(batch["events"]).events
    assert [e.platform_event_id for e in stored] == [
        "wamid.15550001.1",
        "wamid.15550001.2",
        "status.1",
    ]
    assert batch["count"] == 3
    assert stores.messages.all() == []  # applied later, not in the call
    assert not await stores.ingest_log.seen(TENANT, WHATSAPP, "wamid.15550001.1")
    assert woken == [1]


async def test_the_worker_applies_a_batch_once_and_removes_it(
    service: IngestService, worker: InboxWorker, stores: MemoryStores, applied: Applied
) -> None:
    await service.ingest(TENANT, [message(1), message(2), status(1)], apply_later=True)

    with capture_logs() as logs:
        await run_once(worker)

    assert texts(stores) == ["m1", "m2"]
    assert stores.ingest_inbox.batches == []
    assert applied.counts == {"accepted": 2, "deferred": 1}
    [entry] = [e for e in logs if e["event"] == "queued events applied"]
    assert entry["tenant_id"] == TENANT
    assert entry["accepted"] == 2


async def test_messages_do_not_overtake_a_tenants_waiting_batch(
    service: IngestService, worker: InboxWorker, stores: MemoryStores
) -> None:
    await service.ingest(TENANT, [message(1), message(2)], apply_later=True)

    later = await service.ingest(TENANT, [message(3)])
    statuses = await service.ingest(TENANT, [status(1)])
    elsewhere = await service.ingest(OTHER, [message(1)])

    assert [r.outcome for r in later] == [QUEUED]  # behind the waiting batch
    assert [r.outcome for r in statuses] == [DEFERRED]  # statuses have no order to keep
    assert [r.outcome for r in elsewhere] == [ACCEPTED]  # another tenant's batch is no bar
    await run_once(worker)
    assert texts(stores) == ["m1", "m2", "m3"]
    assert texts(stores, OTHER) == ["m1"]
    assert stores.ingest_inbox.batches == []
    assert [r.outcome for r in await service.ingest(TENANT, [message(4)])] == [ACCEPTED]


async def test_a_later_batch_waits_for_an_earlier_one_claimed_elsewhere(
    service: IngestService, worker: InboxWorker, stores: MemoryStores, clock: Clock
) -> None:
    await service.ingest(TENANT, [message(1)], apply_later=True)
    clock.now += dt.timedelta(milliseconds=1)
    await service.ingest(TENANT, [message(2)], apply_later=True)
    first, _second = stores.ingest_inbox.batches
    # Another process holds the first batch's lease.
    first.update(status="running", owner="another-process", due_time=clock() + LEASE)

    await run_once(worker)

    assert texts(stores) == []  # the second waited rather than overtake the first
    assert [b["attempts"] for b in stores.ingest_inbox.batches] == [0, 0]


async def test_a_batch_applied_twice_changes_nothing_the_second_time(
    service: IngestService, worker: InboxWorker, stores: MemoryStores, clock: Clock
) -> None:
    events = [message(1), message(2)]
    await service.ingest(TENANT, events, apply_later=True)
    # The process that applied it died before removing it: the lease lapses, and it is due.
    await service.apply(TENANT, events)
    assert texts(stores) == ["m1", "m2"]
    clock.now += LEASE

    await run_once(worker)

    assert texts(stores) == ["m1", "m2"]
    assert stores.ingest_inbox.batches == []


async def test_a_store_outage_gives_the_batch_back_without_using_an_attempt(
    service: IngestService,
    worker: InboxWorker,
    stores: MemoryStores,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await service.ingest(TENANT, [message(1)], apply_later=True)

    async def unavailable(*_args: object) -> set[tuple[int, str]]:
        raise StoreUnavailableError("the store timed out")

    monkeypatch.setattr(stores.ingest_log, "seen_many", unavailable)
    for _ in range(MAX_ATTEMPTS + 2):
        await run_once(worker)
        clock.now += dt.timedelta(seconds=2)

    [batch] = stores.ingest_inbox.batches
    assert batch["status"] == "pending"
    assert batch["attempts"] == 0
    monkeypatch.undo()
    await run_once(worker)
    assert texts(stores) == ["m1"]
    assert stores.ingest_inbox.batches == []


async def test_a_batch_that_fails_on_a_bug_is_retried_then_set_aside_for_an_operator(
    service: IngestService,
    worker: InboxWorker,
    stores: MemoryStores,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await service.ingest(TENANT, [message(1)], apply_later=True)
    await service.ingest(OTHER, [message(1)], apply_later=True)

    async def broken(*_args: object) -> set[tuple[int, str]]:
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(stores.ingest_log, "seen_many", broken)
    with capture_logs() as logs:
        for _ in range(MAX_ATTEMPTS):
            await run_once(worker)
            clock.now += dt.timedelta(seconds=61)

    batches = stores.ingest_inbox.batches
    assert [b["status"] for b in batches] == ["set_aside", "set_aside"]
    assert all("ZeroDivisionError" in b["error"] for b in batches)  # the events are kept
    retries = [e for e in logs if e["event"] == "queued events not applied; retrying"]
    assert len(retries) == 2 * (MAX_ATTEMPTS - 1)
    assert [e["log_level"] for e in logs if e["event"] == "queued events set aside"] == [
        "error",
        "error",
    ]
    # Set aside, it no longer holds the tenant's later messages back.
    monkeypatch.undo()
    assert [r.outcome for r in await service.ingest(TENANT, [message(2)])] == [ACCEPTED]


async def test_an_invalid_event_in_a_queued_batch_is_rejected_and_logged_when_applied(
    worker: InboxWorker, stores: MemoryStores, clock: Clock, applied: Applied
) -> None:
    # A batch stored by an older server, whose checks let this through: judged again.
    bad = ingest_service_pb2.InboundEvent(platform_event_id="bad", channel=WHATSAPP)
    request = ingest_service_pb2.IngestEventsRequest(events=[bad, message(1)])
    await stores.ingest_inbox.enqueue(TENANT, request.SerializeToString(), count=2, now=clock())

    with capture_logs() as logs:
        await run_once(worker)

    assert texts(stores) == ["m1"]
    assert applied.counts == {"rejected": 1, "accepted": 1}
    [entry] = [e for e in logs if e["event"] == "queued event rejected"]
    assert entry["reason"] == "INVALID_EVENT"


async def test_a_batch_applied_but_not_removed_is_applied_again_without_effect(
    service: IngestService,
    worker: InboxWorker,
    stores: MemoryStores,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await service.ingest(TENANT, [message(1), message(2)], apply_later=True)

    async def unavailable(*_args: object) -> bool:
        raise StoreUnavailableError("the store timed out")

    monkeypatch.setattr(stores.ingest_inbox, "complete", unavailable)
    with capture_logs() as logs:
        await run_once(worker)

    assert texts(stores) == ["m1", "m2"]
    assert len(stores.ingest_inbox.batches) == 1  # kept: due again once its lease lapses
    [entry] = [e for e in logs if e["event"] == "queued batch applied but not removed"]
    assert entry["log_level"] == "warning"
    monkeypatch.undo()
    clock.now += LEASE
    await run_once(worker)
    assert texts(stores) == ["m1", "m2"]
    assert stores.ingest_inbox.batches == []


async def test_a_store_outage_before_applying_gives_the_batch_back(
    service: IngestService,
    worker: InboxWorker,
    stores: MemoryStores,
    clock: Clock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await service.ingest(TENANT, [message(1)], apply_later=True)

    async def unavailable(*_args: object) -> bool:
        raise StoreUnavailableError("the store timed out")

    monkeypatch.setattr(stores.ingest_inbox, "earlier_waiting", unavailable)
    await run_once(worker)

    [batch] = stores.ingest_inbox.batches
    assert (batch["status"], batch["attempts"]) == ("pending", 0)
    monkeypatch.undo()
    clock.now += dt.timedelta(seconds=2)
    await run_once(worker)
    assert texts(stores) == ["m1"]
