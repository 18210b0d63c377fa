"""The chat server killed (SIGKILL) while it applies a large webhook it stored in its inbox and
acknowledged: a server started anew applies the rest, and every message of the webhook is
stored exactly once, each user's in order."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from tests.support.bridge import WHATSAPP_SECRET, Bridge
from tests.support.faults import FaultReport, Process, chat_server, record
from tests.support.waiting import eventually
from tests.support.whatsapp_batches import messages

pytestmark = pytest.mark.faults
MESSAGES = 1500
USERS = 150


async def test_a_server_killed_while_applying_its_inbox_leaves_each_message_stored_once(
    endpoints: Endpoints,
    server_settings: dict[str, str],
    database: AsyncDatabase[dict[str, Any]],
    tmp_path: Path,
) -> None:
    doomed = await chat_server(endpoints, server_settings, tmp_path, "doomed")
    bridge = Process("chat-bridge", tmp_path / "bridge.log")
    await bridge.start(
        {
            **os.environ,
            **endpoints.as_env(),
            **server_settings,
            "CHAT_SERVER_TARGET": doomed.target,
            "CHAT_BRIDGE_HOST": "127.0.0.1",
            "CHAT_BRIDGE_PORT": str(bridge.port),
        }
    )
    payload, sent = messages(MESSAGES, USERS)
    successor: Process | None = None
    try:
        async with aiohttp.ClientSession() as http:
            client = Bridge(f"http://{bridge.target}", http, None)
            assert await client.meta("whatsapp", payload, WHATSAPP_SECRET) == 200

            async def applying() -> bool:
                return await database["ingested_events"].count_documents({}) > 0

            await eventually(applying, "the inbox to be applied", within=30, interval=0.02)
            doomed.kill()
            killed = time.monotonic()
            waiting = await database["ingest_inbox"].count_documents({})
            applied_before = await database["ingested_events"].count_documents({})
            assert waiting > 0, "everything was applied before the kill: nothing was tested"

            successor = await chat_server(endpoints, server_settings, tmp_path, "successor")

            async def drained() -> bool:
                return await database["ingest_inbox"].count_documents({}) == 0

            # A transaction the killed server left open holds its conversations until the
            # store aborts it (60 s on the embedded store, as on MongoDB).
            await eventually(drained, "the successor to apply the inbox", within=150)
            recovered = time.monotonic() - killed
    finally:
        bridge.stop()
        doomed.stop()
        if successor is not None:
            successor.stop()

    stored: dict[str, list[c.Message]] = defaultdict(list)
    async for document in database["messages"].find(
        {"direction": c.MESSAGE_DIRECTION_INBOUND}, {"pb": 1}
    ):
        message = c.Message.FromString(document["pb"])
        stored[message.platform_message_id].append(message)
    wamids = [m["id"] for m in sent]
    report = FaultReport(
        case="chat-server SIGKILL mid-inbox",
        acknowledged=len(wamids),
        lost=sum(not stored[w] for w in wamids),
        duplicated=sum(len(stored[w]) > 1 for w in wamids),
        retried=0,
        unacknowledged=0,
        errors={},
        retry_info={},
        longest_call_seconds=0.0,
        recovery_seconds=recovered,
        notes=(
            f"{MESSAGES} messages of one webhook acknowledged, {applied_before} applied"
            f" before the kill, {waiting} batches left in the inbox"
        ),
    )
    record(report)
    assert report.lost == 0
    assert report.duplicated == 0
    for user in {m["from"] for m in sent}:
        theirs = sorted(
            (stored[m["id"]][0] for m in sent if m["from"] == user), key=lambda m: m.sequence
        )
        assert [m.content.text.text for m in theirs] == [
            m["text"]["body"] for m in sent if m["from"] == user
        ]
