"""Several of everything at once: two chat-servers, two bridges and two workers, as processes,
on a three-primary Redis Cluster and the embedded MongoDB (and the session's Kafka).

Messages sent through either server and webhooks through either bridge are stored in the order
sent; the same webhook through both bridges is stored once; a stream on one server hears what
the other stored; one tenant's rate limit is one limit across both servers; the workers apply
each message's event once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from chat.v1 import chat_service_pb2 as chat
from chat.v1 import common_pb2 as c
from devstack.stack import EmbeddedStack, Endpoints
from tests.support.bridge import WHATSAPP_SECRET, Bridge
from tests.support.chat_client import JWT_SETTINGS, ChatClient
from tests.support.faults import Process, chat_server
from tests.support.kafka_events import group_at_end
from tests.support.servers import tenants_file
from tests.support.stand_ins import whatsapp_text
from tests.support.streams import Stream
from tests.support.waiting import eventually

# Not a `redis` test: it always runs on a cluster (its own, or the session's), so running it
# again in the Redis-only runs would test nothing new.
TENANT = "scale-" + uuid.uuid4().hex[:8]
LIMITED = "scale-limited-" + uuid.uuid4().hex[:8]
LIMITED_BURST = 4


@pytest.fixture(scope="module")
def cluster_stack(
    stack: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Endpoints]:
    """The session's servers, with a Redis Cluster: the session's when it runs on one
    (`make test-redis-cluster`), else three primaries started for this module."""
    if stack.redis_cluster:
        yield stack
        return
    environ = {**os.environ, **stack.as_env(), "CHAT_REDIS_URL": "", "CHAT_REDIS_CLUSTER": "true"}
    cluster = EmbeddedStack(data_dir=tmp_path_factory.mktemp("cluster"), environ=environ)
    endpoints = cluster.start()
    assert endpoints.redis_cluster
    yield endpoints
    cluster.stop()


@dataclass
class Deployment:
    servers: list[Process]
    bridges: list[Process]
    workers: list[Process]
    database: AsyncDatabase[dict[str, Any]]


def settings(tmp_path: Path) -> dict[str, str]:
    nowhere = "http://127.0.0.1:9"  # replies to the platforms fail fast; never reached
    tenants = f"""
tenants:
  - id: {TENANT}
    channels:
      whatsapp: {{verify_token: wa-verify, app_secret: {WHATSAPP_SECRET}, access_token: t,
                 phone_number_id: "106540352242922"}}
  - id: {LIMITED}
    quotas: {{requests_per_second: 0.01, burst: {LIMITED_BURST}}}
"""
    return {
        **JWT_SETTINGS,
        "CHAT_TENANTS_FILE": tenants_file(tmp_path, tenants),
        "CHAT_WHATSAPP_API_BASE": nowhere,
        "CHAT_MESSENGER_API_BASE": nowhere,
        "CHAT_SLACK_API_BASE": nowhere,
    }


async def start(
    script: str, endpoints: Endpoints, env: dict[str, str], log: Path, listen: str
) -> Process:
    """A chat-bridge or chat-worker process; ``listen`` names the setting of the address it
    listens on (the worker's is its metrics: that port open says it is up)."""
    process = Process(script, log)
    address = str(process.port) if listen == "CHAT_BRIDGE_PORT" else process.target
    await process.start(
        {**os.environ, **endpoints.as_env(), "CHAT_LOG_FORMAT": "json", **env, listen: address}
    )
    return process


@pytest.fixture(scope="module")
async def deployment(
    cluster_stack: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    logs = tmp_path_factory.mktemp("scale-out")
    env = settings(logs)
    group = await group_at_end(cluster_stack.kafka_bootstrap)
    started: list[Process] = []
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        cluster_stack.mongodb_uri, tz_aware=True
    )
    try:
        servers = [await chat_server(cluster_stack, env, logs, f"server-{n}") for n in range(2)]
        started += servers
        bridges = []
        for n, server in enumerate(servers):  # each bridge in front of its own server
            bridge_env = {
                **env,
                "CHAT_SERVER_TARGET": server.target,
                "CHAT_BRIDGE_HOST": "127.0.0.1",
            }
            bridges.append(
                await start(
                    "chat-bridge",
                    cluster_stack,
                    bridge_env,
                    logs / f"bridge-{n}.log",
                    listen="CHAT_BRIDGE_PORT",
                )
            )
            started.append(bridges[-1])
        workers = []
        for n in range(2):
            worker_env = {**env, "CHAT_WORKER_GROUP": group}
            workers.append(
                await start(
                    "chat-worker",
                    cluster_stack,
                    worker_env,
                    logs / f"worker-{n}.log",
                    listen="CHAT_WORKER_METRICS_ADDRESS",
                )
            )
            started.append(workers[-1])
        yield Deployment(servers, bridges, workers, mongo["chat"])
    finally:
        for process in reversed(started):
            process.stop()
        await mongo.close()


@contextlib.asynccontextmanager
async def clients(deployment: Deployment, tenant: str) -> AsyncIterator[list[ChatClient]]:
    """A client of each server, as ``tenant``."""
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(server.target))
            for server in deployment.servers
        ]
        yield [ChatClient(channel, tenant) for channel in channels]


async def test_messages_through_both_servers_keep_their_order_and_reach_a_stream_on_either(
    deployment: Deployment,
) -> None:
    async with clients(deployment, TENANT) as (one, two):
        user = "u-" + uuid.uuid4().hex[:8]
        first = await one.send("m0", user_id=user)
        conversation = first.conversation.id
        watching = [Stream(one, conversation), Stream(two, conversation)]
        for stream in watching:
            await stream.live()
        sequences = [first.message.sequence]
        for n in range(1, 9):  # alternately through each server
            sent = await (one, two)[n % 2].send(f"m{n}", user_id=user)
            assert sent.conversation.id == conversation
            sequences.append(sent.message.sequence)
        assert sequences == sorted(sequences)
        assert len(set(sequences)) == len(sequences)
        for stream in watching:  # each server's stream hears both servers' messages, in order
            heard: list[str] = []
            while len(heard) < 8:
                [message] = await stream.messages(1)
                if message.direction == c.MESSAGE_DIRECTION_INBOUND:
                    heard.append(message.content.text.text)
            stream.cancel()
            assert heard == [f"m{n}" for n in range(1, 9)]


async def test_webhooks_through_both_bridges_are_stored_in_order_and_once(
    deployment: Deployment,
) -> None:
    user = "1650" + str(uuid.uuid4().int)[:7]
    async with aiohttp.ClientSession() as http:
        bridges = [Bridge(f"http://{b.target}", http, None) for b in deployment.bridges]
        sent: list[str] = []
        for n in range(6):  # alternately through each bridge, each answered before the next
            payload, wamid = whatsapp_text(user, f"w{n}")
            payload["entry"][0]["changes"][0]["value"]["messages"][0]["timestamp"] = str(
                1_760_000_000 + n
            )
            assert await bridges[n % 2].meta("whatsapp", payload, WHATSAPP_SECRET, TENANT) == 200
            sent.append(wamid)
        twice, twice_id = whatsapp_text(user, "to both bridges")
        statuses = await asyncio.gather(
            *(bridge.meta("whatsapp", twice, WHATSAPP_SECRET, TENANT) for bridge in bridges)
        )
        assert statuses == [200, 200]
    messages = deployment.database["messages"]
    wanted = {"tenant_id": TENANT, "platform_message_id": {"$in": [*sent, twice_id]}}

    async def all_stored() -> bool:
        return await messages.count_documents(wanted) >= len(sent) + 1

    await eventually(all_stored, "the webhooks' messages", within=30)
    await asyncio.sleep(1.0)  # a second copy stored late would show now
    stored = [d async for d in messages.find(wanted).sort("sequence", 1)]
    assert [d["platform_message_id"] for d in stored] == [*sent, twice_id]


async def test_a_tenants_rate_limit_is_one_limit_across_servers(deployment: Deployment) -> None:
    async with clients(deployment, LIMITED) as both:
        codes = []
        for n in range(2 * LIMITED_BURST):  # alternately through each server
            try:
                await both[n % 2].call(
                    "GetConversation", chat.GetConversationRequest(conversation_id="none")
                )
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code())
    refused = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert set(codes) == {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED}
    # Counted apart, each server would have let its own burst through: none refused.
    assert refused == LIMITED_BURST


async def test_the_workers_apply_each_messages_event_once(deployment: Deployment) -> None:
    async with clients(deployment, TENANT) as (one, two):
        for n in range(10):
            await (one, two)[n % 2].send(f"counted {n}")
    inbound = {"tenant_id": TENANT, "direction": c.MESSAGE_DIRECTION_INBOUND}
    messages = deployment.database["messages"]
    minutes = deployment.database["analytics_minutes"]

    async def counted() -> tuple[int, int]:
        documents = minutes.find({"tenant_id": TENANT})
        total = sum([d.get("messages_in", 0) async for d in documents])
        return total, await messages.count_documents(inbound)

    async def caught_up() -> bool:
        total, stored = await counted()
        return total >= stored

    await eventually(caught_up, "the workers to count every message", within=60)
    await asyncio.sleep(1.0)
    total, stored = await counted()
    assert total == stored >= 10
