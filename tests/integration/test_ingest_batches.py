"""Webhooks that batch many events, through the running bridge into the running server: batches
of WhatsApp statuses and of messages, from 30 to as many as the bridge's body limit admits,
each answered 200 and stored once, in order, also when the platform retries it. (Such batches
once passed the bridge's forward deadline and got 503 for ever: the server applied their
events one at a time, then a call at a time.) A batch one IngestEvents call holds is applied
within the call; a larger one is stored whole in the server's inbox and applied after the
platform's 200, so these tests wait for the inbox to drain."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2 as c
from chat.v1 import ingest_service_pb2 as ingest
from devstack.processes import free_port
from devstack.stack import Endpoints
from tests.support.bot_framework import TeamsKeys
from tests.support.bridge import TENANTS, WHATSAPP_SECRET, Bridge, start_bridge
from tests.support.chat_client import JWT_SETTINGS
from tests.support.servers import RunningServer, tenants_file
from tests.support.waiting import eventually
from tests.support.whatsapp_batches import MAX_BODY, messages, statuses

StartServer = Callable[..., Awaitable[RunningServer]]
Database = AsyncDatabase[dict[str, Any]]


@pytest.fixture
async def setup(
    start_server: StartServer, tmp_path: Path, teams_keys: TeamsKeys, stack: Endpoints
) -> AsyncIterator[tuple[Bridge, Database]]:
    """A bridge with the default body limit before a server with a database of its own (the
    replies to its messages stay out of the other tests' way). The database is left to the
    session's stack: dropping it while the server's workers still use it can wait for ever."""
    name = f"batches_{uuid.uuid4().hex[:8]}"
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS),
        CHAT_MONGODB_DATABASE=name,
        # Nothing listens there: the replies' sends fail at once, without the internet.
        CHAT_WHATSAPP_API_BASE=f"http://127.0.0.1:{free_port()}",
        **JWT_SETTINGS,
    )
    runner, url = await start_bridge(
        server.target, tmp_path, teams_keys.metadata_url, max_body=MAX_BODY
    )
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    try:
        async with aiohttp.ClientSession() as http:
            yield Bridge(url, http, server), mongo[name]
    finally:
        await runner.cleanup()
        await mongo.close()


async def drained(db: Database) -> None:
    """Until the events queued in the server's inbox are applied."""

    async def empty() -> bool:
        return await db["ingest_inbox"].count_documents({}) == 0

    await eventually(empty, "the inbox to be applied", within=60)


@pytest.mark.parametrize("count", [30, 100, None], ids=["30", "100", "body-limit"])
async def test_a_batch_of_statuses_is_answered_and_each_is_parked_once(
    setup: tuple[Bridge, Database], count: int | None
) -> None:
    bridge, db = setup
    payload, ids = statuses(count)
    assert len(ids) >= (count or 5000)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    await drained(db)
    assert await db["early_receipts"].count_documents({}) == len(ids)
    assert await db["ingested_events"].count_documents({}) == len(ids)
    # The platform's retry (our 200 lost on the way): deduplicated, answered all the same.
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    await drained(db)
    parked = await db["early_receipts"].distinct("platform_message_id")
    assert sorted(parked) == sorted(ids)
    assert await db["early_receipts"].count_documents({}) == len(ids)
    assert await db["ingested_events"].count_documents({}) == len(ids)


@pytest.mark.parametrize(
    ("count", "users"), [(30, 3), (100, 10), (1200, 40)], ids=["30", "100", "1200"]
)
async def test_a_batch_of_messages_is_answered_and_each_is_stored_once_in_order(
    setup: tuple[Bridge, Database], count: int | None, users: int
) -> None:
    bridge, db = setup
    payload, sent = messages(count, users)
    assert len(sent) >= (count or 5000)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200  # the retry
    await drained(db)
    stored = [
        c.Message.FromString(document["pb"])
        async for document in db["messages"].find(
            {"direction": c.MESSAGE_DIRECTION_INBOUND}, {"pb": 1}
        )
    ]
    assert sorted(m.platform_message_id for m in stored) == sorted(m["id"] for m in sent)
    for sender in {m["from"] for m in sent}:
        theirs = sorted((m for m in stored if m.sender_id == sender), key=lambda m: m.sequence)
        texts = [m.content.text.text for m in theirs]
        assert texts == [m["text"]["body"] for m in sent if m["from"] == sender]
        assert len({m.conversation_id for m in theirs}) == 1

    # Each message has its reply job, or its reply already: the job goes in the transaction
    # that stores the reply, so reading the jobs first and then the replies misses none (a
    # message answered between the two reads is found in both).
    waiting = [document["message_id"] async for document in db["reply_jobs"].find({})]
    answered = {
        c.Message.FromString(document["pb"]).reply_to_message_id
        async for document in db["messages"].find(
            {"direction": c.MESSAGE_DIRECTION_OUTBOUND}, {"pb": 1}
        )
    }
    assert len(waiting) == len(set(waiting))  # one job per message
    assert set(waiting) | answered == {m.id for m in stored}


async def test_a_body_limits_worth_of_messages_is_answered_and_kept_whole_in_the_inbox(
    setup: tuple[Bridge, Database],
) -> None:
    bridge, db = setup
    payload, sent = messages(None, 500)
    assert len(sent) > 5000

    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200

    # Answered once every event is stored, in batches the inbox applies in order: the worker
    # may have applied some already, and none is applied twice.
    waiting = [
        ingest.IngestEventsRequest.FromString(document["events"]).events
        async for document in db["ingest_inbox"].find({}).sort("enqueue_time", 1)
    ]
    applied = await db["ingested_events"].count_documents({})
    queued = [event.platform_event_id for events in waiting for event in events]
    assert applied + len(queued) >= len(sent)
    assert queued == [m["id"] for m in sent][len(sent) - len(queued) :]
