"""A local HTTP server standing in for every platform's send API, and the fixtures that start
a chat server (with a bridge in front) delivering to it, on a database of the test's own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import common_pb2 as c
from devstack.stack import Endpoints
from tests.support.bot_framework import TeamsKeys
from tests.support.bridge import (
    TENANTS,
    WHATSAPP_SECRET,
    Bridge,
    sample,
    start_bridge,
    unique,
)
from tests.support.chat_client import JWT_SETTINGS
from tests.support.servers import RunningServer, tenants_file
from tests.support.waiting import eventually

StartServer = Callable[..., Awaitable[RunningServer]]
Mongo = AsyncDatabase[dict[str, Any]]


@dataclass
class Platforms:
    """One local HTTP server standing in for every platform's send API."""

    base: str = ""
    requests: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    #: When each request arrived (time.monotonic()), by its index in ``requests``.
    times: list[float] = field(default_factory=list)
    #: Recipients whose next WhatsApp send is left unanswered until ``release`` is set.
    stall: set[str] = field(default_factory=set)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    #: Scripted answers per recipient: (status, body, headers), used in order; when none is
    #: left, the API succeeds. Per recipient, since earlier tests' deliveries may arrive too.
    script: dict[str, list[tuple[int, dict[str, Any], dict[str, str]]]] = field(
        default_factory=dict
    )

    def sent(self, api: str) -> list[tuple[str, dict[str, str], Any]]:
        return [r for r in self.requests if r[0].startswith(api)]

    def to(self, api: str, recipient: str) -> list[tuple[str, dict[str, str], Any]]:
        """The messages sent to one recipient (the queue is shared: earlier tests' deliveries
        may still arrive here, for their own recipients); sender actions left out."""
        return [r for r in self.requests_to(api, recipient) if not is_action(r[2])]

    def actions_to(self, api: str, recipient: str) -> list[Any]:
        """The sender actions (typing, read) about one recipient or message, in order."""
        return [r[2] for r in self.requests_to(api, recipient) if is_action(r[2])]

    def times_to(self, api: str, recipient: str) -> list[float]:
        """When each message to one recipient arrived (time.monotonic()), in order."""
        return [
            at
            for request, at in zip(self.requests, self.times, strict=True)
            if request[0].startswith(api)
            and not is_action(request[2])
            and (recipient in json.dumps(request[2]) or recipient in request[0])
        ]

    def requests_to(self, api: str, recipient: str) -> list[tuple[str, dict[str, str], Any]]:
        return [r for r in self.sent(api) if recipient in json.dumps(r[2]) or recipient in r[0]]


def is_action(body: Any) -> bool:
    """A typing indicator or read receipt rather than a message."""
    return isinstance(body, dict) and (
        "sender_action" in body or body.get("status") == "read" or body.get("type") == "typing"
    )


def add_upload_routes(
    app: web.Application,
    stand_in: Platforms,
    record: Callable[[web.Request, str], Awaitable[Any]],
) -> None:
    """The platforms' media uploads: WhatsApp /media, Messenger's Attachment Upload API,
    Slack's external upload (reserve, upload, complete)."""

    async def upload(request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        body = {
            "messaging_product": form["messaging_product"],
            "type": form["type"],
            "size": len(upload.file.read()),
            "filename": upload.filename,
        }
        stand_in.requests.append((f"whatsapp-media {request.path}", dict(request.headers), body))
        stand_in.times.append(time.monotonic())
        return web.json_response({"id": "uploaded-media-1"})

    async def attachment(request: web.Request) -> web.Response:
        form = await request.post()
        data = form["filedata"]
        assert isinstance(data, web.FileField)
        body = {
            "message": json.loads(str(form["message"])),
            "size": len(data.file.read()),
            "filename": data.filename,
            "content_type": data.content_type,
        }
        stand_in.requests.append((f"messenger-upload {request.path}", dict(request.headers), body))
        stand_in.times.append(time.monotonic())
        return web.json_response({"attachment_id": "1857777774821032"})

    async def slack_reserve(request: web.Request) -> web.Response:
        body = await record(request, "slack-files")
        file_id = f"F{uuid.uuid4().hex[:10].upper()}"
        return web.json_response(
            {
                "ok": True,
                "upload_url": f"{stand_in.base}/upload/{file_id}",
                "file_id": file_id,
                "filename": body["filename"],
            }
        )

    async def slack_upload(request: web.Request) -> web.Response:
        data = await request.read()
        stand_in.requests.append(
            (f"slack-upload {request.path}", dict(request.headers), {"size": len(data)})
        )
        stand_in.times.append(time.monotonic())
        return web.Response(text=f"OK - {len(data)}")

    async def slack_complete(request: web.Request) -> web.Response:
        body = await record(request, "slack-files")
        return web.json_response({"ok": True, "files": body["files"]})

    app.router.add_post("/api/files.getUploadURLExternal", slack_reserve)
    app.router.add_post("/upload/{file_id}", slack_upload)
    app.router.add_post("/api/files.completeUploadExternal", slack_complete)
    app.router.add_post("/v23.0/me/message_attachments", attachment)
    app.router.add_post("/v23.0/{phone}/media", upload)


@pytest.fixture
async def platforms() -> AsyncIterator[Platforms]:
    stand_in = Platforms()

    def answer(recipient: str, success: dict[str, Any]) -> web.Response:
        scripted = stand_in.script.get(recipient)
        if scripted:
            status, body, headers = scripted.pop(0)
            return web.json_response(body, status=status, headers=headers)
        return web.json_response(success)

    async def record(request: web.Request, api: str) -> Any:
        if request.content_type == "application/json":
            body: Any = await request.json()
        else:
            body = dict(await request.post())
        stand_in.requests.append((f"{api} {request.path}", dict(request.headers), body))
        stand_in.times.append(time.monotonic())
        return body

    async def whatsapp(request: web.Request) -> web.Response:
        body = await record(request, "whatsapp")
        if body.get("to") in stand_in.stall:
            stand_in.stall.discard(body["to"])
            await stand_in.release.wait()  # the platform has it; the answer comes late
        return answer(
            body.get("to", ""),
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": "x", "wa_id": "x"}],
                "messages": [{"id": f"wamid.out-{uuid.uuid4().hex}"}],
            },
        )

    async def messenger(request: web.Request) -> web.Response:
        body = await record(request, "messenger")
        return answer(
            body["recipient"]["id"], {"recipient_id": "1", "message_id": f"m_{uuid.uuid4().hex}"}
        )

    async def slack(request: web.Request) -> web.Response:
        body = await record(request, "slack")
        return answer(
            body.get("channel", ""), {"ok": True, "channel": "C111", "ts": f"{time.time():.6f}"}
        )

    async def token(request: web.Request) -> web.Response:
        await record(request, "teams-token")
        return answer("token", {"access_token": "teams-app-token", "expires_in": 3600})

    async def teams(request: web.Request) -> web.Response:
        await record(request, "teams")
        return answer(request.match_info["conversation"], {"id": f"teams-{uuid.uuid4().hex}"})

    async def health(request: web.Request) -> web.Response:
        """The platforms' cheapest authenticated calls (CheckChannel); scripted as "health"."""
        api = "slack" if request.path.startswith("/api/") else "graph"
        stand_in.requests.append((f"{api}-health {request.path}", dict(request.headers), {}))
        stand_in.times.append(time.monotonic())
        return answer("health", {"ok": True, "id": "1"})

    app = web.Application()
    app.router.add_get("/v23.0/me", health)
    app.router.add_get("/v23.0/{phone}", health)
    app.router.add_post("/api/auth.test", health)
    add_upload_routes(app, stand_in, record)
    app.router.add_post("/v23.0/me/messages", messenger)
    app.router.add_post("/v23.0/{phone}/messages", whatsapp)
    app.router.add_post("/api/chat.postMessage", slack)
    app.router.add_post("/token", token)
    app.router.add_post("/v3/conversations/{conversation}/activities", teams)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    stand_in.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield stand_in
    stand_in.release.set()  # answer whatever is still held, so the server stops at once
    await runner.cleanup()


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


@pytest.fixture
async def delivery_mongo(stack: Endpoints, database_name: str) -> AsyncIterator[Mongo]:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri, tz_aware=True)
    yield client[database_name]
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
