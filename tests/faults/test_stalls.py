"""MongoDB, Redis and the Kafka broker each stopped (SIGSTOP) for 5 s under SendMessage load,
then resumed (SIGCONT). No acknowledged message or event is lost or doubled, the clients see
UNAVAILABLE or their own deadline (never INTERNAL or UNKNOWN), and the time to recover is
measured: until every user's messages are acknowledged again, and until health is SERVING."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from devstack.stack import Endpoints
from tests.support.chat_client import ChatClient
from tests.support.faults import (
    FaultReport,
    FaultStack,
    HealthWatch,
    OutboxWatch,
    SendLoad,
    chat_server,
    received_events,
    record,
    stored_requests,
)

pytestmark = pytest.mark.faults
STALL_SECONDS = 5.0


@pytest.mark.parametrize("dependency", ["mongodb", "redis", "kafka"])
async def test_a_stalled_dependency_loses_and_doubles_nothing_and_recovery_is_prompt(
    dependency: str,
    fault_stack: FaultStack,
    endpoints: Endpoints,
    server_settings: dict[str, str],
    database: AsyncDatabase[dict[str, Any]],
    tmp_path: Path,
) -> None:
    server = await chat_server(endpoints, server_settings, tmp_path, "server")
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            health = HealthWatch(channel)
            health.start()
            outbox = OutboxWatch(database)
            outbox.start()
            load = SendLoad([ChatClient(channel, "acme")], users=6)
            load.start()
            await asyncio.sleep(2)
            acked_before = len(load.tally.acknowledged)
            paused_at = time.monotonic()
            with fault_stack.paused(dependency):
                await asyncio.sleep(STALL_SECONDS)
            resumed_at = time.monotonic()
            recovery = await load.recovered(resumed_at, within=20)
            await asyncio.sleep(1)
            tally = await load.stop()
            await asyncio.sleep(1)  # health's last word
            await health.stop()
            await outbox.stop()
    finally:
        server.stop()

    stored = await stored_requests(database)
    lost = [r for r in tally.acknowledged if r not in stored]
    doubled = [r for r, ids in stored.items() if len(ids) > 1]
    events = await received_events(endpoints.kafka_bootstrap, database, at_least=len(stored))
    events_lost = [m for m in tally.acknowledged.values() if m not in events.by_message]
    events_doubled = [m for m, ids in events.by_message.items() if len(ids) > 1]
    report = FaultReport(
        case=f"{dependency} SIGSTOP {STALL_SECONDS:g}s",
        acknowledged=len(tally.acknowledged),
        lost=len(lost),
        duplicated=len(doubled),
        retried=len(tally.retried),
        unacknowledged=len(tally.unacknowledged),
        errors=dict(tally.errors),
        retry_info=dict(tally.retry_info),
        longest_call_seconds=tally.longest_call,
        recovery_seconds=recovery,
        health_serving_after_seconds=health.serving_again_after(resumed_at),
        health_went_down=health.went_down,
        outbox_peak=outbox.peak,
        events_caught_up_seconds=outbox.drained_after(resumed_at, before=paused_at),
        events_lost=len(events_lost),
        events_duplicated=len(events_doubled),
        event_records_repeated=events.repeated,
        notes=f"{acked_before} acknowledged before the stall",
    )
    record(report)
    assert acked_before > 0, "no load before the stall"
    assert not tally.unacknowledged
    assert not lost
    assert not doubled
    assert all(stored[r] == [m] for r, m in tally.acknowledged.items())
    assert not events_lost
    assert not events_doubled
    assert not {"INTERNAL", "UNKNOWN"} & set(tally.errors), tally.errors
    assert recovery is not None
    assert recovery < 3, "calls did not resume promptly"
    after = health.serving_again_after(resumed_at)
    assert after is not None
    assert after < 1.5, "health did not follow the recovery"
    if dependency == "redis":
        # Bounded: the session read fails after CHAT_REDIS_TIMEOUT_MS instead of waiting out
        # the stall, and the caller hears UNAVAILABLE.
        assert tally.longest_call < 2, tally.longest_call
    if dependency == "kafka":
        # Kafka is not on the request path: events wait in the outbox.
        assert not tally.errors, tally.errors
