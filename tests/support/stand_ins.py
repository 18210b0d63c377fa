"""The platform sandbox as every platform's API for the tests, and the fixtures that start a
chat server (with a bridge in front) delivering to it, on a database of the test's own."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2 as c
from devstack.sandbox import Sandbox, start_sandbox
from devstack.sandbox.core import TenantSecrets
from devstack.stack import Endpoints
from tests.support.bot_framework import TEAMS_APP, TeamsKeys
from tests.support.bridge import (
    MESSENGER_SECRET,
    SLACK_SECRET,
    TENANTS,
    WHATSAPP_SECRET,
    Bridge,
    sample,
    start_bridge,
    unique,
)
from tests.support.chat_client import JWT_SETTINGS
from tests.support.servers import RunningServer, ServerStarter, tenants_file
from tests.support.waiting import eventually

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncDatabase[dict[str, Any]]


#: The platforms' APIs as the tests see them: the sandbox `make run` starts (devstack/sandbox),
#: with its record (``requests``, ``sent``, ``to``...) and scripted answers (``script``, ``stall``).
Platforms = Sandbox


@pytest.fixture
async def platforms() -> AsyncIterator[Sandbox]:
    """The sandbox, not connected to a bridge: it answers and records, and sends no webhooks
    (receipts) unless a test connects it (``sandbox_stack``)."""
    sandbox = await start_sandbox()
    yield sandbox
    await sandbox.stop()


@pytest.fixture
def database_name() -> str:
    """A database of the test's own: the delivery queue is shared by every server on a
    database, and other tests' servers (with other platform URLs) must not take these."""
    return "delivery_" + uuid.uuid4().hex[:12]


#: Starts a chat server sending to the stand-ins, with a bridge in front; its keyword
#: arguments override settings.
DeliveryStack = Callable[..., contextlib.AbstractAsyncContextManager[tuple[RunningServer, Bridge]]]


@pytest.fixture
def delivery_stack(
    start_server: StartServer,
    tmp_path: Path,
    platforms: Platforms,
    teams_keys: TeamsKeys,
    database_name: str,
) -> DeliveryStack:
    @contextlib.asynccontextmanager
    async def start(**overrides: str) -> AsyncIterator[tuple[RunningServer, Bridge]]:
        settings = {
            "CHAT_TENANTS_FILE": tenants_file(tmp_path, TENANTS),
            "CHAT_MONGODB_DATABASE": database_name,
            "CHAT_WHATSAPP_API_BASE": platforms.base,
            "CHAT_MESSENGER_API_BASE": platforms.base,
            "CHAT_SLACK_API_BASE": platforms.base,
            "CHAT_TEAMS_TOKEN_URL": f"{platforms.base}/token",
            "CHAT_GRAPH_API_VERSION": "v23.0",
            "CHAT_DELIVERY_BASE_DELAY_MS": "50",
            "CHAT_DELIVERY_MAX_ATTEMPTS": "3",
            **JWT_SETTINGS,
            **overrides,
        }
        server = await start_server(**settings)
        runner, url = await start_bridge(server.target, tmp_path, teams_keys.metadata_url)
        try:
            async with aiohttp.ClientSession() as http:
                yield server, Bridge(url, http, server)
        finally:
            await runner.cleanup()

    return start


@pytest.fixture
async def stack_up(delivery_stack: DeliveryStack) -> AsyncIterator[tuple[RunningServer, Bridge]]:
    async with delivery_stack() as running:
        yield running


#: The test tenant as the sandbox posts webhooks for it (tests/support/bridge.py's TENANTS).
SANDBOX_TENANT = TenantSecrets(
    tenant_id="acme",
    whatsapp_secret=WHATSAPP_SECRET,
    phone_number_id="106540352242922",
    messenger_secret=MESSENGER_SECRET,
    page_id="PAGE",
    slack_secret=SLACK_SECRET,
    teams_app_id=TEAMS_APP,
    # The tokens of TENANTS: a connected sandbox refuses a send with another.
    whatsapp_token="t",
    messenger_token="t",
    slack_token="xoxb-t",
)


@pytest.fixture
async def sandbox_stack(
    delivery_stack: DeliveryStack, platforms: Sandbox
) -> AsyncIterator[tuple[RunningServer, Bridge, Sandbox]]:
    """A chat server and bridge with the sandbox connected both ways, as under `make run`:
    users' webhooks and the platforms' receipts go to the bridge (receipts sent quickly)."""
    async with delivery_stack(CHAT_MEDIA_FETCH_ALLOW_PRIVATE="true") as (server, bridge):
        platforms.state.receipt_delay = 0.05
        platforms.connect(bridge.url, SANDBOX_TENANT)
        yield server, bridge, platforms


@pytest.fixture
async def delivery_mongo(
    stack: Endpoints, database_name: str, start_server: ServerStarter
) -> AsyncIterator[Mongo]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client[database_name]
    # The servers first: dropping the database under a server's open transaction (a reply
    # job's) stalled the embedded database until the test timed out.
    await start_server.stop_all()
    await client.drop_database(database_name)
    await client.close()


def whatsapp_text(user: str, text: str = "hello") -> tuple[Any, str]:
    payload = sample("whatsapp", "webhook_text_message.json")
    value = payload["entry"][0]["changes"][0]["value"]
    message = value["messages"][0]
    message["from"] = user
    message["text"]["body"] = text
    value["contacts"][0]["wa_id"] = user
    payload, [wamid] = unique(payload, message["id"])
    return payload, wamid


async def reply_of(mongo: Mongo, inbound_platform_id: str) -> c.Message:
    """The bot's reply to the inbound message with this platform id (the first outbound
    message after it in its conversation), once it exists."""
    inbound = await mongo["messages"].find_one({"platform_message_id": inbound_platform_id})
    assert inbound is not None
    found: list[c.Message] = []

    async def replied() -> bool:
        document = await mongo["messages"].find_one(
            {
                "conversation_id": inbound["conversation_id"],
                "direction": c.MESSAGE_DIRECTION_OUTBOUND,
                "sequence": {"$gt": inbound["sequence"]},
            },
            sort=[("sequence", 1)],
        )
        if document is None:
            return False
        found[:] = [c.Message.FromString(document["pb"])]
        return True

    await eventually(replied, "the reply")
    return found[0]


async def whatsapp_reply(bridge: Bridge, mongo: Mongo, user: str, text: str = "hello") -> c.Message:
    """A signed WhatsApp text webhook from ``user`` through the bridge; the bot's reply to it,
    once stored."""
    payload, wamid = whatsapp_text(user, text)
    assert await bridge.meta("whatsapp", payload, WHATSAPP_SECRET) == 200
    return await reply_of(mongo, wamid)


async def status_of(mongo: Mongo, message_id: str) -> int:
    document = await mongo["messages"].find_one({"_id": message_id})
    assert document is not None
    return int(document["delivery_status"])


async def sent(mongo: Mongo, *message_ids: str, what: str) -> None:
    """Until each message's send has its outcome committed: SENT, with the platform's id."""

    async def all_sent() -> bool:
        statuses = [await status_of(mongo, message_id) for message_id in message_ids]
        return statuses == [c.DELIVERY_STATUS_SENT] * len(message_ids)

    await eventually(all_sent, what)
