"""The webhook bridge killed (SIGKILL) after the chat server stored what it forwarded, before
it answered the platform: the platform, having no answer, sends the webhooks again (to a
bridge started anew), and each message is stored once."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from devstack.stack import Endpoints
from tests.support.bridge import WHATSAPP_SECRET, Bridge
from tests.support.faults import (
    FaultReport,
    HoldingProxy,
    Process,
    chat_server,
    received_events,
    record,
)
from tests.support.stand_ins import whatsapp_text
from tests.support.waiting import eventually

pytestmark = pytest.mark.faults
WEBHOOKS = 5


async def start_bridge(
    endpoints: Endpoints, settings: dict[str, str], target: str, log: Path
) -> Process:
    bridge = Process("chat-bridge", log)
    await bridge.start(
        {
            **os.environ,
            **endpoints.as_env(),
            **settings,
            "CHAT_SERVER_TARGET": target,
            "CHAT_BRIDGE_HOST": "127.0.0.1",
            "CHAT_BRIDGE_PORT": str(bridge.port),
            "CHAT_LOG_FORMAT": "json",
        }
    )
    return bridge


async def test_a_bridge_killed_before_answering_leaves_the_platforms_retry_stored_once(
    endpoints: Endpoints,
    server_settings: dict[str, str],
    database: AsyncDatabase[dict[str, Any]],
    tmp_path: Path,
) -> None:
    server = await chat_server(endpoints, server_settings, tmp_path, "server")
    proxy = HoldingProxy(server.port)
    await proxy.start()
    doomed = await start_bridge(endpoints, server_settings, proxy.target, tmp_path / "b1.log")
    retried = await start_bridge(endpoints, server_settings, server.target, tmp_path / "b2.log")
    webhooks = [whatsapp_text("1650555" + str(1000 + n)) for n in range(WEBHOOKS)]
    try:
        async with aiohttp.ClientSession() as http:
            first = Bridge(f"http://{doomed.target}", http, None)
            again = Bridge(f"http://{retried.target}", http, None)
            # The bridge's connection to the server is up before the answers are held.
            warm, _ = whatsapp_text("16505559999")
            assert await first.meta("whatsapp", warm, WHATSAPP_SECRET) == 200
            proxy.hold()
            sending = [
                asyncio.create_task(first.meta("whatsapp", payload, WHATSAPP_SECRET))
                for payload, _ in webhooks
            ]

            async def all_stored() -> bool:
                count = await database["messages"].count_documents(
                    {"platform_message_id": {"$in": [wamid for _, wamid in webhooks]}}
                )
                return count >= WEBHOOKS

            await eventually(all_stored, "the forwarded messages to be stored", within=20)
            doomed.kill()
            outcomes = await asyncio.gather(*sending, return_exceptions=True)
            proxy.release()
            unanswered = sum(isinstance(o, aiohttp.ClientError) for o in outcomes)
            # The platform had no answer: it sends each webhook again.
            statuses = [
                await again.meta("whatsapp", payload, WHATSAPP_SECRET) for payload, _ in webhooks
            ]
    finally:
        doomed.stop()
        retried.stop()
        await proxy.stop()
        server.stop()

    stored: dict[str, list[str]] = defaultdict(list)
    async for document in database["messages"].find(
        {"platform_message_id": {"$in": [wamid for _, wamid in webhooks]}}
    ):
        stored[document["platform_message_id"]].append(document["_id"])
    received = await received_events(endpoints.kafka_bootstrap, database, at_least=WEBHOOKS)
    events = received.by_platform_id
    wamids = [wamid for _, wamid in webhooks]
    report = FaultReport(
        case="chat-bridge SIGKILL",
        acknowledged=sum(status == 200 for status in statuses),
        lost=sum(not stored[w] for w in wamids),
        duplicated=sum(len(stored[w]) > 1 for w in wamids),
        retried=len(statuses),
        unacknowledged=unanswered,
        errors={f"HTTP {s}": statuses.count(s) for s in set(statuses) if s != 200},
        retry_info={},
        longest_call_seconds=0.0,
        events_lost=sum(w not in events for w in wamids),
        events_duplicated=sum(len(events[w]) > 1 for w in wamids if w in events),
        event_records_repeated=received.repeated,
        notes=f"{unanswered} of {WEBHOOKS} webhooks unanswered when the bridge died",
    )
    record(report)
    assert unanswered == WEBHOOKS, outcomes
    assert statuses == [200] * WEBHOOKS
    assert all(len(stored[w]) == 1 for w in wamids), dict(stored)
    assert all(len(events.get(w, ())) == 1 for w in wamids), dict(events)


async def test_a_bridge_stopped_mid_webhook_answers_it_before_exiting(
    endpoints: Endpoints, server_settings: dict[str, str], tmp_path: Path
) -> None:
    """SIGTERM (a deploy) while a webhook is being forwarded: the bridge stops taking new
    connections, the webhook in flight gets its answer, then the bridge exits 0."""
    server = await chat_server(endpoints, server_settings, tmp_path, "server")
    proxy = HoldingProxy(server.port)
    await proxy.start()
    bridge = await start_bridge(endpoints, server_settings, proxy.target, tmp_path / "bridge.log")
    try:
        async with aiohttp.ClientSession() as http:
            client = Bridge(f"http://{bridge.target}", http, None)
            warm, _ = whatsapp_text("16505558888")
            assert await client.meta("whatsapp", warm, WHATSAPP_SECRET) == 200
            proxy.hold()  # the server's answer is held: the webhook stays in flight
            payload, _ = whatsapp_text("16505558889")
            in_flight = asyncio.create_task(client.meta("whatsapp", payload, WHATSAPP_SECRET))
            await asyncio.sleep(0.5)
            bridge.terminate()
            await asyncio.sleep(0.3)
            proxy.release()
            status = await asyncio.wait_for(in_flight, 15)
            exit_code = await bridge.wait(15)
    finally:
        bridge.stop()
        await proxy.stop()
        server.stop()
    assert status == 200
    assert exit_code == 0
