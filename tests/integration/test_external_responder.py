"""An external ResponderService, served for real on a free port: replies, context, deadline,
and the fallback when it is slow or gone."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from pymongo import AsyncMongoClient

from chat.v1 import common_pb2 as c
from chat.v1 import responder_service_pb2 as pb
from chat.v1 import responder_service_pb2_grpc
from devstack.processes import free_port
from devstack.stack import Endpoints
from server.services.external_responder import FALLBACK_TEXT
from tests.support.chat_client import JWT_SETTINGS, TENANTS, ChatClient
from tests.support.ingest import Bridge, conversation_of, history, replied, text_event
from tests.support.servers import RunningServer, tenants_file

StartServer = Callable[..., Awaitable[RunningServer]]


class Bot(responder_service_pb2_grpc.ResponderServiceServicer):
    """Answers "echo: <text> (<n> earlier)" and counts calls; can be made slow."""

    def __init__(self) -> None:
        self.delay = 0.0
        #: When set, replies wait for it.
        self.gate: asyncio.Event | None = None
        self.requests: list[pb.GenerateReplyRequest] = []

    async def GenerateReply(self, request: pb.GenerateReplyRequest, _context: Any) -> Any:  # noqa: N802
        self.requests.append(request)
        await asyncio.sleep(self.delay)
        if self.gate is not None:
            await self.gate.wait()
        text = f"echo: {request.message.content.text.text} ({len(request.history)} earlier)"
        reply = pb.GenerateReplyResponse(replies=[c.Content(text=c.TextContent(text=text))])
        reply.context_updates.update({"echoed": True})
        return reply


@pytest.fixture
async def bot() -> AsyncIterator[tuple[Bot, int]]:
    servicer = Bot()
    server = grpc.aio.server()
    responder_service_pb2_grpc.add_ResponderServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, port
    await server.stop(None)


@pytest.fixture
async def client_for(
    start_server: StartServer, tmp_path: Path
) -> AsyncIterator[Callable[[str], Awaitable[ChatClient]]]:
    channels: list[grpc.aio.Channel] = []

    async def make(target: str) -> ChatClient:
        server = await start_server(
            CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS),
            CHAT_RESPONDER_TARGET=target,
            CHAT_RESPONDER_TIMEOUT_MS="500",
            **JWT_SETTINGS,
        )
        channels.append(grpc.aio.insecure_channel(server.target))
        return ChatClient(channels[-1], "acme")

    yield make
    for channel in channels:
        await channel.close()


async def test_replies_come_from_the_external_responder(
    client_for: Callable[[str], Awaitable[ChatClient]], bot: tuple[Bot, int]
) -> None:
    servicer, port = bot
    acme = await client_for(f"127.0.0.1:{port}")
    first = await acme.send("hello there")
    assert first.replies[0].content.text.text == "echo: hello there (0 earlier)"
    assert first.session.context["echoed"] is True
    second = await acme.send("again", user_id=first.conversation.user_id)
    assert second.replies[0].content.text.text == "echo: again (2 earlier)"
    # The last request about this conversation: the server's reply worker may be answering
    # other tests' pending jobs through the same bot meanwhile.
    request = [r for r in servicer.requests if r.conversation.id == first.conversation.id][-1]
    assert request.tenant_id == "acme"
    assert [m.sequence for m in request.history] == [1, 2]
    assert request.session_context["echoed"] is True


async def test_a_slow_responder_gets_the_fallback_within_the_deadline(
    client_for: Callable[[str], Awaitable[ChatClient]], bot: tuple[Bot, int]
) -> None:
    servicer, port = bot
    servicer.delay = 5.0
    acme = await client_for(f"127.0.0.1:{port}")
    started = time.monotonic()
    reply = await acme.send("hello")
    assert time.monotonic() - started < 4.0  # the 500 ms deadline, not the bot's 5 s
    assert reply.replies[0].content.text.text == FALLBACK_TEXT
    assert reply.message.sequence == 1  # the user's message is stored all the same


async def test_an_unreachable_responder_gets_the_fallback(
    client_for: Callable[[str], Awaitable[ChatClient]],
) -> None:
    acme = await client_for(f"127.0.0.1:{free_port()}")
    reply = await acme.send("hello")
    assert reply.replies[0].content.text.text == FALLBACK_TEXT
    assert reply.conversation.message_count == 2


async def test_replies_answered_together_store_all_but_a_job_taken_over(
    start_server: StartServer, tmp_path: Path, bot: tuple[Bot, int], stack: Endpoints
) -> None:
    """Two reply jobs are answered at once (the bot holds both); meanwhile another process
    takes one over. The other's reply is stored; the taken-over one is left to its new owner,
    not answered here too."""
    servicer, port = bot
    servicer.gate = asyncio.Event()
    # A database of its own: another test's server working the same reply queue could answer
    # one of these jobs itself, or hand this server's bot a job of its own.
    name = f"taken_over_{uuid.uuid4().hex[:8]}"
    server = await start_server(
        CHAT_TENANTS_FILE=tenants_file(tmp_path, TENANTS),
        CHAT_RESPONDER_TARGET=f"127.0.0.1:{port}",
        CHAT_RESPONDER_TIMEOUT_MS="20000",
        CHAT_MONGODB_DATABASE=name,
        **JWT_SETTINGS,
    )
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.mongodb_uri)
    jobs = mongo[name]["reply_jobs"]
    try:
        async with grpc.aio.insecure_channel(server.target) as channel:
            bridge, client = Bridge(channel, "acme"), ChatClient(channel, "acme")
            users = ["1555" + uuid.uuid4().hex[:7] for _ in range(2)]
            results = [r for u in users for r in await bridge.ingest(text_event(u, "hi"))]
            kept, taken = [await conversation_of(mongo, r.message_id, name) for r in results]
            deadline = time.monotonic() + 20
            # Both jobs claimed, both waiting for the bot.
            while {r.conversation.id for r in servicer.requests} != {kept, taken}:
                assert time.monotonic() < deadline, "the jobs were not both taken"
                await asyncio.sleep(0.05)
            taken_over = await jobs.update_one(
                {"conversation_id": taken}, {"$set": {"owner": "another-process"}}
            )
            assert taken_over.modified_count == 1
            servicer.gate.set()

            answered = await replied(client, kept, 2)
            assert answered[1].content.text.text == "echo: hi (1 earlier)"
            await asyncio.sleep(1.0)  # the other job's attempt has ended by now
            assert len(await history(client, taken)) == 1  # the user's message, no reply
            assert await jobs.count_documents({"conversation_id": kept}) == 0
            job = await jobs.find_one({"conversation_id": taken})
            assert job is not None
            assert job["owner"] == "another-process"
    finally:
        await mongo.close()
