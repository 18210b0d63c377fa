"""A chat-server process killed (SIGKILL) under SendMessage load: the clients retry, with the
same request_id, on a second server process. Every acknowledged message is stored exactly once,
and so is every message whose call died with the process."""

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
    OutboxWatch,
    SendLoad,
    chat_server,
    received_events,
    record,
    stored_requests,
)

pytestmark = pytest.mark.faults
#: Seconds a transaction the killed process left open holds what it wrote, until MongoDB reaps
#: it (transactionLifetimeLimitSeconds; SecantusDB's is the same and fixed).
TRANSACTION_LIFETIME = 60
#: Seconds before another process's relay takes the outbox over from a killed one (the relay
#: lease's ttl, server/bootstrap.py): the killed relay's events wait that long.
RELAY_LEASE = 60


@pytest.mark.timeout(max(TRANSACTION_LIFETIME, RELAY_LEASE) + 90)
async def test_a_server_killed_under_load_loses_and_doubles_nothing(
    endpoints: Endpoints,
    server_settings: dict[str, str],
    database: AsyncDatabase[dict[str, Any]],
    tmp_path: Path,
) -> None:
    doomed = await chat_server(endpoints, server_settings, tmp_path, "server-doomed")
    survivor = await chat_server(endpoints, server_settings, tmp_path, "server-survivor")
    try:
        async with (
            grpc.aio.insecure_channel(doomed.target) as first,
            grpc.aio.insecure_channel(survivor.target) as second,
        ):
            load = SendLoad(
                [ChatClient(first, "acme"), ChatClient(second, "acme")],
                users=8,
                give_up_after=TRANSACTION_LIFETIME + 30,
            )
            outbox = OutboxWatch(database)
            outbox.start()
            load.start()
            await asyncio.sleep(2)
            acked_before = len(load.tally.acknowledged)
            doomed.kill()
            killed_at = time.monotonic()
            # A transaction the killed process left open holds its conversations until MongoDB
            # reaps it (transactionLifetimeLimitSeconds, 60 s): their users wait that long.
            recovery = await load.recovered(killed_at, within=TRANSACTION_LIFETIME + 20)
            tally = await load.stop()
            # The events the killed relay held reach the broker once the lease lapses.
            events = await received_events(
                endpoints.kafka_bootstrap,
                database,
                at_least=len(tally.acknowledged),
                within=RELAY_LEASE + 20,
            )
            await outbox.stop()
    finally:
        doomed.stop()
        survivor.stop()

    stored = await stored_requests(database)
    lost = [r for r in tally.acknowledged if r not in stored]
    doubled = [r for r, ids in stored.items() if len(ids) > 1]
    events_lost = [m for m in tally.acknowledged.values() if m not in events.by_message]
    events_doubled = [m for m, ids in events.by_message.items() if len(ids) > 1]
    report = FaultReport(
        case="chat-server SIGKILL",
        acknowledged=len(tally.acknowledged),
        lost=len(lost),
        duplicated=len(doubled),
        retried=len(tally.retried),
        unacknowledged=len(tally.unacknowledged),
        errors=dict(tally.errors),
        retry_info=dict(tally.retry_info),
        longest_call_seconds=tally.longest_call,
        recovery_seconds=recovery,
        events_lost=len(events_lost),
        events_duplicated=len(events_doubled),
        event_records_repeated=events.repeated,
        outbox_peak=outbox.peak,
        events_caught_up_seconds=outbox.drained_after(killed_at, before=killed_at),
        notes=f"{acked_before} acknowledged before the kill",
    )
    record(report)
    assert acked_before > 0, "no load before the kill"
    assert tally.retried, "the kill cut no call: nothing was retried"
    assert not tally.unacknowledged
    assert not lost
    assert not doubled
    # A retried call is answered with the message its first try stored, not a second one.
    assert all(stored[r] == [m] for r, m in tally.acknowledged.items())
    assert not events_lost
    assert not events_doubled
    # UNAVAILABLE from the dead process; DEADLINE_EXCEEDED (the client's own deadline) while
    # the survivor waits on the dead process's transaction; never INTERNAL or UNKNOWN.
    assert set(tally.errors) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, tally.errors
    assert recovery is not None
